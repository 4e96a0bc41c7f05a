// Per-GPU memory plan of a model under expert parallelism with DP attention: what each rank
// holds (attention, dense layers, embeddings, lm_head and shared experts replicated; routed
// experts split by the placement) and how many KV-cache tokens fit in what is left. Used to
// size a deployment before loading (e.g. full DeepSeek-V3 on 8 H200s) and by the loader later.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "parallel/expert_placement.h"

namespace tandem {

struct RankMemoryPlan {
  int rank = 0;
  uint64_t replicated_bytes = 0;  // every tensor but the routed experts
  uint64_t expert_bytes = 0;      // this rank's routed experts (weights + fp8 scales)
  int64_t local_experts_per_layer = 0;
  uint64_t weight_bytes() const { return replicated_bytes + expert_bytes; }
  uint64_t kv_bytes = 0;          // left for the KV cache under the memory fraction
  int64_t kv_tokens = 0;          // kv_bytes / bytes per token (all layers)
};

struct MemoryPlanOptions {
  uint64_t gpu_bytes = 0;         // per GPU
  double mem_fraction = 0.88;     // of gpu_bytes for weights + KV (the rest: activations, graphs)
  int kv_bytes_per_value = 2;     // bf16 latent cache
};

struct MemoryPlan {
  std::vector<RankMemoryPlan> ranks;
  uint64_t kv_bytes_per_token = 0;  // layers * (kv_lora + rope) * bytes
  uint64_t total_weight_bytes = 0;  // of the whole checkpoint
  bool fits() const;                // every rank's weights fit under the fraction
  std::string table() const;        // human-readable, one line per rank
};

// Throws tandem::Error when the placement's expert count differs from the config's.
MemoryPlan plan_memory(const ModelConfig& config, const ExpertPlacement& placement,
                       const MemoryPlanOptions& options);

}  // namespace tandem
