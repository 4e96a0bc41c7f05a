#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t n = ids.size(0), vocab = table.size(0), hidden = table.size(1);
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    TANDEM_CHECK(id[i] >= 0 && id[i] < vocab, "embedding: token id {} at {} outside [0, {})",
                 id[i], i, vocab);
  }
  parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* row = out.data<float>() + i * out.stride(0);
      load_row_f32(table.raw_data(), table.dtype(), int64_t(id[i]) * table.stride(0), hidden, row);
    }
  });
}

}  // namespace tandem::ops::cpu
