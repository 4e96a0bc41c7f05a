// The generation endpoints: parse -> Generation::start (admission, submit) -> read the stream,
// as one JSON body or as SSE chunks written from the response's content provider.
#include <memory>

#include "core/log.h"
#include "server/generation.h"
#include "server/handlers.h"
#include "server/openai_format.h"

namespace tandem::server {

using nlohmann::json;

void send_error(ServerState& state, httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  if (error.http_status == 503) res.set_header("Retry-After", "1");
  if (error.http_status >= 500) {
    state.metrics.http_errors_5xx.fetch_add(1);
  } else {
    state.metrics.http_errors_4xx.fetch_add(1);
  }
  res.set_content(error.to_json().dump(-1, ' ', false, json::error_handler_t::replace),
                  "application/json");
}

namespace {

// The SSE body of one streaming request. Each call writes what one stream event produced;
// the last writes the usage chunk (when asked for) and [DONE]. Returning false (a failed
// write: the client is gone) makes httplib drop the connection; the Generation's destructor
// then aborts the request.
class SseWriter {
 public:
  SseWriter(ServerState& state, std::shared_ptr<Generation> g)
      : state_(state), g_(std::move(g)), started_(g_->choices().size(), false) {}

  bool operator()(httplib::DataSink& sink) {
    try {
      return write_next(sink);
    } catch (const std::exception& e) {
      TANDEM_LOG_ERROR("streaming response failed: {}", e.what());
      return false;  // drops the connection; ~Generation aborts the request
    }
  }

 private:
  bool write_next(httplib::DataSink& sink) {
    runtime::StreamEvent ev;
    if (!g_->next(ev)) {
      if (g_->request().include_usage && g_->request().endpoint != Endpoint::kGenerate &&
          !failed_) {
        if (!write(sink, sse(usage_chunk(*g_)))) return false;
      }
      if (!write(sink, kSseDone)) return false;
      sink.done();
      return true;
    }
    if (ev.finished && ev.finish_reason == runtime::FinishReason::kError) {
      // Headers are gone already: the error travels as an event, as OpenAI's API does.
      failed_ = true;
      ApiError e;
      e.http_status = 500;
      e.type = "server_error";
      e.message = "the engine failed: " + ev.error;
      return write(sink, sse(e.to_json()));
    }
    const tokenizer::Tokenizer* tok = state_.tokenizer;
    std::string out;
    switch (g_->request().endpoint) {
      case Endpoint::kCompletions:
        for (const json& c : completion_chunks(*g_, ev, tok)) out += sse(c);
        break;
      case Endpoint::kChat: {
        const bool first = !started_[size_t(ev.index)];
        started_[size_t(ev.index)] = true;
        for (const json& c : chat_chunks(*g_, ev, first, tok)) out += sse(c);
        break;
      }
      case Endpoint::kGenerate:
        // As SGLang: each chunk carries the choice's whole output so far.
        if (!ev.token_ids.empty() || ev.finished) out = sse(generate_response(*g_, size_t(ev.index)));
        break;
    }
    return out.empty() || write(sink, out);
  }

  static bool write(httplib::DataSink& sink, const std::string& s) {
    return sink.is_writable() && sink.write(s.data(), s.size());
  }

  ServerState& state_;
  std::shared_ptr<Generation> g_;
  std::vector<bool> started_;
  bool failed_ = false;
};

std::optional<ApiError> parse(ServerState& state, Endpoint endpoint, const json& body,
                              ParsedRequest* out) {
  switch (endpoint) {
    case Endpoint::kCompletions: return parse_completion_request(body, state.parse_context, out);
    case Endpoint::kChat: return parse_chat_request(body, state.parse_context, out);
    case Endpoint::kGenerate: return parse_generate_request(body, state.parse_context, out);
  }
  return bad_request("unknown endpoint");
}

json whole_response(ServerState& state, const Generation& g) {
  switch (g.request().endpoint) {
    case Endpoint::kCompletions: return completion_response(g, state.tokenizer);
    case Endpoint::kChat: return chat_response(g, state.tokenizer);
    case Endpoint::kGenerate: break;
  }
  if (g.choices().size() == 1) return generate_response(g, 0);
  json list = json::array();
  for (size_t i = 0; i < g.choices().size(); ++i) list.push_back(generate_response(g, i));
  return list;
}

}  // namespace

void handle_generation(ServerState& state, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res) {
  const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return send_error(state, res, bad_request("the request body is not valid JSON"));
  }
  ParsedRequest parsed;
  if (auto e = parse(state, endpoint, body, &parsed)) return send_error(state, res, *e);

  std::unique_ptr<Generation> g;
  if (auto e = Generation::start(state, std::move(parsed), req.remote_addr, req.remote_port,
                                 req.local_port, &g)) {
    return send_error(state, res, *e);
  }
  if (!g->request().stream) {
    g->run_to_end();
    if (auto e = g->error()) return send_error(state, res, *e);
    res.set_content(whole_response(state, *g).dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto writer = std::make_shared<SseWriter>(state, std::shared_ptr<Generation>(std::move(g)));
  res.set_chunked_content_provider(
      "text/event-stream",
      [writer](size_t, httplib::DataSink& sink) { return (*writer)(sink); });
}

}  // namespace tandem::server
