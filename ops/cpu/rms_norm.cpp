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

void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1);
  std::vector<float> w(n);
  load_row_f32(weight.raw_data(), weight.dtype(), 0, n, w.data());
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      norm_row(x.data<float>() + r * x.stride(0), w.data(), n, eps,
               out.data<float>() + r * out.stride(0));
    }
  });
}

void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1);
  std::vector<float> w(n);
  load_row_f32(weight.raw_data(), weight.dtype(), 0, n, w.data());
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* res = residual.data<float>() + r * residual.stride(0);
      const float* xr = x.data<float>() + r * x.stride(0);
      for (int64_t i = 0; i < n; ++i) res[i] += xr[i];
      norm_row(res, w.data(), n, eps, out.data<float>() + r * out.stride(0));
    }
  });
}

}  // namespace tandem::ops::cpu
