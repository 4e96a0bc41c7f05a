// Engine: the serving loop. Clients submit requests and read their streams from any thread;
// one engine thread repeats schedule -> run -> process results (nano-vllm's step):
//
//   inbox (submits, aborts) ──▶ Scheduler::schedule ──▶ ModelRunner::run ──▶ Sampler
//        ──▶ stop checks, detokenization ──▶ Scheduler::complete / finish ──▶ streams
//
// Thread-safety: submit, abort, stats and RequestStream::next may be called from any thread.
// start/stop and step belong to the owner; step() is for driving the loop by hand (tests),
// never while start() has a loop thread running. Errors in the loop end the affected
// requests with FinishReason::kError and a message; no exception leaves the loop thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "model/config.h"
#include "runtime/model_runner.h"
#include "runtime/request_stream.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace tandem::runtime {

struct EngineConfig {
  SchedulerConfig scheduler;
  DType kv_dtype = DType::kBF16;
  Status validate() const;
};

struct GenerateRequest {
  std::vector<int32_t> prompt_ids;  // used when not empty
  std::string prompt;               // else this text, encoded by the engine's tokenizer
  SamplingParams params;
};

struct EngineStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t kv_pages_total = 0;
  int32_t kv_pages_used = 0;    // held by requests, privately or through the prefix cache
  int32_t kv_pages_cached = 0;  // in the prefix cache (some of them also counted as used)
  double kv_usage = 0.0;        // kv_pages_used / kv_pages_total
  int64_t prompt_tokens = 0;    // tokens in, of admitted requests
  int64_t generated_tokens = 0; // tokens out
  int64_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t steps = 0;
};

class Engine {
 public:
  // `tokenizer` may be null: then requests need prompt_ids and may not use stop strings.
  Engine(const ModelConfig& model_config, std::unique_ptr<ModelRunner> runner,
         const tokenizer::Tokenizer* tokenizer, const EngineConfig& config);
  ~Engine();  // stops the loop thread

  // Validates and queues a request. InvalidArgument names the parameter at fault.
  Status submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream);
  void abort(RequestId id);

  void start();  // runs the loop on a thread of its own
  void stop();   // finishes the step in flight, then stops; queued requests stay queued
  // One iteration on the calling thread; false when there was nothing to do.
  bool step();
  void run_until_idle() { while (step()) {} }

  EngineStats stats() const;
  const Scheduler& scheduler() const { return scheduler_; }  // engine thread only

 private:
  struct Sequence;
  void drain_inbox();
  void process(const Decision& d, const Tensor& logits);
  bool check_stop(Sequence& seq, int32_t token, StreamEvent& ev);
  void finish(Sequence& seq, FinishReason reason, StreamEvent ev, bool in_scheduler);
  void fail_all(const std::string& message);
  void update_stats();
  void loop();

  const ModelConfig model_config_;
  std::unique_ptr<ModelRunner> runner_;
  const tokenizer::Tokenizer* tokenizer_;
  EngineConfig config_;
  Scheduler scheduler_;
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> seqs_;  // by scheduler id

  std::atomic<RequestId> next_id_{1};
  mutable std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::vector<RequestId> abort_inbox_;
  bool stopping_ = false;
  EngineStats stats_;  // guarded by inbox_mu_
  int64_t prompt_tokens_ = 0, generated_tokens_ = 0, steps_ = 0;
  std::thread thread_;
};

}  // namespace tandem::runtime
