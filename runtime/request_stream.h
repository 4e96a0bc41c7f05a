// RequestStream: what the engine thread pushes for one request and a client reads, either
// blocking (next: `tandem generate`, tests) or event-driven (try_next plus an on_push wake-up:
// the HTTP server's I/O threads, which must never block on a stream).
// Thread-safety: push (engine thread), next/try_next (one reader at a time) and set_on_push
// may run concurrently.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/request.h"
#include "runtime/sampler.h"

namespace tandem::runtime {

// What a request's stream yields: new tokens of one of its n completions, or its end.
struct StreamEvent {
  int32_t index = 0;                   // which completion, 0..n-1
  std::vector<int32_t> token_ids;      // new tokens
  std::string text;                    // new text (empty without a tokenizer)
  std::vector<SampleResult> logprobs;  // one per new token when logprobs were asked for
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;  // kError only
};

class RequestStream {
 public:
  RequestStream(RequestId id, int32_t n) : id_(id), open_(n) {}
  RequestId id() const { return id_; }
  // Blocks for the next event; false once every completion has finished and all was read.
  bool next(StreamEvent& event);
  // Never blocks: moves the next event into `event` and returns true, or returns false when
  // none is ready now (or the stream ended: every completion finished and all was read).
  bool try_next(StreamEvent& event);
  // `on_push` runs after every later push, on the pushing (engine) thread and outside the
  // stream's lock, so it may call try_next; it must be quick and must not block (post a
  // wake-up to the reader and return). It replaces the previous one; nullptr removes it. A
  // call already under way when it is replaced or removed still finishes, so it must only
  // touch state it co-owns (a shared_ptr), never the reader's stack.
  void set_on_push(std::function<void()> on_push);
  void push(StreamEvent event);  // engine side

 private:
  RequestId id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  int32_t open_;  // completions not finished yet
  std::function<void()> on_push_;
};

}  // namespace tandem::runtime
