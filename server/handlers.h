// The HTTP handlers (docs/server.md lists the endpoints). Each parses and checks its request,
// posts the work to the engine (through Generation) and reads the result back; none touches
// the model or blocks. Errors leave as OpenAI-style JSON bodies through send_error.
// Thread-safe: handlers run on the I/O threads, many requests at once; they share only
// ServerState. A GenerationResponse belongs to the one connection that drives it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/http_types.h"
#include "server/request_parser.h"
#include "server/server_state.h"

namespace tandem::server {

class Generation;

void send_error(ServerState& state, HttpResponse& res, const ApiError& error);

// An admitted generation request whose answer the engine produces over time. The connection
// waits for on_ready's wake-up (never blocking a thread) and then polls. Destroying it before
// poll returned true aborts the request (its client left), which frees its KV pages.
class GenerationResponse {
 public:
  GenerationResponse(ServerState& state, std::unique_ptr<Generation> g);
  ~GenerationResponse();

  // True for SSE: the headers (already in the handler's HttpResponse) go out first, then
  // each poll's bytes as they come.
  bool streaming() const;
  // `wake` runs on the engine thread whenever the stream has new events; it must not block.
  void on_ready(std::function<void()> wake);
  // Consumes the events that are ready, never blocking. Streaming: appends SSE text to *out.
  // Returns true once the response is complete: streaming, the usage chunk and [DONE] are in
  // *out; otherwise *res holds the whole answer (200 JSON or the engine's error).
  bool poll(std::string* out, HttpResponse* res);
  // The client left: the engine aborts the request; later polls see it end.
  void abort();

 private:
  bool poll_stream(std::string* out);

  ServerState& state_;
  std::unique_ptr<Generation> g_;
  std::vector<bool> started_;  // chat: the role went out for this choice
  bool failed_ = false;
};

// POST /v1/completions, /v1/chat/completions, /generate: parses, tokenizes (CPU work on the
// calling I/O thread) and submits. nullptr with `res` holding the answer (an error), or the
// admitted request with `res` holding the headers of its eventual answer.
std::unique_ptr<GenerationResponse> handle_generation(ServerState& state, Endpoint endpoint,
                                                      const HttpRequest& req, HttpResponse& res);

void handle_abort(ServerState& state, const HttpRequest& req, HttpResponse& res);
void handle_slow_down(ServerState& state, const HttpRequest& req, HttpResponse& res);
void handle_models(ServerState& state, const HttpRequest& req, HttpResponse& res);
void handle_health(ServerState& state, const HttpRequest& req, HttpResponse& res);
void handle_metrics(ServerState& state, const HttpRequest& req, HttpResponse& res);
// GET /pd_info: {"role", "bootstrap_port"} (the prefill's bootstrap port; 0 on other roles).
void handle_pd_info(ServerState& state, const HttpRequest& req, HttpResponse& res);

// Answers 401 (and returns false) unless the request carries `Authorization: Bearer <key>`.
// The key is compared in constant time.
bool check_api_key(ServerState& state, const HttpRequest& req, HttpResponse& res);
bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace tandem::server
