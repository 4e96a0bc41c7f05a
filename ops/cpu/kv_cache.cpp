#include <cstring>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache) {
  const int64_t tokens = latent.size(0), lora = latent.size(1), rope_dim = k_pe.size(1);
  const int64_t width = cache.size(1), num_slots = cache.size(0);
  const int32_t* slot = slots.data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TANDEM_CHECK(slot[t] >= 0 && slot[t] < num_slots, "kv_store: slot {} outside [0, {})",
                 slot[t], num_slots);
  }
  std::vector<float> l(lora), k(rope_dim);
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t base = int64_t(slot[t]) * width;
    load_row_f32(latent.raw_data(), latent.dtype(), t * latent.stride(0), lora, l.data());
    load_row_f32(k_pe.raw_data(), k_pe.dtype(), t * k_pe.stride(0), rope_dim, k.data());
    for (int64_t i = 0; i < lora; ++i) store_from_f32(cache.raw_data(), cache.dtype(), base + i, l[i]);
    for (int64_t i = 0; i < rope_dim; ++i)
      store_from_f32(cache.raw_data(), cache.dtype(), base + lora + i, k[i]);
  }
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const int64_t n = index.size(0), width = src.size(1), rows = src.size(0);
  const int32_t* idx = index.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    TANDEM_CHECK(idx[i] >= 0 && idx[i] < rows, "gather_rows: index {} outside [0, {})", idx[i],
                 rows);
  }
  if (src.dtype() == out.dtype()) {  // a copy of the bits
    const size_t es = dtype_size_bytes(src.dtype());
    parallel_for(n, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        std::memcpy(static_cast<char*>(out.raw_data()) + i * out.stride(0) * es,
                    static_cast<const char*>(src.raw_data()) + int64_t(idx[i]) * width * es,
                    width * es);
      }
    });
    return;
  }
  parallel_for(n, 64, [&](int64_t b, int64_t e) {
    std::vector<float> row(width);
    for (int64_t i = b; i < e; ++i) {
      load_row_f32(src.raw_data(), src.dtype(), int64_t(idx[i]) * width, width, row.data());
      store_row_f32(row.data(), width, out.raw_data(), out.dtype(), i * out.stride(0));
    }
  });
}

void convert(const Tensor& src, Tensor& out) {
  const int64_t rows = src.size(0), cols = src.size(1);
  parallel_for(rows, 16, [&](int64_t b, int64_t e) {
    std::vector<float> row(cols);
    for (int64_t r = b; r < e; ++r) {
      load_row_f32(src.raw_data(), src.dtype(), r * src.stride(0), cols, row.data());
      store_row_f32(row.data(), cols, out.raw_data(), out.dtype(), r * out.stride(0));
    }
  });
}

}  // namespace tandem::ops::cpu

namespace tandem::ops::cpu {

void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out) {
  const int64_t n = src.size(0), width = src.size(1), rows = out.size(0);
  const int32_t* idx = index.data<int32_t>();
  const float* w = weight.data<float>();
  // Sequential over rows: several source rows may target the same output row.
  std::vector<float> row(src.dtype() == DType::kF32 ? 0 : width);
  for (int64_t i = 0; i < n; ++i) {
    TANDEM_CHECK(idx[i] >= 0 && idx[i] < rows, "scatter_add_rows: index {} outside [0, {})",
                 idx[i], rows);
    const float* s = nullptr;
    if (src.dtype() == DType::kF32) {
      s = src.data<float>() + i * src.stride(0);
    } else {
      load_row_f32(src.raw_data(), src.dtype(), i * src.stride(0), width, row.data());
      s = row.data();
    }
    float* o = out.data<float>() + int64_t(idx[i]) * out.stride(0);
    for (int64_t d = 0; d < width; ++d) o[d] += w[i] * s[d];
  }
}

}  // namespace tandem::ops::cpu
