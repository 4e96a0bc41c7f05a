// Router: `tandem router`, the PD load balancer (docs/router.md). It serves the OpenAI API in
// front of prefill and decode servers, sends each generation request to one of each (the PD
// contract in docs/disagg.md) and returns the decode server's answer, streaming passed through
// as it comes.
// Thread-safety: bind/run belong to one thread; stop() may be called from any other thread.
#pragma once

#include <memory>

#include "core/error.h"
#include "router/router_config.h"

namespace tandem::router {

class Router {
 public:
  // `config` must have passed validate().
  explicit Router(const RouterConfig& config);
  ~Router();

  // Binds config.host:config.port (0: a free port). Unavailable names the address.
  Status bind();
  int port() const;
  // Polls the upstreams once, starts the health thread and serves until stop().
  void run();
  void stop();
  // One health poll of every upstream now (tests; the health thread does this each interval).
  void poll_health_now();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The command: validates, binds, serves until SIGINT/SIGTERM; returns the exit code.
int run_router(const RouterConfig& config);

}  // namespace tandem::router
