#include <cmath>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

void silu_and_mul(const Tensor& gate_up, Tensor& out) {
  const int64_t rows = gate_up.size(0), n = out.size(1);
  parallel_for(rows, 4, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = gate_up.data<float>() + r * gate_up.stride(0);
      const float* u = g + n;
      float* o = out.data<float>() + r * out.stride(0);
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

}  // namespace tandem::ops::cpu
