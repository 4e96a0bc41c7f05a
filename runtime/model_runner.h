// ModelRunner: executes a scheduler Decision. It is the only part of the runtime that touches
// a device: it owns the paged KV pool, turns the decision into a ForwardBatch and runs the
// model. The engine talks to the interface so its tests can use a fake.
// Not thread-safe: the engine thread calls it.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "model/deepseek_v3.h"
#include "ops/cpu/sampling.h"
#include "runtime/sampler.h"
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

// How one scheduled sequence's next token may be chosen on the device (ops::apply_penalties,
// then ops::sample_tokens): the engine sets `device` for requests whose Sampler allows it
// (Sampler::device_ok), with the request's parameters, seed, draw counter and penalties.
struct RowSampling {
  bool device = false;
  ops::cpu::RowSampling params;
  uint64_t seed = 0;
  uint64_t draw = 0;
  bool penalized = false;  // then the penalty entries and factors below
  float repetition = 1.0f, frequency = 0.0f, presence = 0.0f;
  // Views of the request's Sampler::penalty_tokens/counts, valid for the step.
  std::span<const int32_t> penalty_tokens, penalty_counts;
  int32_t top_logprobs = 0;  // that many most likely tokens with their logprobs (0..20)
};

// A step's results. For each decision.seqs[i] that samples, either the runner sampled it on
// the device (token[i] >= 0, with logprob[i], the log-softmax of the raw logits) or it returns
// that sequence's logits row for the host Sampler (host_row[i] >= 0, a row of `logits`).
struct StepOutput {
  Tensor logits;                  // f32 [rows, vocab] on the CPU
  std::vector<int32_t> host_row;  // per seq: its row of logits, or -1
  std::vector<int32_t> token;     // per seq: the device-sampled token, or -1
  std::vector<float> logprob;     // per seq, where token[i] >= 0
  std::vector<std::vector<TokenLogprob>> top;  // per seq, where token[i] >= 0: its top_logprobs
  // Every seq's row on the host: row i of `logits` for seq i (runners without device sampling).
  static StepOutput host_rows(Tensor logits);
  // n seqs, nothing sampled and no rows yet (a runner fills them in).
  static StepOutput unfilled(size_t n);
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // f32 logits on the CPU, [decision.seqs.size(), vocab]: row i belongs to the last token
  // decision.seqs[i] computes (only rows with sample set are used).
  virtual Tensor run(const Decision& decision, const Scheduler& scheduler) = 0;
  // The engine's call. `sampling` has one entry per decision.seqs (or is empty: all on the
  // host). The default samples nothing on the device: run(), every row to the host.
  virtual StepOutput step(const Decision& decision, const Scheduler& scheduler,
                          std::span<const RowSampling> sampling) {
    (void)sampling;
    return StepOutput::host_rows(run(decision, scheduler));
  }
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

// On CUDA, step() samples the rows whose RowSampling allows it with ops::sample_tokens right
// after the forward (after the graph replay, outside the graph) and copies only the other
// sampled rows' logits to the host; prefill chunks that do not sample copy nothing. The CPU
// backend returns every row to the host Sampler, as run() does.
class DeepseekRunner : public ModelRunner {
 public:
  DeepseekRunner(DeepseekV3Model& model, int32_t num_pages, int32_t page_size, DType kv_dtype,
                 Device device, int32_t cuda_graph_max_bs = 0);
  ~DeepseekRunner() override;
  Tensor run(const Decision& decision, const Scheduler& scheduler) override;
  StepOutput step(const Decision& decision, const Scheduler& scheduler,
                  std::span<const RowSampling> sampling) override;
  KvMemory kv_memory() override;
  const KvCache& kv_cache() const { return cache_; }
  const DecodeGraphs* graphs() const { return graphs_.get(); }  // null without CUDA graphs
  int64_t device_sampled_rows() const { return device_sampled_; }  // since construction
  int64_t device_penalized_rows() const { return penalized_rows_; }  // of those, with penalties

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
  int64_t device_sampled_ = 0;
  int64_t penalized_rows_ = 0;
  Tensor sample_buffer_;                   // device: sample_on_device's parameters and outputs
  std::vector<uint8_t> sample_staging_;   // its host side
  struct StepStats {
    int64_t steps = 0;
    double wall_s = 0, gpu_ms = 0, gap_s = 0;  // gap: engine host work before the step
  };
  // One forward over `idx` (positions in the decision) and its results into `out`: sampled
  // on the device where `sampling` allows, other rows' logits to the host (all of them with
  // all_rows, as run() needs; `parts` collects the host tensors, cloned when `keep`).
  void forward_part(const std::vector<size_t>& idx, ForwardMode mode, double gap_s,
                    const Decision& decision, std::span<const RowSampling> sampling,
                    bool all_rows, bool keep, StepOutput& out, std::vector<Tensor>& parts);
  void top_logprobs_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                              const std::vector<int32_t>& dev_rows, std::span<const RowSampling> sampling,
                              StepOutput& out);
  void apply_penalties_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                                 const std::vector<int32_t>& dev_rows, std::span<const RowSampling> sampling);
  void sample_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                        const std::vector<int32_t>& dev_rows,
                        std::span<const RowSampling> sampling, StepOutput& out);
  StepOutput execute(const Decision& decision, const Scheduler& scheduler,
                     std::span<const RowSampling> sampling, bool all_rows);
  std::optional<std::chrono::steady_clock::time_point> last_end_;
  // (0 eager decode | 1 graph decode | 2 prefill/mixed, batch size) -> totals, logged at exit.
  std::map<std::pair<int, int64_t>, StepStats> stats_;
  std::shared_ptr<ops::cuda::StreamTimer> timer_;  // CUDA: GPU time of each forward
};

}  // namespace tandem::runtime
