// The router's request path (internal to router/): RouterContext, the state every handler
// shares, and forward_generation, which carries one generation request through a prefill and a
// decode server as the PD contract says (docs/disagg.md "PD HTTP contract", docs/router.md).
// Thread-safety: RouterContext's members are thread-safe; forward_generation runs on the
// connection's thread and may run on many at once.
#pragma once

#include <httplib.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "router/router_config.h"
#include "router/router_metrics.h"
#include "router/upstream_pool.h"

namespace tandem::router {

struct RouterContext {
  explicit RouterContext(const RouterConfig& c) : config(c), pool(c), rng(std::random_device{}()) {}
  RouterConfig config;
  UpstreamPool pool;
  RouterMetrics metrics;
  int bound_port = 0;  // the front server's port, to find a client's socket

  uint64_t new_room() {
    std::lock_guard lock(rng_mu);
    return rng();
  }
  std::mutex rng_mu;
  std::mt19937_64 rng;
};

// {"error": {"message", "type", "param": null, "code": null}}, as the OpenAI API shapes errors.
void set_api_error(httplib::Response& res, int status, const std::string& message,
                   const std::string& type = "invalid_request_error");

// POST /v1/completions, /v1/chat/completions, /generate.
void forward_generation(RouterContext& ctx, const httplib::Request& req, httplib::Response& res);

}  // namespace tandem::router
