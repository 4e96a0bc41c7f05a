#include "server/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "core/log.h"
#include "server/handlers.h"

namespace tandem::server {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::use_awaitable;
using namespace std::chrono_literals;

constexpr auto kReadTimeout = 30s;   // a request's header and body, and an idle keep-alive
constexpr auto kWriteTimeout = 30s;  // each write: a client that stops reading is dropped
constexpr auto kWakeCheck = 1s;      // a waiting generation looks again at least this often
constexpr auto kLingerTimeout = 2s;  // reading what is left of a refused request (see linger)
constexpr size_t kHeaderLimitBytes = 64 << 10;
constexpr size_t kMaxTargetBytes = 8 << 10;  // longer request targets get 414

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
    case 431: e.message = "The request's header fields are too large"; break;
    default: e.message = fmt::format("HTTP error {}", status); break;
  }
  if (status >= 500) e.type = "server_error";
  return e;
}

// Wakes a connection coroutine waiting for its request's next stream events. notify() may run
// on any thread (the engine's); wait() runs on the connection's strand. A notify that comes
// while the coroutine is not waiting is remembered in `pending`, so none is lost.
class Waker : public std::enable_shared_from_this<Waker> {
 public:
  explicit Waker(const asio::any_io_executor& strand) : timer_(strand) {}

  void notify() {
    if (pending_.exchange(true)) return;  // a wake-up is on its way already
    asio::post(timer_.get_executor(), [self = shared_from_this()] { self->timer_.cancel(); });
  }

  asio::awaitable<void> wait() {
    if (pending_.exchange(false)) co_return;
    timer_.expires_after(kWakeCheck);
    beast::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(use_awaitable, ec));
  }

 private:
  asio::steady_timer timer_;
  std::atomic<bool> pending_{false};
};

// Watches the socket of a connection whose request runs: readable with nothing to read means
// the client closed (or reset) it. Bytes that are there (a pipelined request) are left for
// the next read, and the watch ends.
struct DisconnectWatch {
  bool active = true;  // cleared (on the strand) once the response is complete
  bool gone = false;
};

void watch_disconnect(tcp::socket& socket, std::shared_ptr<DisconnectWatch> watch,
                      std::shared_ptr<Waker> waker) {
  const int fd = socket.native_handle();
  socket.async_wait(tcp::socket::wait_read, [&socket, fd, watch, waker](beast::error_code ec) {
    if (ec || !watch->active) return;
    char byte;
    const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      watch_disconnect(socket, watch, waker);  // woken for nothing: watch on
      return;
    }
    watch->gone = true;
    waker->notify();
  });
}

struct Route {
  const char* path;
  const char* method;
  bool generation;
  Endpoint endpoint;
  void (*handle)(ServerState&, const HttpRequest&, HttpResponse&);
};

constexpr Route kRoutes[] = {
    {"/v1/completions", "POST", true, Endpoint::kCompletions, nullptr},
    {"/v1/chat/completions", "POST", true, Endpoint::kChat, nullptr},
    {"/generate", "POST", true, Endpoint::kGenerate, nullptr},
    {"/abort", "POST", false, Endpoint::kGenerate, handle_abort},
    {"/slow_down", "POST", false, Endpoint::kGenerate, handle_slow_down},
    {"/v1/models", "GET", false, Endpoint::kGenerate, handle_models},
    {"/health", "GET", false, Endpoint::kGenerate, handle_health},
    {"/metrics", "GET", false, Endpoint::kGenerate, handle_metrics},
    {"/pd_info", "GET", false, Endpoint::kGenerate, handle_pd_info},
};

// Runs the route's handler: either `res` is the whole answer, or a GenerationResponse comes
// back to be driven. Every route but /health, /metrics (scraped by orchestrators) and
// /pd_info (read by tandem router, which holds no key) needs the API key.
std::unique_ptr<GenerationResponse> dispatch(ServerState& st, const HttpRequest& req,
                                             HttpResponse& res) {
  if (req.path != "/health" && req.path != "/metrics" && req.path != "/pd_info" &&
      !check_api_key(st, req, res)) {
    return nullptr;
  }
  const Route* route = nullptr;
  for (const Route& r : kRoutes) {
    if (req.path == r.path) route = &r;
  }
  if (route == nullptr) {
    send_error(st, res, status_error(404));
    return nullptr;
  }
  if (req.method != route->method) {
    send_error(st, res, status_error(405));
    res.set_header("Allow", route->method);
    return nullptr;
  }
  if (route->generation) return handle_generation(st, route->endpoint, req, res);
  route->handle(st, req, res);
  return nullptr;
}

}  // namespace

