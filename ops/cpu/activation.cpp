#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

void silu_and_mul(const Tensor& gate_up, Tensor& out) {
  const int64_t rows = gate_up.size(0), n = out.size(1);
  parallel_for(rows, 4, [&](int64_t b, int64_t e) {
    std::vector<float> in(gate_up.dtype() == DType::kF32 ? 0 : 2 * n);
    std::vector<float> res(out.dtype() == DType::kF32 ? 0 : n);
    for (int64_t r = b; r < e; ++r) {
      const float* g = nullptr;
      if (gate_up.dtype() == DType::kF32) {
        g = gate_up.data<float>() + r * gate_up.stride(0);
      } else {
        load_row_f32(gate_up.raw_data(), gate_up.dtype(), r * gate_up.stride(0), 2 * n, in.data());
        g = in.data();
      }
      const float* u = g + n;
      float* o = out.dtype() == DType::kF32 ? out.data<float>() + r * out.stride(0) : res.data();
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      if (out.dtype() != DType::kF32)
        store_row_f32(res.data(), n, out.raw_data(), out.dtype(), r * out.stride(0));
    }
  });
}

}  // namespace tandem::ops::cpu
