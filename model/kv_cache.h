// The MLA latent KV cache: per layer one [num_pages * page_size, kv_lora + rope] buffer
// (576 values per token per layer for V3). Pages are handed out by the runtime's allocator;
// the model only reads and writes the slots a ForwardBatch names.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace tandem {

struct KvCache {
  std::vector<Tensor> layers;  // [num_pages * page_size, kv_cache_dim]
  int64_t page_size = 0;
  int64_t num_pages = 0;

  static KvCache create(const ModelConfig& config, int64_t num_pages, int64_t page_size,
                        DType dtype, Device device = Device::cpu());
  size_t nbytes() const;
};

}  // namespace tandem