struct HttpServer::Impl {
  explicit Impl(ServerState& s) : state(s), acceptor(asio::make_strand(ioc)) {}

  asio::awaitable<void> accept_loop();
  asio::awaitable<void> session(tcp::socket socket);
  asio::awaitable<bool> write_response(beast::tcp_stream& stream, const HttpResponse& res,
                                       unsigned version, bool keep_alive);
  asio::awaitable<void> refuse(beast::tcp_stream& stream, beast::flat_buffer& buffer, int status,
                               unsigned version);
  asio::awaitable<bool> serve_generation(beast::tcp_stream& stream,
                                         std::unique_ptr<GenerationResponse> gen,
                                         HttpResponse& res, unsigned version, bool keep_alive);

  ServerState& state;
  asio::io_context ioc;
  tcp::acceptor acceptor;  // on its own strand: shutdown closes it from another thread
  int port = -1;
  std::atomic<int> requests_in_progress{0};  // read, not yet fully answered
};

namespace {

// Counts a request from its header's arrival to its answer's last byte.
class InProgress {
 public:
  explicit InProgress(std::atomic<int>& n) : n_(n) { n_.fetch_add(1); }
  ~InProgress() { n_.fetch_sub(1); }
  InProgress(const InProgress&) = delete;
  InProgress& operator=(const InProgress&) = delete;

 private:
  std::atomic<int>& n_;
};

bool is_disconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == http::error::partial_message ||
         ec == beast::error::timeout || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor;
}

}  // namespace

asio::awaitable<void> HttpServer::Impl::accept_loop() {
  for (;;) {
    tcp::socket socket(asio::make_strand(ioc));  // each connection on its own strand
    beast::error_code ec;
    co_await acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
      // Out of file descriptors or similar: say so, wait a little, accept again.
      TANDEM_LOG_WARN("accept failed: {}", ec.message());
      asio::steady_timer pause(acceptor.get_executor(), 50ms);
      co_await pause.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    const asio::any_io_executor ex = socket.get_executor();
    asio::co_spawn(ex, session(std::move(socket)), [](std::exception_ptr ep) {
      if (!ep) return;
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        TANDEM_LOG_ERROR("connection failed: {}", e.what());
      }
    });
  }
}

asio::awaitable<bool> HttpServer::Impl::write_response(beast::tcp_stream& stream,
                                                       const HttpResponse& res, unsigned version,
                                                       bool keep_alive) {
  http::response<http::string_body> r;
  r.version(version);
  r.result(unsigned(res.status));
  if (!res.content_type.empty()) r.set(http::field::content_type, res.content_type);
  for (const auto& [name, value] : res.headers) r.set(name, value);
  r.body() = res.body;
  r.keep_alive(keep_alive);
  r.prepare_payload();
  beast::error_code ec;
  stream.expires_after(kWriteTimeout);
  co_await http::async_write(stream, r, asio::redirect_error(use_awaitable, ec));
  co_return !ec;
}

// Answers an HTTP-level error and closes the connection. The rest of the request (a body
// over the limit) may still be arriving; closing a socket with unread data makes Linux send
// a reset that can destroy the answer before the client reads it, so the write side is shut
// first and what is left is read and dropped for a moment (a "lingering close").
asio::awaitable<void> HttpServer::Impl::refuse(beast::tcp_stream& stream,
                                               beast::flat_buffer& buffer, int status,
                                               unsigned version) {
  HttpResponse res;
  send_error(state, res, status_error(status));
  if (!co_await write_response(stream, res, version, /*keep_alive=*/false)) co_return;
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.expires_after(kLingerTimeout);
  size_t dropped = 0;
  while (!ec && dropped < (64u << 20)) {
    buffer.clear();
    dropped += co_await stream.async_read_some(buffer.prepare(64 << 10),
                                               asio::redirect_error(use_awaitable, ec));
  }
}

