#include "ops/cpu/fp8_quant.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

namespace {
constexpr float kE4m3Max = 448.0f;
constexpr int64_t kBlock = 128;
}  // namespace

void quantize_fp8_rows(const Tensor& x, Tensor& q, Tensor& scale) {
  const int64_t m = x.size(0), k = x.size(1);
  TANDEM_CHECK(k % kBlock == 0, "quantize_fp8_rows: K {} is not a multiple of 128", k);
  TANDEM_CHECK(x.stride(1) == 1, "quantize_fp8_rows: x rows must be contiguous");
  TANDEM_CHECK(q.dtype() == DType::kF8E4M3 && q.size(0) == m && q.size(1) == k && q.is_contiguous(),
               "quantize_fp8_rows: q must be contiguous f8_e4m3 [{}, {}]", m, k);
  TANDEM_CHECK(scale.dtype() == DType::kF32 && scale.numel() == m * (k / kBlock) && scale.is_contiguous(),
               "quantize_fp8_rows: scale must be contiguous f32 [{}, {}]", k / kBlock, m);
  std::vector<float> row(k);
  for (int64_t r = 0; r < m; ++r) {
    load_row_f32(x.raw_data(), x.dtype(), r * x.stride(0), k, row.data());
    for (int64_t kb = 0; kb < k / kBlock; ++kb) {
      const float* v = row.data() + kb * kBlock;
      float amax = 0.0f;
      for (int64_t i = 0; i < kBlock; ++i) amax = std::fmax(amax, std::fabs(v[i]));
      const float s = amax > 0.0f ? amax / kE4m3Max : 1.0f;
      for (int64_t i = 0; i < kBlock; ++i) {
        q.data<fp8_e4m3>()[r * k + kb * kBlock + i] = f32_to_fp8_e4m3(v[i] / s);
      }
      scale.data<float>()[kb * m + r] = s;
    }
  }
}

Tensor fp8_quantized_activations(const Tensor& x) {
  const int64_t m = x.size(0), k = x.size(1);
  Tensor q = Tensor::empty({m, k}, DType::kF8E4M3);
  Tensor s = Tensor::empty({k / kBlock, m}, DType::kF32);
  quantize_fp8_rows(x, q, s);
  Tensor out = Tensor::empty({m, k}, DType::kF32);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j)
      out.data<float>()[r * k + j] =
          fp8_e4m3_to_f32(q.data<fp8_e4m3>()[r * k + j]) * s.data<float>()[(j / kBlock) * m + r];
  return out;
}

}  // namespace tandem::ops::cpu
