// ModelRunner: executes a scheduler Decision. It is the only part of the runtime that touches
// a device: it owns the paged KV pool, turns the decision into a ForwardBatch and runs the
// model. The engine talks to the interface so its tests can use a fake.
// Not thread-safe: the engine thread calls it.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <memory>
#include <utility>
#include <vector>

#include "model/deepseek_v3.h"
#include "runtime/scheduler.h"

namespace tandem::runtime {

// One layer's KV memory as the PD transfer engine registers it: token slot t (page p, offset o:
// t = p * page_size + o) occupies bytes [t * bytes_per_token, +bytes_per_token).
struct KvRegion {
  void* ptr = nullptr;
  size_t length_bytes = 0;
  Device device = Device::cpu();
};

// The whole KV pool's memory: one region per layer, all with the same token layout.
struct KvMemory {
  std::vector<KvRegion> layers;
  int32_t page_size = 0;
  int32_t num_pages = 0;
  size_t bytes_per_token = 0;  // per layer
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // f32 logits on the CPU, [decision.seqs.size(), vocab]: row i belongs to the last token
  // decision.seqs[i] computes (only rows with sample set are used).
  virtual Tensor run(const Decision& decision, const Scheduler& scheduler) = 0;
  // The KV pool's memory, for the PD layer to register with a transfer engine; empty layers
  // for a runner without one (fakes). The memory lives as long as the runner.
  virtual KvMemory kv_memory() { return {}; }
};

// The KV pool: one MLA latent cache page set shared by all requests (576 values per token per
// layer for V3). bf16 by default; f32 for bit-exact comparisons; fp8 once the model has it.
//
// On CUDA, decode steps of up to `cuda_graph_max_bs` sequences replay CUDA graphs
// (runtime/cuda_graph_runner.h; 0 turns them off); the pool then holds one more page than
// asked for, the graphs' scratch page for padding rows, which no request is given.
class DecodeGraphs;
}  // namespace tandem::runtime
namespace tandem::ops::cuda {
class StreamTimer;
}  // namespace tandem::ops::cuda
namespace tandem::runtime {

class DeepseekRunner : public ModelRunner {
 public:
  DeepseekRunner(DeepseekV3Model& model, int32_t num_pages, int32_t page_size, DType kv_dtype,
                 Device device, int32_t cuda_graph_max_bs = 0);
  ~DeepseekRunner() override;
  Tensor run(const Decision& decision, const Scheduler& scheduler) override;
  KvMemory kv_memory() override;
  const KvCache& kv_cache() const { return cache_; }
  const DecodeGraphs* graphs() const { return graphs_.get(); }  // null without CUDA graphs

 private:
  DeepseekV3Model& model_;
  KvCache cache_;
  Device device_;
  int32_t num_pages_;                 // pages requests may use (the pool may hold a scratch one)
  std::vector<SequenceStep> steps_;  // reused across steps
  std::unique_ptr<DecodeGraphs> graphs_;
  Tensor to_host(const Tensor& logits);  // into pinned_ (CUDA), valid until the next step
  std::shared_ptr<void> pinned_;          // page-locked logits buffer on CUDA
  size_t pinned_bytes_ = 0;
  struct StepStats {
    int64_t steps = 0;
    double wall_s = 0, gpu_ms = 0, gap_s = 0;  // gap: engine host work before the step
  };
  Tensor forward_steps(const std::vector<SequenceStep>& steps, ForwardMode mode, double gap_s);
  std::optional<std::chrono::steady_clock::time_point> last_end_;
  // (0 eager decode | 1 graph decode | 2 prefill/mixed, batch size) -> totals, logged at exit.
  std::map<std::pair<int, int64_t>, StepStats> stats_;
  std::shared_ptr<ops::cuda::StreamTimer> timer_;  // CUDA: GPU time of each forward
};

}  // namespace tandem::runtime
