// RequestStream: what the engine thread pushes for one request and a client thread reads.
// Thread-safety: push (engine thread) and next (one reader thread) may run concurrently.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
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
  void push(StreamEvent event);  // engine side

 private:
  RequestId id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  int32_t open_;  // completions not finished yet
};

}  // namespace tandem::runtime