// Drives one admitted generation: waits (without a thread) for its stream's events and writes
// them, as SSE chunks or, at the end, as one response. Returns whether the connection may
// serve another request. Leaving early destroys `gen`, which aborts the request.
asio::awaitable<bool> HttpServer::Impl::serve_generation(beast::tcp_stream& stream,
                                                         std::unique_ptr<GenerationResponse> gen,
                                                         HttpResponse& res, unsigned version,
                                                         bool keep_alive) {
  const asio::any_io_executor strand = co_await asio::this_coro::executor;
  auto waker = std::make_shared<Waker>(strand);
  gen->on_ready([waker] { waker->notify(); });
  auto watch = std::make_shared<DisconnectWatch>();
  watch_disconnect(stream.socket(), watch, waker);

  const bool streaming = gen->streaming();
  // HTTP/1.0 has no chunked encoding: the stream's end is the connection's end.
  const bool chunked = streaming && version >= 11;
  if (!chunked) keep_alive = keep_alive && !streaming;
  bool ok = true;
  beast::error_code ec;
  if (streaming) {
    http::response<http::empty_body> head;
    head.version(version);
    head.result(unsigned(res.status));
    head.set(http::field::content_type, res.content_type);
    for (const auto& [name, value] : res.headers) head.set(name, value);
    head.keep_alive(keep_alive);
    if (chunked) head.chunked(true);
    http::response_serializer<http::empty_body> sr(head);
    stream.expires_after(kWriteTimeout);
    co_await http::async_write_header(stream, sr, asio::redirect_error(use_awaitable, ec));
    ok = !ec;
  }
  std::string out;
  while (ok) {
    out.clear();
    bool done = false;
    try {
      done = gen->poll(&out, &res);
    } catch (const std::exception& e) {
      TANDEM_LOG_ERROR("generation response failed: {}", e.what());
      if (streaming) {
        ok = false;  // mid-stream: dropping the connection is all that is left
        break;
      }
      ApiError err;
      err.http_status = 500;
      err.type = "server_error";
      err.message = std::string("internal error: ") + e.what();
      send_error(state, res, err);
      done = true;
    }
    // Give the admission slot back before the last bytes go out, so a client that sends its
    // next request the moment it has this answer finds room for it.
    if (done) gen.reset();
    if (streaming && !out.empty()) {
      stream.expires_after(kWriteTimeout);
      if (chunked) {
        co_await asio::async_write(stream, http::make_chunk(asio::buffer(out)),
                                   asio::redirect_error(use_awaitable, ec));
      } else {
        co_await asio::async_write(stream, asio::buffer(out), asio::redirect_error(use_awaitable, ec));
      }
      if (ec) {
        ok = false;  // the client is gone or stopped reading
        break;
      }
    }
    if (done) break;
    if (watch->gone) {
      TANDEM_LOG_INFO("client disconnected: aborting request");
      ok = false;
      break;
    }
    co_await waker->wait();
  }
  watch->active = false;
  stream.socket().cancel(ec);  // ends the disconnect watch
  gen.reset();  // unfinished (client gone, write failed): aborts the request, frees its pages
  if (!ok) co_return false;
  if (!streaming) co_return co_await write_response(stream, res, version, keep_alive) && keep_alive;
  if (chunked) {
    stream.expires_after(kWriteTimeout);
    co_await asio::async_write(stream, http::make_chunk_last(),
                               asio::redirect_error(use_awaitable, ec));
    co_return !ec && keep_alive;
  }
  co_return false;
}

