// ModelRunner: executes a scheduler Decision. It is the only part of the runtime that touches
// a device: it owns the paged KV pool, turns the decision into a ForwardBatch and runs the
// model. The engine talks to the interface so its tests can use a fake.
// Not thread-safe: the engine thread calls it.
#pragma once

#include <memory>
#include <vector>

#include "model/deepseek_v3.h"
#include "runtime/scheduler.h"

namespace tandem::runtime {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // f32 logits on the CPU, [decision.seqs.size(), vocab]: row i belongs to the last token
  // decision.seqs[i] computes (only rows with sample set are used).
  virtual Tensor run(const Decision& decision, const Scheduler& scheduler) = 0;
};

// The KV pool: one MLA latent cache page set shared by all requests (576 values per token per
// layer for V3). bf16 by default; f32 for bit-exact comparisons; fp8 once the model has it.
class DeepseekRunner : public ModelRunner {
 public:
  DeepseekRunner(DeepseekV3Model& model, int32_t num_pages, int32_t page_size, DType kv_dtype,
                 Device device);
  Tensor run(const Decision& decision, const Scheduler& scheduler) override;
  const KvCache& kv_cache() const { return cache_; }

 private:
  DeepseekV3Model& model_;
  KvCache cache_;
  Device device_;
  std::vector<SequenceStep> steps_;  // reused across steps
};

}  // namespace tandem::runtime
