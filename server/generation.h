// Generation: one admitted request on its way through the engine, driven by the connection
// that received it. It owns the request's admission slot, its client-visible id and its
// engine stream; it folds the stream's events into per-choice state and records the latency
// metrics. Destroying it before the request finished aborts the request, so a handler that
// returns early (or a connection whose client left) frees its pages.
// Not thread-safe: one connection uses it at a time (POST /abort reaches the request through
// the engine, which is); only the on_ready callback runs on the engine thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/request_parser.h"
#include "server/server_state.h"

namespace tandem::server {

struct Choice {
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<runtime::SampleResult> logprobs;
  runtime::FinishReason finish_reason = runtime::FinishReason::kNone;
  std::string error;
  bool finished = false;
};

class Generation {
 public:
  // Admits and submits `request`; an ApiError (and no Generation) when it cannot run.
  static std::optional<ApiError> start(ServerState& state, ParsedRequest request,
                                       std::unique_ptr<Generation>* out);
  ~Generation();

  // Never blocks: takes the next ready event and folds it into choices(); false when none is
  // ready now or every choice finished.
  bool try_next(runtime::StreamEvent& event);
  // `wake` runs on the engine thread after each event it pushes (see RequestStream::set_on_push).
  void on_ready(std::function<void()> wake);
  void abort();

  const std::string& id() const { return id_; }
  const std::string& model_name() const { return state_.parse_context.model_name; }
  int64_t created_unix_s() const { return created_unix_s_; }
  const ParsedRequest& request() const { return request_; }
  int32_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const;
  const std::vector<Choice>& choices() const { return choices_; }
  bool finished() const { return open_ == 0; }
  // The first error a choice ended with, as an ApiError (500; 502/504 for a PD failure), if any.
  std::optional<ApiError> error() const;
  // A stream's error message as the ApiError the client gets.
  ApiError stream_error(const std::string& message) const;

 private:
  using Clock = std::chrono::steady_clock;
  Generation(ServerState& state, ParsedRequest request);
  Status submit();

  ServerState& state_;
  ParsedRequest request_;
  std::string id_;
  int64_t created_unix_s_ = 0;
  int32_t n_ = 1;
  int32_t prompt_tokens_ = 0;
  bool admitted_ = false;
  bool bound_ = false;
  void fold(const runtime::StreamEvent& ev);

  std::shared_ptr<runtime::RequestStream> stream_;
  std::vector<Choice> choices_;
  int32_t open_ = 0;
  Clock::time_point arrival_;
  bool first_token_seen_ = false;
  std::vector<Clock::time_point> last_token_;  // per choice
};

}  // namespace tandem::server
