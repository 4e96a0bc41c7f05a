#include "server/generation.h"

#include <atomic>
#include <random>

#include "core/log.h"

namespace tandem::server {

namespace {

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string s(n, '0');
  for (char& c : s) c = kHex[rng() & 15];
  return s;
}

std::string id_prefix(Endpoint e) {
  switch (e) {
    case Endpoint::kCompletions: return "cmpl-";
    case Endpoint::kChat: return "chatcmpl-";
    case Endpoint::kGenerate: return "";
  }
  return "";
}

}  // namespace

Generation::Generation(ServerState& state, ParsedRequest request)
    : state_(state), request_(std::move(request)), arrival_(Clock::now()) {
  created_unix_s_ = int64_t(std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count());
}

std::optional<ApiError> Generation::start(ServerState& state, ParsedRequest request,
                                          std::unique_ptr<Generation>* out) {
  std::unique_ptr<Generation> g(new Generation(state, std::move(request)));
  g->n_ = g->request_.gen.params.n;
  g->prompt_tokens_ = int32_t(g->request_.gen.prompt_ids.size());
  g->id_ = g->request_.rid.empty() ? id_prefix(g->request_.endpoint) + random_hex(32)
                                   : g->request_.rid;

  switch (state.tracker.admit(g->n_)) {
    case RequestTracker::Admit::kOk:
      break;
    case RequestTracker::Admit::kOverloaded: {
      state.metrics.rejected_overload.fetch_add(1);
      ApiError e;
      e.http_status = 503;
      e.type = "server_error";
      e.code = "server_overloaded";
      e.message = fmt::format("The server is at its limit of {} sequences in flight "
                              "(--max-running-requests + --max-queued-requests); retry later",
                              state.config.max_in_flight());
      return e;
    }
    case RequestTracker::Admit::kDraining: {
      state.metrics.rejected_overload.fetch_add(1);
      ApiError e;
      e.http_status = 503;
      e.type = "server_error";
      e.code = "server_shutting_down";
      e.message = "The server is shutting down";
      return e;
    }
  }
  g->admitted_ = true;  // from here the destructor gives the slot back

  const Status s = g->submit();
  if (!s.ok()) return from_status(s);
  if (!state.tracker.bind(g->id_, g->stream_->id())) {
    state.abort(g->stream_->id());
    g->stream_.reset();
    return bad_request(fmt::format("rid '{}' is already in use", g->id_), "rid");
  }
  g->bound_ = true;
  g->choices_.resize(size_t(g->n_));
  g->last_token_.resize(size_t(g->n_));
  g->open_ = g->n_;
  *out = std::move(g);
  return std::nullopt;
}

// A PD request goes to its role's worker (which hands it to the engine); any other straight to
// the engine.
Status Generation::submit() {
  const std::optional<PdBootstrap>& b = request_.bootstrap;
  if (b && state_.prefill_worker) {
    return state_.prefill_worker->submit(b->room, request_.gen, &stream_);
  }
  if (b && state_.decode_worker) {
    const bool v6 = b->host.find(':') != std::string::npos;
    const std::string endpoint = v6 ? fmt::format("[{}]:{}", b->host, b->port)
                                    : fmt::format("{}:{}", b->host, b->port);
    return state_.decode_worker->submit(b->room, endpoint, request_.gen, &stream_);
  }
  return state_.engine.submit(request_.gen, &stream_);
}

Generation::~Generation() {
  if (stream_) stream_->set_on_push(nullptr);  // the engine may keep the stream a while
  if (stream_ && open_ > 0) {
    // The handler is gone before the request ended (client left, write failed): abort it and
    // let the engine free its pages. The stream is not read any further.
    state_.abort(stream_->id());
    state_.metrics.count_finished(runtime::FinishReason::kAbort);
  }
  if (bound_) state_.tracker.unbind(id_);
  if (admitted_) state_.tracker.release(n_);
}

bool Generation::try_next(runtime::StreamEvent& ev) {
  if (open_ == 0 || !stream_->try_next(ev)) return false;
  fold(ev);
  return true;
}

void Generation::on_ready(std::function<void()> wake) { stream_->set_on_push(std::move(wake)); }

void Generation::fold(const runtime::StreamEvent& ev) {
  const Clock::time_point now = Clock::now();
  TANDEM_CHECK(ev.index >= 0 && ev.index < n_, "stream event for choice {} of {}", ev.index, n_);
  Choice& c = choices_[size_t(ev.index)];
  if (!ev.token_ids.empty()) {
    if (!first_token_seen_) {
      state_.metrics.time_to_first_token.observe(std::chrono::duration<double>(now - arrival_).count());
      first_token_seen_ = true;
    } else if (!c.token_ids.empty()) {
      const double gap = std::chrono::duration<double>(now - last_token_[size_t(ev.index)]).count();
      for (size_t i = 0; i < ev.token_ids.size(); ++i) {
        state_.metrics.inter_token_latency.observe(gap / double(ev.token_ids.size()));
      }
    }
    last_token_[size_t(ev.index)] = now;
    c.token_ids.insert(c.token_ids.end(), ev.token_ids.begin(), ev.token_ids.end());
  }
  c.text += ev.text;
  c.logprobs.insert(c.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
  if (ev.finished && !c.finished) {
    c.finished = true;
    c.finish_reason = ev.finish_reason;
    c.error = ev.error;
    if (--open_ == 0) {
      state_.metrics.e2e_request_latency.observe(std::chrono::duration<double>(now - arrival_).count());
      runtime::FinishReason overall = runtime::FinishReason::kStop;
      for (const Choice& x : choices_) {
        if (x.finish_reason == runtime::FinishReason::kError) overall = x.finish_reason;
        else if (x.finish_reason == runtime::FinishReason::kAbort &&
                 overall != runtime::FinishReason::kError) overall = x.finish_reason;
        else if (x.finish_reason == runtime::FinishReason::kLength &&
                 overall == runtime::FinishReason::kStop) overall = x.finish_reason;
      }
      state_.metrics.count_finished(overall);
    }
  }
}

void Generation::abort() {
  if (stream_ && open_ > 0) state_.abort(stream_->id());
}

int64_t Generation::completion_tokens() const {
  int64_t n = 0;
  for (const Choice& c : choices_) n += int64_t(c.token_ids.size());
  return n;
}

std::optional<ApiError> Generation::error() const {
  for (const Choice& c : choices_) {
    if (c.finish_reason == runtime::FinishReason::kError) return stream_error(c.error);
  }
  return std::nullopt;
}

ApiError Generation::stream_error(const std::string& message) const {
  ApiError e;
  e.http_status = 500;
  e.type = "server_error";
  e.message = message.empty() ? "the engine failed" : "the engine failed: " + message;
  if (request_.bootstrap && state_.disaggregated()) {
    // The PD layer's failures are the peer's or the network's (docs/server.md): a timeout is
    // 504, anything else (peer gone, refused, mismatched, transfer error) 502.
    const bool timeout = message.find("timed out") != std::string::npos ||
                         message.find("timeout") != std::string::npos ||
                         message.find(" within ") != std::string::npos ||
                         message.find(" in time") != std::string::npos;
    e.http_status = timeout ? 504 : 502;
    e.code = timeout ? "pd_timeout" : "pd_peer_failed";
    e.message = fmt::format("PD {} failed: {}", state_.config.role,
                            message.empty() ? "unknown error" : message);
  }
  return e;
}

}  // namespace tandem::server
