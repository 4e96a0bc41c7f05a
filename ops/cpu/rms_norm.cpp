#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

namespace {

// out = x * rsqrt(mean(x^2) + eps) * w, computed in fp32 (as the reference's RMSNorm does).
void norm_row(const float* x, const float* w, int64_t n, double eps, float* out) {
  const float ms = dot_f32(x, x, n) / float(n);
  const float inv = 1.0f / std::sqrt(ms + float(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

}  // namespace

// f32 rows are read and written in place; bf16 rows go through an f32 row buffer (the input
// is read before the output is written, so out may alias x either way).
void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1);
  std::vector<float> w(n);
  load_row_f32(weight.raw_data(), weight.dtype(), 0, n, w.data());
  const bool all_f32 = x.dtype() == DType::kF32 && out.dtype() == DType::kF32;
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    std::vector<float> xin(all_f32 ? 0 : n), row(all_f32 ? 0 : n);
    for (int64_t r = b; r < e; ++r) {
      if (all_f32) {
        norm_row(x.data<float>() + r * x.stride(0), w.data(), n, eps,
                 out.data<float>() + r * out.stride(0));
        continue;
      }
      load_row_f32(x.raw_data(), x.dtype(), r * x.stride(0), n, xin.data());
      norm_row(xin.data(), w.data(), n, eps, row.data());
      store_row_f32(row.data(), n, out.raw_data(), out.dtype(), r * out.stride(0));
    }
  });
}

void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1);
  std::vector<float> w(n);
  load_row_f32(weight.raw_data(), weight.dtype(), 0, n, w.data());
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    std::vector<float> xin(n), row(n);
    for (int64_t r = b; r < e; ++r) {
      float* res = residual.data<float>() + r * residual.stride(0);
      if (x.dtype() == DType::kF32) {
        const float* xf = x.data<float>() + r * x.stride(0);
        for (int64_t i = 0; i < n; ++i) res[i] += xf[i];
      } else {
        load_row_f32(x.raw_data(), x.dtype(), r * x.stride(0), n, xin.data());
        for (int64_t i = 0; i < n; ++i) res[i] += xin[i];
      }
      if (out.dtype() == DType::kF32) {
        norm_row(res, w.data(), n, eps, out.data<float>() + r * out.stride(0));
      } else {
        norm_row(res, w.data(), n, eps, row.data());
        store_row_f32(row.data(), n, out.raw_data(), out.dtype(), r * out.stride(0));
      }
    }
  });
}

}  // namespace tandem::ops::cpu
