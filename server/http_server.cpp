#include "server/http_server.h"

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <sys/socket.h>

#include <thread>

#include "core/log.h"
#include "server/handlers.h"

namespace tandem::server {

namespace {

// Connection threads, started on demand up to `max_threads` and kept afterwards. httplib's
// own pool has a fixed size chosen at its compile time; generation handlers block for the
// whole request, so the pool must cover every admitted request plus room for the rest
// (503 answers, /health, /metrics).
class GrowingPool : public httplib::TaskQueue {
 public:
  explicit GrowingPool(size_t max_threads) : max_threads_(max_threads) {}
  ~GrowingPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lk(mu_);
      jobs_.push_back(std::move(fn));
      if (idle_ < jobs_.size() && threads_.size() < max_threads_) {
        threads_.emplace_back([this] { work(); });
      }
    }
    cv_.notify_one();
  }

  void shutdown() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard lk(mu_);
      stop_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (std::thread& t : threads) t.join();
  }

 private:
  void work() {
    std::unique_lock lk(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping and nothing left
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lk.unlock();
      job();
      lk.lock();
    }
  }

  const size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

ApiError status_error(int status) {
  ApiError e;
  e.http_status = status;
  switch (status) {
    case 400: e.message = "Malformed HTTP request"; break;
    case 404: e.message = "Not found"; e.code = "not_found"; break;
    case 405: e.message = "Method not allowed"; break;
    case 413: e.message = "The request body is larger than the server's limit (--max-body-bytes)";
              e.code = "request_too_large"; break;
    case 414: e.message = "The request URI is too long"; break;
    default: e.message = fmt::format("HTTP error {}", status); break;
  }
  if (status >= 500) e.type = "server_error";
  return e;
}

}  // namespace

struct HttpServer::Impl {
  explicit Impl(ServerState& s) : state(s) {}
  ServerState& state;
  httplib::Server svr;
  int port = -1;
  int listen_fd = -1;  // captured from the socket-options hook, to raise the backlog
};

HttpServer::HttpServer(ServerState& state) : impl_(std::make_unique<Impl>(state)) {
  ServerState& st = state;
  httplib::Server& svr = impl_->svr;
  const size_t max_threads = size_t(st.config.max_in_flight()) + 64;
  svr.new_task_queue = [max_threads] { return new GrowingPool(max_threads); };
  svr.set_payload_max_length(size_t(st.config.max_body_bytes));
  svr.set_read_timeout(30, 0);
  svr.set_write_timeout(30, 0);
  svr.set_keep_alive_timeout(5);
  svr.set_tcp_nodelay(true);
  // Debian's cpp-httplib 0.11 is compiled with a listen backlog of 5: a burst of connections
  // (64 clients at once) overflows it and clients see resets. Keep httplib's socket options
  // and remember the listening socket so bind() can listen() again with the system maximum.
  svr.set_socket_options([impl = impl_.get()](int fd) {
    httplib::default_socket_options(fd);
    impl->listen_fd = fd;
  });

  // Every route but /health and /metrics (scraped by orchestrators) needs the API key.
  svr.set_pre_routing_handler([&st](const httplib::Request& req,
                                    httplib::Response& res) -> httplib::Server::HandlerResponse {
    if (req.path == "/health" || req.path == "/metrics") return httplib::Server::HandlerResponse::Unhandled;
    return check_api_key(st, req, res) ? httplib::Server::HandlerResponse::Unhandled
                                        : httplib::Server::HandlerResponse::Handled;
  });
  // httplib's own errors (unknown route, body too large, bad request line) get a JSON body;
  // the handlers' errors already have one.
  svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [&st](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        send_error(st, res, status_error(res.status));
        return httplib::Server::HandlerResponse::Handled;
      }));
  svr.set_exception_handler([&st](const httplib::Request& req, httplib::Response& res,
                                  std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    TANDEM_LOG_ERROR("{} {}: {}", req.method, req.path, what);
    ApiError e;
    e.http_status = 500;
    e.type = "server_error";
    e.message = "internal error: " + what;
    send_error(st, res, e);
  });

  svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    TANDEM_LOG_DEBUG("{} {} {} from {}:{}", req.method, req.path, res.status, req.remote_addr,
                     req.remote_port);
  });

  using R = const httplib::Request&;
  using W = httplib::Response&;
  svr.Post("/v1/completions", [&st](R q, W r) { handle_generation(st, Endpoint::kCompletions, q, r); });
  svr.Post("/v1/chat/completions", [&st](R q, W r) { handle_generation(st, Endpoint::kChat, q, r); });
  svr.Post("/generate", [&st](R q, W r) { handle_generation(st, Endpoint::kGenerate, q, r); });
  svr.Post("/abort", [&st](R q, W r) { handle_abort(st, q, r); });
  svr.Post("/slow_down", [&st](R q, W r) { handle_slow_down(st, q, r); });
  svr.Get("/v1/models", [&st](R q, W r) { handle_models(st, q, r); });
  svr.Get("/health", [&st](R q, W r) { handle_health(st, q, r); });
  svr.Get("/metrics", [&st](R q, W r) { handle_metrics(st, q, r); });
}

HttpServer::~HttpServer() = default;

Status HttpServer::bind() {
  const ServerConfig& c = impl_->state.config;
  if (c.port == 0) {
    impl_->port = impl_->svr.bind_to_any_port(c.host);
  } else if (impl_->svr.bind_to_port(c.host, c.port)) {
    impl_->port = c.port;
  }
  if (impl_->port > 0 && impl_->listen_fd >= 0) {
    // Linux applies a new backlog to a socket that is already listening.
    ::listen(impl_->listen_fd, SOMAXCONN);
  }
  if (impl_->port <= 0) {
    return {StatusCode::kUnavailable,
            fmt::format("cannot listen on {}:{} (--host, --port): in use or not an address of "
                        "this machine", c.host, c.port)};
  }
  return {};
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::hurry_shutdown() { impl_->state.tracker.interrupt_wait(); }

void HttpServer::run() { impl_->svr.listen_after_bind(); }

void HttpServer::shutdown(double timeout_s) {
  ServerState& st = impl_->state;
  st.tracker.start_draining();
  const int64_t in_flight = st.tracker.in_flight();
  if (in_flight > 0) {
    TANDEM_LOG_INFO("shutting down: waiting up to {} s for {} sequences in flight", timeout_s,
                    in_flight);
  }
  if (!st.tracker.wait_idle(timeout_s)) {
    const std::vector<runtime::RequestId> ids = st.tracker.all();
    TANDEM_LOG_WARN("shutdown: aborting {} requests still in flight", ids.size());
    st.runner.set_sleep(0.0);  // a slowed-down step would hold the aborts back
    for (const runtime::RequestId id : ids) st.engine.abort(id);
    // Aborted streams end at the engine's next step; their handlers then finish writing.
    for (int i = 0; i < 3000 && st.tracker.in_flight() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  // A signal may arrive between bind() and run(): stop() only acts on a running server.
  for (int i = 0; i < 200 && !impl_->svr.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl_->svr.stop();
}

}  // namespace tandem::server
