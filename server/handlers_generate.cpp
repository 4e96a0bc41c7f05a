// The generation endpoints: parse -> Generation::start (admission, submit) -> a
// GenerationResponse that the connection polls whenever the engine has pushed events, turning
// them into one JSON body or into SSE chunks.
#include <memory>

#include "core/log.h"
#include "server/generation.h"
#include "server/handlers.h"
#include "server/openai_format.h"

namespace tandem::server {

using nlohmann::json;

void send_error(ServerState& state, HttpResponse& res, const ApiError& error) {
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

GenerationResponse::GenerationResponse(ServerState& state, std::unique_ptr<Generation> g)
    : state_(state), g_(std::move(g)), started_(g_->choices().size(), false) {}

// ~Generation aborts a request that has not finished.
GenerationResponse::~GenerationResponse() = default;

bool GenerationResponse::streaming() const { return g_->request().stream; }

void GenerationResponse::on_ready(std::function<void()> wake) { g_->on_ready(std::move(wake)); }

void GenerationResponse::abort() { g_->abort(); }

bool GenerationResponse::poll(std::string* out, HttpResponse* res) {
  if (streaming()) return poll_stream(out);
  runtime::StreamEvent ev;
  while (g_->try_next(ev)) {}
  if (!g_->finished()) return false;
  if (auto e = g_->error()) {
    send_error(state_, *res, *e);
  } else {
    res->status = 200;
    res->set_content(whole_response(state_, *g_).dump(-1, ' ', false, json::error_handler_t::replace),
                     "application/json");
  }
  return true;
}

// Each event becomes what it produced in SSE chunks; the end adds the usage chunk (when asked
// for) and [DONE].
bool GenerationResponse::poll_stream(std::string* out) {
  runtime::StreamEvent ev;
  while (g_->try_next(ev)) {
    if (ev.finished && ev.finish_reason == runtime::FinishReason::kError) {
      // Headers are gone already: the error travels as an event, as OpenAI's API does.
      failed_ = true;
      *out += sse(g_->stream_error(ev.error).to_json());
      continue;
    }
    const tokenizer::Tokenizer* tok = state_.tokenizer;
    switch (g_->request().endpoint) {
      case Endpoint::kCompletions:
        for (const json& c : completion_chunks(*g_, ev, tok)) *out += sse(c);
        break;
      case Endpoint::kChat: {
        const bool first = !started_[size_t(ev.index)];
        started_[size_t(ev.index)] = true;
        for (const json& c : chat_chunks(*g_, ev, first, tok)) *out += sse(c);
        break;
      }
      case Endpoint::kGenerate:
        // As SGLang: each chunk carries the choice's whole output so far.
        if (!ev.token_ids.empty() || ev.finished) *out += sse(generate_response(*g_, size_t(ev.index)));
        break;
    }
  }
  if (!g_->finished()) return false;
  if (g_->request().include_usage && g_->request().endpoint != Endpoint::kGenerate && !failed_) {
    *out += sse(usage_chunk(*g_));
  }
  *out += kSseDone;
  return true;
}

std::unique_ptr<GenerationResponse> handle_generation(ServerState& state, Endpoint endpoint,
                                                      const HttpRequest& req, HttpResponse& res) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    send_error(state, res, bad_request("the request body is not valid JSON"));
    return nullptr;
  }
  // PD (docs/disagg.md "HTTP"): the router's bootstrap fields; a colocated server ignores them.
  std::optional<PdBootstrap> bootstrap;
  if (auto e = take_pd_bootstrap(body, &bootstrap)) {
    send_error(state, res, *e);
    return nullptr;
  }
  if (state.disaggregated() && !bootstrap) {
    send_error(state, res, bad_request(fmt::format("this server runs --role {}: send requests "
                                                   "through tandem router", state.config.role),
                                       "bootstrap_room"));
    return nullptr;
  }
  ParsedRequest parsed;
  if (auto e = parse(state, endpoint, body, &parsed)) {
    send_error(state, res, *e);
    return nullptr;
  }
  if (state.disaggregated()) {
    if (parsed.gen.params.n != 1) {
      send_error(state, res, bad_request(fmt::format("n: --role {} serves n = 1 only, got {}",
                                                     state.config.role, parsed.gen.params.n),
                                         "n"));
      return nullptr;
    }
    parsed.bootstrap = bootstrap;
    if (state.prefill_worker) {
      // The prefill's answer is one non-streaming completion of the first token, whatever
      // the client asked for: the router discards it.
      parsed.stream = false;
      parsed.include_usage = false;
    }
  }
  std::unique_ptr<Generation> g;
  if (auto e = Generation::start(state, std::move(parsed), &g)) {
    send_error(state, res, *e);
    return nullptr;
  }
  res.status = 200;
  if (g->request().stream) {
    res.content_type = "text/event-stream";
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
  }
  return std::make_unique<GenerationResponse>(state, std::move(g));
}

}  // namespace tandem::server
