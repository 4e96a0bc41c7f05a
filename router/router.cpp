#include "router/router.h"

#include <httplib.h>
#include <signal.h>

#include <nlohmann/json.hpp>
#include <cstdio>
#include <thread>

#include "core/log.h"
#include "router/pd_exchange.h"

namespace tandem::router {

struct Router::Impl {
  explicit Impl(const RouterConfig& config) : ctx(config) {}
  RouterContext ctx;
  httplib::Server server;

  bool authorized(const httplib::Request& req, httplib::Response& res) {
    if (ctx.config.api_key.empty()) return true;
    if (req.get_header_value("Authorization") == "Bearer " + ctx.config.api_key) return true;
    set_api_error(res, 401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error");
    return false;
  }

  void models(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    Upstream* d = ctx.pool.acquire(Role::kDecode);
    if (d == nullptr) return set_api_error(res, 503, "no healthy decode server", "service_unavailable");
    httplib::Client client(d->url.host, d->url.port);
    client.set_connection_timeout(0, static_cast<int64_t>(ctx.config.connect_timeout_s * 1e6));
    client.set_read_timeout(10, 0);
    httplib::Headers headers;
    if (req.has_header("Authorization")) headers.emplace("Authorization", req.get_header_value("Authorization"));
    auto r = client.Get("/v1/models", headers);
    ctx.pool.release(d);
    if (!r) {
      ctx.pool.mark_down(d, "/v1/models: " + httplib::to_string(r.error()));
      return set_api_error(res, 502, "decode server " + d->url.url + " failed: " + httplib::to_string(r.error()),
                           "upstream_error");
    }
    res.status = r->status;
    res.set_content(r->body, r->get_header_value("Content-Type"));
  }

  void health(httplib::Response& res) {
    const bool ok = ctx.pool.any_healthy(Role::kPrefill) && ctx.pool.any_healthy(Role::kDecode);
    nlohmann::json j{{"status", ok ? "ok" : "unavailable"}};
    for (const auto& u : ctx.pool.all()) {
      j[std::string(role_name(u->role)) + "_servers"].push_back({{"url", u->url.url}, {"healthy", u->healthy.load()}});
    }
    res.status = ok ? 200 : 503;
    res.set_content(j.dump(), "application/json");
  }
};

Router::Router(const RouterConfig& config) : impl_(std::make_unique<Impl>(config)) {
  Impl& m = *impl_;
  const int threads = config.http_threads;
  m.server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  m.server.set_read_timeout(60, 0);
  m.server.set_write_timeout(60, 0);
  auto generate = [&m](const httplib::Request& req, httplib::Response& res) {
    if (!m.authorized(req, res)) return m.ctx.metrics.request_rejected("unauthorized");
    forward_generation(m.ctx, req, res);
  };
  m.server.Post("/v1/completions", generate);
  m.server.Post("/v1/chat/completions", generate);
  m.server.Post("/generate", generate);
  m.server.Get("/v1/models", [&m](const httplib::Request& req, httplib::Response& res) { m.models(req, res); });
  m.server.Get("/health", [&m](const httplib::Request&, httplib::Response& res) { m.health(res); });
  m.server.Get("/metrics", [&m](const httplib::Request&, httplib::Response& res) {
    res.set_content(m.ctx.metrics.render(m.ctx.pool), "text/plain; version=0.0.4");
  });
  m.server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && res.body.empty()) set_api_error(res, 404, "no route " + req.method + " " + req.path, "not_found");
  });
}

Router::~Router() {
  stop();
  impl_->ctx.pool.stop();
}

Status Router::bind() {
  Impl& m = *impl_;
  if (m.ctx.config.port == 0) {
    m.ctx.bound_port = m.server.bind_to_any_port(m.ctx.config.host);
    if (m.ctx.bound_port <= 0) m.ctx.bound_port = 0;
  } else if (m.server.bind_to_port(m.ctx.config.host, m.ctx.config.port)) {
    m.ctx.bound_port = m.ctx.config.port;
  }
  if (m.ctx.bound_port == 0) {
    return {StatusCode::kUnavailable,
            "--host/--port: cannot listen on " + m.ctx.config.host + ":" + std::to_string(m.ctx.config.port)};
  }
  return {};
}

int Router::port() const { return impl_->ctx.bound_port; }

void Router::run() {
  impl_->ctx.pool.start();
  TANDEM_LOG_INFO("router: listening on http://{}:{} ({} policy)", impl_->ctx.config.host, port(),
                  impl_->ctx.config.policy);
  impl_->server.listen_after_bind();
}

void Router::stop() { impl_->server.stop(); }

void Router::poll_health_now() { impl_->ctx.pool.poll_now(); }

int run_router(const RouterConfig& config) {
  if (Status s = config.validate(); !s.ok()) {
    TANDEM_LOG_ERROR("{}", s.message());
    return 2;
  }
  Router router(config);
  if (Status s = router.bind(); !s.ok()) {
    TANDEM_LOG_ERROR("{}", s.message());
    return 1;
  }
  // SIGINT/SIGTERM are taken by one thread (sigwait) that stops the server.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread signals([&] {
    int signo = 0;
    sigwait(&set, &signo);
    if (signo != SIGUSR1) TANDEM_LOG_INFO("router: signal {}, stopping", signo);
    router.stop();
  });
  std::printf("tandem router listening on http://%s:%d\n", config.host.c_str(), router.port());
  std::fflush(stdout);
  router.run();
  // run() may return without a signal (listen failed): wake the signal thread.
  pthread_kill(signals.native_handle(), SIGUSR1);
  signals.join();
  return 0;
}

}  // namespace tandem::router
