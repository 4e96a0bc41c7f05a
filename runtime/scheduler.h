// Scheduler: continuous batching over request ids, token counts and page ids. It decides what
// each step computes and returns that as a plain Decision; it never touches a device, so it
// is tested with a fake runner (DESIGN.md, STYLE.md 11). Policy (docs/runtime.md):
//
//  1. Running requests first, oldest first: a decoding request computes its one pending token
//     (and gets a page when it crosses a page boundary); a prefilling one its next chunk.
//  2. Then waiting requests in arrival order, while the step's token budget, the running-
//     request limit and the free pages allow. A prompt longer than the rest of the budget is
//     cut into chunks (chunked prefill), so prefill and decode share a step (mixed step).
//  3. A request is admitted with pages for all its tokens (its prefix-cache hit reused), and
//     only while one page stays free per running request, so prefills never stall half-way.
//  4. When a decoding request needs a page and none is free even after evicting the prefix
//     cache, the newest decoding request is retracted: its computed pages go to the prefix
//     cache, it keeps its output and returns to the front of the waiting queue.
//
//  5. PD decode role: add_remote queues a request whose prompt KV a prefill server writes into
//     its pages. Its reservation (pages for prompt + decode reserve) is granted in arrival
//     order after local admissions, under the same free-page rule, and counts as a running
//     request for max_running_requests; until kv_arrived it is never scheduled.
//  6. PD prefill role: hold() takes a request that sampled its first token out of the batch
//     but keeps its pages (being sent) until finish() or abort().
//
// Page accounting: every page is free (allocator), used (held privately by one request) or
// cached (owned by the radix tree, shared by the requests that lock it); they sum to the pool.
// Not thread-safe: the engine thread owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "runtime/page_allocator.h"
#include "runtime/radix_cache.h"
#include "runtime/request.h"

namespace tandem::runtime {

struct SchedulerConfig {
  int32_t page_size = 16;            // tokens per KV page, 1..64
  int64_t max_total_tokens = 65536;  // KV pool size in tokens (rounded down to whole pages)
  int32_t max_running_requests = 256;
  int32_t max_batch_tokens = 4096;  // tokens computed per step; longer prompts are chunked
  bool enable_prefix_cache = true;

  int32_t num_pages() const { return int32_t(max_total_tokens / page_size); }
  // InvalidArgument naming the setting at fault.
  Status validate() const;
};

// One request's part of a step: compute tokens[cached_len, cached_len + num_tokens).
struct ScheduledSeq {
  RequestId id = 0;
  int32_t cached_len = 0;  // tokens whose KV is already in the request's pages
  int32_t num_tokens = 0;
  bool sample = false;  // the step reaches the request's last token: sample the next one
  bool operator==(const ScheduledSeq&) const = default;
};

struct Decision {
  std::vector<ScheduledSeq> seqs;     // running requests oldest first, then new admissions
  std::vector<RequestId> preempted;   // retracted this step, newest first
  int32_t num_tokens = 0;             // sum of seqs[i].num_tokens
  int32_t prefix_hit_tokens = 0;      // tokens new admissions took from the prefix cache
  bool decode_only = false;           // every seq is a decoding request computing one token
  std::vector<RequestId> reserved;    // remote requests whose pages were reserved this step
  bool empty() const { return seqs.empty(); }
};

struct SchedulerStats {
  int32_t waiting = 0;
  int32_t running = 0;
  int32_t free_pages = 0;
  int32_t used_pages = 0;       // held privately by running requests
  int32_t cached_pages = 0;     // owned by the prefix cache (locked or not)
  int32_t evictable_pages = 0;  // cached and locked by no request
  int32_t awaiting_kv = 0;      // remote requests, reserved or still waiting for pages
  int32_t transferring = 0;     // held after prefill
  int64_t preemptions = 0;      // since start
  int64_t prefix_hit_tokens = 0;
  int64_t prefix_query_tokens = 0;  // prompt tokens looked up in the prefix cache
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);
  ~Scheduler();

  // Queues a request. ResourceExhausted when prompt + max_new_tokens could never fit the KV
  // pool; InvalidArgument for an empty prompt or a duplicate id.
  Status add(RequestId id, std::vector<int32_t> prompt, int32_t max_new_tokens);
  // Removes a request in any state and frees its pages; false when it is unknown.
  bool abort(RequestId id);

  // PD decode role. Queues a request whose prompt KV arrives from elsewhere; pages for the
  // prompt + min(reserve_tokens, max_new_tokens) are reserved by a later schedule() (listed
  // in Decision::reserved; pages(id) then names them). Errors as add().
  Status add_remote(RequestId id, std::vector<int32_t> prompt, int32_t max_new_tokens,
                    int32_t reserve_tokens);
  // The prompt KV of a reserved remote request is in its pages and `first_token` was sampled
  // from it: the request joins the running batch as decoding. The KV must not be written
  // after this. Checked: the request is reserved.
  void kv_arrived(RequestId id, int32_t first_token);
  bool is_reserved(RequestId id) const;  // awaiting KV with pages

  // PD prefill role. A running request that has just sampled its first token leaves the
  // batch; its pages (the prompt's KV) stay held until finish() or abort().
  void hold(RequestId id);

  Decision schedule();
  // Records a step's results: `next_tokens[i]` is the token sampled for decision.seqs[i]
  // (ignored where seqs[i].sample is false). Newly filled pages go into the prefix cache.
  void complete(const Decision& decision, std::span<const int32_t> next_tokens);
  // Ends a running or held request (its stop condition was met, or its KV was sent): caches
  // its pages, frees the rest.
  void finish(RequestId id);

  // Queries for the runner and for tests. tokens: prompt + output; pages: cover cached_len +
  // the scheduled tokens while the request is running.
  bool contains(RequestId id) const { return seqs_.count(id) != 0; }
  RequestState state(RequestId id) const;
  std::span<const int32_t> tokens(RequestId id) const;
  std::span<const int32_t> pages(RequestId id) const;
  int32_t num_output_tokens(RequestId id) const;
  std::vector<RequestId> waiting_ids() const;
  std::vector<RequestId> running_ids() const;  // oldest first
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return config_; }
  // Checks free + used + cached == total, lock counts and every request's pages (tests).
  void check_invariants() const;

 private:
  struct Seq;
  Seq& get(RequestId id) const;
  bool ensure_free_pages(int32_t n);
  bool try_admit(Seq& seq, int32_t budget, Decision& d);
  bool try_reserve(Seq& seq);
  void retract(Seq& seq);
  void cache_computed_pages(Seq& seq);
  void release(Seq& seq);
  void remove_running(Seq& seq);

  SchedulerConfig config_;
  PageAllocator allocator_;
  RadixCache cache_;
  std::unordered_map<RequestId, std::unique_ptr<Seq>> seqs_;
  std::vector<Seq*> running_;  // admission order
  std::deque<Seq*> waiting_;
  std::deque<Seq*> remote_waiting_;  // remote requests waiting for their reservation
  std::vector<Seq*> reserved_;       // remote requests holding pages, awaiting KV
  std::vector<Seq*> held_;           // prefill role: pages held while being sent
  // The requests of the last decision, in its order, so complete() needs no id lookups;
  // cleared when a request leaves between schedule() and complete().
  std::vector<Seq*> planned_;
  int32_t used_pages_ = 0;
  int64_t preemptions_ = 0;
  int64_t prefix_hit_tokens_ = 0;
  int64_t prefix_query_tokens_ = 0;
};

}  // namespace tandem::runtime
