#include "model/kv_cache.h"

namespace tandem {

KvCache KvCache::create(const ModelConfig& config, int64_t num_pages, int64_t page_size,
                        DType dtype, Device device) {
  TANDEM_CHECK(page_size >= 1 && page_size <= 64, "page size must be in [1, 64], got {}",
               page_size);
  TANDEM_CHECK(num_pages >= 1, "the KV cache needs at least one page, got {}", num_pages);
  TANDEM_CHECK(dtype == DType::kF32 || dtype == DType::kBF16,
               "KV cache dtype must be f32 or bf16, got {}", dtype_name(dtype));
  KvCache cache;
  cache.page_size = page_size;
  cache.num_pages = num_pages;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    cache.layers.push_back(
        Tensor::zeros({num_pages * page_size, config.kv_cache_dim()}, dtype, device));
  }
  return cache;
}

size_t KvCache::nbytes() const {
  size_t n = 0;
  for (const Tensor& t : layers) n += t.nbytes();
  return n;
}

}  // namespace tandem
