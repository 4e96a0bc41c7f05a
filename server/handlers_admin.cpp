// The endpoints around generation: models, health, metrics, abort, slow_down, and the API key
// check.
#include <cmath>

#include "core/log.h"
#include "server/handlers.h"

namespace tandem::server {

using nlohmann::json;

namespace {

void send_json(HttpResponse& res, const json& j) {
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

std::optional<json> parse_object(ServerState& state, const HttpRequest& req,
                                 HttpResponse& res) {
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    send_error(state, res, bad_request("the request body must be a JSON object"));
    return std::nullopt;
  }
  return body;
}

}  // namespace

bool constant_time_equal(const std::string& a, const std::string& b) {
  // Every byte of the longer string is looked at whatever the contents, so the time taken says
  // nothing about how much of a guess was right.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

bool check_api_key(ServerState& state, const HttpRequest& req, HttpResponse& res) {
  const std::string& key = state.config.api_key;
  if (key.empty()) return true;
  const std::string header = req.header("Authorization");
  const std::string prefix = "Bearer ";
  const std::string given = header.rfind(prefix, 0) == 0 ? header.substr(prefix.size()) : "";
  if (constant_time_equal(given, key)) return true;
  ApiError e;
  e.http_status = 401;
  e.message = header.empty() ? "Missing API key: send Authorization: Bearer <key>"
                             : "Incorrect API key provided";
  e.code = "invalid_api_key";
  send_error(state, res, e);
  res.set_header("WWW-Authenticate", "Bearer");
  return false;
}

void handle_abort(ServerState& state, const HttpRequest& req, HttpResponse& res) {
  auto body = parse_object(state, req, res);
  if (!body) return;
  if (!body->contains("rid") || !(*body)["rid"].is_string()) {
    return send_error(state, res, bad_request("rid: expected a string", "rid"));
  }
  const std::string rid = (*body)["rid"].get<std::string>();
  const std::optional<runtime::RequestId> id = state.tracker.find(rid);
  if (!id) {
    ApiError e;
    e.http_status = 404;
    e.message = fmt::format("no request '{}' is in flight", rid);
    e.param = "rid";
    e.code = "not_found";
    return send_error(state, res, e);
  }
  state.abort(*id);
  TANDEM_LOG_INFO("aborted request {} on request", rid);
  send_json(res, json{{"rid", rid}, {"aborted", true}});
}

void handle_slow_down(ServerState& state, const HttpRequest& req, HttpResponse& res) {
  auto body = parse_object(state, req, res);
  if (!body) return;
  const json v = body->value("forward_sleep_time", json(nullptr));
  double seconds = 0.0;
  if (!v.is_null()) {
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0.0 ||
        v.get<double>() > 3600.0) {
      return send_error(state, res, bad_request("forward_sleep_time must be null or a number of "
                                                "seconds in [0, 3600]", "forward_sleep_time"));
    }
    seconds = v.get<double>();
  }
  state.runner.set_sleep(seconds);
  TANDEM_LOG_INFO("forward steps now sleep {} s", seconds);
  send_json(res, json{{"forward_sleep_time", seconds > 0.0 ? json(seconds) : json(nullptr)}});
}

void handle_models(ServerState& state, const HttpRequest&, HttpResponse& res) {
  send_json(res, json{{"object", "list"},
                      {"data", json::array({json{{"id", state.parse_context.model_name},
                                                 {"object", "model"},
                                                 {"created", state.created_unix_s},
                                                 {"owned_by", "tandem"},
                                                 {"root", state.config.model_path},
                                                 {"max_model_len", state.parse_context.context_length}}})}});
}

void handle_health(ServerState& state, const HttpRequest&, HttpResponse& res) {
  if (state.tracker.draining()) {
    ApiError e;
    e.http_status = 503;
    e.type = "server_error";
    e.message = "The server is shutting down";
    return send_error(state, res, e);
  }
  if (const std::string why = state.engine.failure(); !why.empty()) {  // --ep: a rank failed
    ApiError e;
    e.http_status = 503;
    e.type = "server_error";
    e.message = "The engine failed: " + why;
    return send_error(state, res, e);
  }
  send_json(res, json{{"status", "ok"}});
}

void handle_metrics(ServerState& state, const HttpRequest&, HttpResponse& res) {
  std::string text = state.metrics.render(state.parse_context.model_name, state.engine.stats());
  if (state.disaggregated()) {
    const int32_t rooms = state.prefill_worker ? state.prefill_worker->rooms_in_flight()
                                               : state.decode_worker->rooms_in_flight();
    text += fmt::format(
        "# HELP tandem:pd_rooms_in_flight PD rooms (requests) this server's worker still "
        "handles.\n# TYPE tandem:pd_rooms_in_flight gauge\n"
        "tandem:pd_rooms_in_flight{{model_name=\"{}\",role=\"{}\"}} {}\n",
        prometheus_escape(state.parse_context.model_name), state.config.role, rooms);
  }
  if (state.dp) {  // --ep: each rank's batch, KV pool and lockstep slots (the sums are above)
    const std::vector<runtime::EngineStats> ranks = state.dp->rank_stats();
    const std::vector<runtime::DpRankCounters> slots = state.dp->counters();
    const std::string model = prometheus_escape(state.parse_context.model_name);
    auto per_rank = [&](const char* type, const char* name, const char* help, auto value) {
      text += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      for (size_t r = 0; r < ranks.size(); ++r) {
        text += fmt::format("{}{{model_name=\"{}\",rank=\"{}\"}} {}\n", name, model, r, value(r));
      }
    };
    per_rank("gauge", "tandem:dp_rank_requests_running", "Sequences in an EP rank's running batch.",
             [&](size_t r) { return ranks[r].running; });
    per_rank("gauge", "tandem:dp_rank_requests_waiting", "Sequences waiting on an EP rank.",
             [&](size_t r) { return ranks[r].waiting; });
    per_rank("gauge", "tandem:dp_rank_kv_pages_used", "KV cache pages held on an EP rank.",
             [&](size_t r) { return ranks[r].kv_pages_used; });
    per_rank("counter", "tandem:dp_rank_forward_slots_total",
             "Model forwards an EP rank ran (each met the other ranks in one slot).",
             [&](size_t r) { return slots[r].forward_slots; });
    per_rank("counter", "tandem:dp_rank_idle_slots_total",
             "Other ranks' forwards an EP rank joined with no tokens of its own.",
             [&](size_t r) { return slots[r].idle_slots; });
  }
  res.set_content(text, "text/plain; version=0.0.4; charset=utf-8");
}

void handle_pd_info(ServerState& state, const HttpRequest&, HttpResponse& res) {
  json info{{"role", state.config.role}, {"bootstrap_port", state.bootstrap_port}};
  // --pd-advertise-host: where decode servers reach this prefill (tandem router uses it).
  if (state.config.is_prefill() && !state.config.pd.transfer.advertise_host.empty())
    info["bootstrap_host"] = state.config.pd.transfer.advertise_host;
  send_json(res, info);
}

}  // namespace tandem::server
