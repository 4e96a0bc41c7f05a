// Engine: the serving loop. Clients submit requests and read their streams from any thread;
// one engine thread repeats schedule -> run -> process results (nano-vllm's step):
//
//   inbox (submits, aborts) ──▶ Scheduler::schedule ──▶ ModelRunner::step ──▶ Sampler
//        ──▶ stop checks, detokenization ──▶ Scheduler::complete / finish ──▶ streams
//
// The runner may sample rows on the device (ops::apply_penalties, ops::sample_tokens,
// ops::top_logprobs) where the request's Sampler allows it (Sampler::device_ok: not logprobs
// together with penalties); those tokens are handed to Sampler::accept, so penalty state and the
// counter-based draws stay the same as host sampling.
//
// PD disaggregation (docs/disagg.md "Roles"): submit_prefill runs a request's prefill only and
// reports each step's KV pages to the PD layer, holding them until pd_done; submit_decode
// reserves pages for a prompt whose KV another server writes, and kv_arrived starts decoding.
//
// Thread-safety: submit*, abort, kv_arrived, pd_done, stats and RequestStream::next may be
// called from any thread; the PD callbacks run on the engine thread and must not block.
// start/stop and step belong to the owner; step() is for driving the loop by hand (tests),
// never while start() has a loop thread running. Errors in the loop end the affected
// requests with FinishReason::kError and a message; no exception leaves the loop thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
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
  // PD decode role (--disaggregation-decode-reserve): KV tokens reserved beyond the prompt,
  // at most the request's max_tokens, so decoding rarely needs a new page at first.
  int32_t pd_decode_reserve_tokens = 128;
  Status validate() const;
};

// PD prefill role: what the engine reports after each prefill step of a submit_prefill
// request. Until the last report, only whole pages are reported (the id of a partly filled
// page may still change when it fills and joins the prefix cache).
struct PrefillChunk {
  RequestId request_id = 0;
  int32_t first_token = 0;     // prompt tokens [first_token, first_token + num_tokens)
  int32_t num_tokens = 0;      // have their KV in `pages` now
  std::vector<int32_t> pages;  // page ids of tokens [0, first_token + num_tokens), in order
  bool last = false;           // the prompt is complete and `first` was sampled
  SampleResult first;          // last only; logprobs as the request's params ask
  bool ended = false;          // instead: the engine ended the request (error, abort)
};
using PrefillChunkFn = std::function<void(const PrefillChunk&)>;
// PD decode role: the pages reserved for a submit_decode request.
struct KvReservation {
  RequestId request_id = 0;
  int32_t num_prompt_tokens = 0;  // the prompt KV to receive: tokens [0, num_prompt_tokens)
  std::vector<int32_t> pages;     // in token order: the prompt's, then the decode reserve
};
using KvReservedFn = std::function<void(const KvReservation&)>;

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
  int32_t awaiting_kv = 0;   // PD decode: waiting for a reservation or for the prompt KV
  int32_t transferring = 0;  // PD prefill: prefill done, pages held while being sent
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

  // PD prefill role: queues a request (n = 1) that runs its prefill only. After each step
  // on_chunk gets the tokens whose KV is new; after the last one the request samples its first
  // token (pushed to the stream) and keeps its pages until pd_done(id, ...) ends it.
  Status submit_prefill(GenerateRequest request, PrefillChunkFn on_chunk,
                        std::shared_ptr<RequestStream>* stream);
  // PD decode role: queues a request (n = 1) whose prompt KV comes from a prefill server. Pages
  // for the prompt + decode reserve are reserved as soon as admission allows (never
  // overcommitted) and handed to on_reserved; the request is not scheduled until kv_arrived.
  Status submit_decode(GenerateRequest request, KvReservedFn on_reserved,
                       std::shared_ptr<RequestStream>* stream);
  // PD decode role: the prompt KV is in the reserved pages and `first` was sampled from it by
  // the prefill server: stream it as the first output token and decode on. The PD layer must
  // not write the pages after this call. Ignored for an ended request.
  void kv_arrived(RequestId id, SampleResult first);
  // Ends a PD request. Prefill side: OK once its KV was sent (the stream ends with "length")
  // and its pages are released. Any error, either side, at any state: the pages are freed
  // and the stream ends with FinishReason::kError and the status message.
  void pd_done(RequestId id, Status status);

  void start();  // runs the loop on a thread of its own
  void stop();   // finishes the step in flight, then stops; queued requests stay queued
  // One iteration on the calling thread; false when there was nothing to do.
  bool step();
  void run_until_idle() { while (step()) {} }

  EngineStats stats() const;
  // The KV pool's memory (for the PD layer's transfer engine); stable for the engine's life.
  KvMemory kv_memory() const { return runner_->kv_memory(); }
  const Scheduler& scheduler() const { return scheduler_; }  // engine thread only

 private:
  struct Sequence;
  struct PdEvent {  // kv_arrived (arrived) or pd_done, posted to the engine thread
    RequestId request_id = 0;
    bool arrived = false;
    SampleResult first;
    Status status;
  };
  enum class PdRole : uint8_t { kNone, kPrefill, kDecode };
  Status prepare(GenerateRequest request, PdRole role, std::vector<std::unique_ptr<Sequence>>* seqs,
                 std::shared_ptr<RequestStream>* stream);
  void enqueue(std::vector<std::unique_ptr<Sequence>> seqs);
  void drain_inbox();
  void handle_pd_event(PdEvent& e);
  void report_prefill(Sequence& seq, const ScheduledSeq& s, const SampleResult& sampled);
  void report_reserved(RequestId seq_id);
  void process(const Decision& d, const StepOutput& out);
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
  std::vector<PdEvent> pd_inbox_;
  bool stopping_ = false;
  EngineStats stats_;  // guarded by inbox_mu_
  int64_t prompt_tokens_ = 0, generated_tokens_ = 0, steps_ = 0;
  std::thread thread_;
};

}  // namespace tandem::runtime
