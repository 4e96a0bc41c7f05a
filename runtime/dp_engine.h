// DpEngine: `--ep N --dp-attention` (docs/parallel.md "The DP engine"). N ranks, each with its
// own model instance holding only its routed experts (parallel/ep_moe.h), its own KV pool and
// its own runtime::Engine (attention, dense layers and the lm_head run data-parallel over each
// rank's own requests), driven by one thread per rank. Requests are spread over the ranks
// (fewest outstanding requests, ties round-robin); ids, streams, abort and stats are the
// engine's, over all ranks.
//
// Lockstep: every MoE layer is a collective, so all ranks run the same sequence of forwards.
// The unit is the slot, one per model forward (an engine step runs 0, 1 or 2 forwards): a rank
// enters a slot either from its first MoE layer of a forward (busy) or, when its engine step had
// nothing to run, from its driver loop (idle), and all ranks all-gather {busy, decode, tokens,
// stopping, epoch}. Then busy ranks go on with their forward and idle ranks join its MoE layers
// with EpMoe::idle_step; the dispatch mode (low_latency when every busy rank decodes a batch
// of at most max_dispatch_tokens_per_rank) is decided from the same gather. When every rank is
// idle, the ranks sleep until a submit, abort or stop (an epoch counter, so a wake-up between a
// rank's look at its inbox and the sleep is never lost). Stopping is agreed the same way: ranks
// abort their requests, and leave once a slot finds every rank idle and stopping.
//
// Thread-safety: create, submit, abort, stats and stop may be called from any thread (stop and
// the destructor from the owner). An error in a rank (a forward that throws, a failed
// collective) fails the whole DpEngine: every rank's requests end with FinishReason::kError,
// later submits are refused with the message.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "model/weights.h"
#include "runtime/engine.h"

namespace tandem {
class InProcessWorld;
class ProcessGroup;
}  // namespace tandem

namespace tandem::runtime {

// What a server drives: one Engine (EngineFront::of) or a DpEngine. Thread-safe.
class EngineFront {
 public:
  virtual ~EngineFront() = default;
  virtual Status submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream) = 0;
  virtual void abort(RequestId id) = 0;
  virtual EngineStats stats() const = 0;
  // Why the engine can serve no more (a failed rank), or empty.
  virtual std::string failure() const { return {}; }
  // A front over `engine` (which must outlive it).
  static std::unique_ptr<EngineFront> of(Engine& engine);
};

enum class DpBackend : uint8_t {
  kInProcess,  // CPU ranks as threads of this process (parallel/in_process_group.h)
  kNccl,       // rank r on local GPU r, NCCL collectives (parallel/nccl_group.h); CUDA builds
};

struct DpEngineConfig {
  int32_t ep = 1;  // --ep: ranks; must divide the model's routed experts
  DpBackend backend = DpBackend::kInProcess;
  EngineConfig engine;  // every rank's engine: its KV pool and batch limits are per rank
  // low_latency buffers: the most tokens a rank sends in a decode step. 0: the scheduler's
  // max_running_requests (the largest decode batch a rank runs).
  int64_t max_dispatch_tokens_per_rank = 0;
  int64_t context_length = 0;  // > 0: the engines' max_position_embeddings (--context-length)
  // InvalidArgument naming the flag (--ep, --max-dispatch-tokens-per-rank) at fault.
  Status validate(const ModelConfig& model) const;
  int64_t dispatch_tokens() const {
    return max_dispatch_tokens_per_rank > 0 ? max_dispatch_tokens_per_rank
                                            : engine.scheduler.max_running_requests;
  }
};

// Loads rank `rank`'s weights on `device` with only the routed experts `keep` selects
// (load_weights / load_dummy_weights with the filter). Runs on the rank's thread (its GPU
// current); throws on failure.
using DpLoadWeightsFn =
    std::function<ModelWeights(int rank, Device device, const ExpertFilter& keep)>;
// Wraps a rank's runner (the server's SleepyRunner); optional.
using DpWrapRunnerFn = std::function<std::unique_ptr<ModelRunner>(std::unique_ptr<ModelRunner>)>;

// Per-rank counters since start (tests, metrics).
struct DpRankCounters {
  int64_t forward_slots = 0;  // slots in which this rank ran a forward
  int64_t idle_slots = 0;     // slots in which it joined the others' forward with idle_step
  int64_t quiet_slots = 0;    // slots that found every rank idle (then the ranks sleep)
  int64_t low_latency_slots = 0;  // forward and idle slots whose MoE layers ran low_latency
  int32_t outstanding = 0;    // requests submitted to it and not finished
};

class DpEngine : public EngineFront {
 public:
  // Builds the ranks (each loads its weights on its own thread) and starts them. An error
  // names the flag or the rank that failed.
  static Status create(const ModelConfig& model_config, const DpEngineConfig& config,
                       DpLoadWeightsFn load_weights, const tokenizer::Tokenizer* tokenizer,
                       std::unique_ptr<DpEngine>* out, DpWrapRunnerFn wrap_runner = {});
  ~DpEngine() override;  // stop()

  // Validates and queues a request on the rank with the fewest outstanding requests. The
  // stream's id is the DpEngine's (unique over the ranks).
  Status submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream) override;
  void abort(RequestId id) override;
  EngineStats stats() const override;  // summed over the ranks
  std::string failure() const override;
  std::vector<EngineStats> rank_stats() const;
  std::vector<DpRankCounters> counters() const;
  int32_t ranks() const { return config_.ep; }
  // Ends every request in flight (FinishReason::kAbort), stops the ranks, joins them.
  void stop();

 private:
  struct Rank;
  struct Forward;
  struct Slot;
  class StepRunner;
  DpEngine(const ModelConfig& model_config, const DpEngineConfig& config,
           const tokenizer::Tokenizer* tokenizer);
  void rank_main(ProcessGroup& group, const DpLoadWeightsFn& load, const DpWrapRunnerFn& wrap);
  void build(Rank& r, ProcessGroup& group, const DpLoadWeightsFn& load, const DpWrapRunnerFn& wrap);
  void drive(Rank& r);
  Slot slot(Rank& r, bool busy, bool decode, int64_t tokens, bool stopping, uint64_t epoch);
  void retire(Rank& r);
  void fail(int rank, const std::string& message);
  void finished(RequestId id);

  const ModelConfig model_config_;
  const DpEngineConfig config_;
  const tokenizer::Tokenizer* tokenizer_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<InProcessWorld> world_;  // kInProcess
  std::thread world_thread_;                // runs the ranks (InProcessWorld::run or NCCL)

  mutable std::mutex mu_;
  std::condition_variable cv_;  // epoch_, stopping_, failed_, ready_
  uint64_t epoch_ = 0;          // bumped by every submit, abort and stop
  bool stopping_ = false;
  bool failed_ = false;
  std::string failure_;
  int32_t ready_ = 0;  // ranks built
  int32_t round_robin_ = 0;
  RequestId next_id_ = 1;
  std::unordered_map<RequestId, std::shared_ptr<Forward>> requests_;  // by DpEngine id
};

}  // namespace tandem::runtime