asio::awaitable<void> HttpServer::Impl::session(tcp::socket socket) {
  HttpRequest base;
  {
    beast::error_code ec;
    const tcp::endpoint remote = socket.remote_endpoint(ec);
    if (!ec) {
      base.remote_addr = remote.address().to_string();
      base.remote_port = remote.port();
    }
  }
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kHeaderLimitBytes);
    parser.body_limit(uint64_t(state.config.max_body_bytes));
    beast::error_code ec;
    stream.expires_after(kReadTimeout);
    co_await http::async_read_header(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == http::error::body_limit) co_return co_await refuse(stream, buffer, 413, 11);
      if (is_disconnect(ec)) co_return;
      co_return co_await refuse(stream, buffer, ec == http::error::header_limit ? 431 : 400, 11);
    }
    InProgress in_progress(requests_in_progress);
    const unsigned version = parser.get().version();
    if (parser.get().target().size() > kMaxTargetBytes) {
      co_return co_await refuse(stream, buffer, 414, version);
    }
    if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      http::response<http::empty_body> go_on(http::status::continue_, version);
      stream.expires_after(kWriteTimeout);
      co_await http::async_write(stream, go_on, asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
    }
    stream.expires_after(kReadTimeout);
    co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == http::error::body_limit) co_return co_await refuse(stream, buffer, 413, version);
      if (is_disconnect(ec)) co_return;
      co_return co_await refuse(stream, buffer, 400, version);
    }

    http::request<http::string_body> msg = parser.release();
    HttpRequest req = base;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.path = req.target.substr(0, req.target.find('?'));
    for (const auto& field : msg) {
      req.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    req.body = std::move(msg.body());
    // While draining, connections close after their answer so clients go elsewhere.
    const bool keep_alive = msg.keep_alive() && !state.tracker.draining();

    HttpResponse res;
    std::unique_ptr<GenerationResponse> gen;
    try {
      gen = dispatch(state, req, res);
    } catch (const std::exception& e) {
      TANDEM_LOG_ERROR("{} {}: {}", req.method, req.path, e.what());
      ApiError err;
      err.http_status = 500;
      err.type = "server_error";
      err.message = std::string("internal error: ") + e.what();
      res = HttpResponse();
      send_error(state, res, err);
    }
    bool again;
    if (gen) {
      again = co_await serve_generation(stream, std::move(gen), res, version, keep_alive);
    } else {
      again = co_await write_response(stream, res, version, keep_alive) && keep_alive;
    }
    TANDEM_LOG_DEBUG("{} {} {} from {}:{}", req.method, req.path, res.status, req.remote_addr,
                     req.remote_port);
    if (!again) break;
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

HttpServer::HttpServer(ServerState& state) : impl_(std::make_unique<Impl>(state)) {}

HttpServer::~HttpServer() = default;

Status HttpServer::bind() {
  const ServerConfig& c = impl_->state.config;
  const Status unavailable{StatusCode::kUnavailable,
                           fmt::format("cannot listen on {}:{} (--host, --port): in use or not an "
                                       "address of this machine", c.host, c.port)};
  beast::error_code ec;
  tcp::resolver resolver(impl_->ioc);
  const auto endpoints = resolver.resolve(c.host, std::to_string(c.port),
                                          tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) return unavailable;
  tcp::acceptor& a = impl_->acceptor;
  for (const auto& entry : endpoints) {
    ec = {};
    a.open(entry.endpoint().protocol(), ec);
    if (ec) continue;
    a.set_option(tcp::acceptor::reuse_address(true), ec);
    a.bind(entry.endpoint(), ec);
    // The largest backlog the system allows: a burst of connections (a thousand clients at
    // once) must wait in the queue, not be reset.
    if (!ec) a.listen(SOMAXCONN, ec);
    if (!ec) break;
    beast::error_code ignored;
    a.close(ignored);
  }
  if (ec || !a.is_open()) return unavailable;
  impl_->port = a.local_endpoint(ec).port();
  return {};
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::hurry_shutdown() { impl_->state.tracker.interrupt_wait(); }

void HttpServer::run() {
  Impl& impl = *impl_;
  asio::co_spawn(impl.acceptor.get_executor(), impl.accept_loop(), [](std::exception_ptr ep) {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      TANDEM_LOG_ERROR("the accept loop failed: {}", e.what());
    }
  });
  const int n = std::max(1, impl.state.config.http_threads);
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) threads.emplace_back([&impl] { impl.ioc.run(); });
  impl.ioc.run();
  for (std::thread& t : threads) t.join();
}

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
    for (const runtime::RequestId id : ids) st.abort(id);
    // Aborted streams end at the engine's next step; their connections then write the end.
    for (int i = 0; i < 3000 && st.tracker.in_flight() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  Impl& impl = *impl_;
  asio::post(impl.acceptor.get_executor(), [&impl] {
    beast::error_code ec;
    impl.acceptor.close(ec);
  });
  // The last answers are being written (a request leaves the tracker just before its last
  // bytes go out); give them a moment, then stop every connection, idle keep-alive ones too.
  for (int i = 0; i < 500 && impl.requests_in_progress.load() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl.ioc.stop();
}

}  // namespace tandem::server
