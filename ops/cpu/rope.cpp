#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave) {
  const int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  const int32_t* pos = positions.data<int32_t>();
  const float* freq = inv_freq.data<float>();
  parallel_for(tokens, 4, [&](int64_t b, int64_t e) {
    std::vector<float> cos_t(half), sin_t(half), tmp(dim);
    for (int64_t t = b; t < e; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        // The angle is formed in fp32 as the reference does (position * inv_freq).
        const float angle = float(pos[t]) * freq[i];
        cos_t[i] = float(std::cos(double(angle))) * attention_factor;
        sin_t[i] = float(std::sin(double(angle))) * attention_factor;
      }
      std::vector<float> row(x.dtype() == DType::kF32 ? 0 : dim);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t offset = t * x.stride(0) + h * x.stride(1);
        float* v = nullptr;
        if (x.dtype() == DType::kF32) {
          v = x.data<float>() + offset;
        } else {
          load_row_f32(x.raw_data(), x.dtype(), offset, dim, row.data());
          v = row.data();
        }
        for (int64_t i = 0; i < half; ++i) {
          // Pair i: (v[2i], v[2i+1]) interleaved, or (v[i], v[i+half]) in halves. The result
          // keeps the input layout; attention only sees dot products, which are unchanged.
          const int64_t a = interleave ? 2 * i : i, c = interleave ? 2 * i + 1 : i + half;
          const float x0 = v[a], x1 = v[c];
          tmp[a] = x0 * cos_t[i] - x1 * sin_t[i];
          tmp[c] = x1 * cos_t[i] + x0 * sin_t[i];
        }
        if (x.dtype() == DType::kF32) {
          std::copy(tmp.begin(), tmp.end(), v);
        } else {
          store_row_f32(tmp.data(), dim, x.raw_data(), x.dtype(), offset);
        }
      }
    }
  });
}

}  // namespace tandem::ops::cpu
