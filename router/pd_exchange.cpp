#include "router/pd_exchange.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <memory>
#include <thread>

#include "core/log.h"

namespace tandem::router {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollStep = std::chrono::milliseconds(20);

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// cpp-httplib does not hand a handler its connection's socket, and tells a handler nothing when
// the client leaves. The socket is found once per request among this process's descriptors by
// its two ends (the client's address and port, the router's port); -1 if not found, and then a
// client that leaves is noticed only when a write to it fails.
int find_client_socket(const std::string& peer_addr, int peer_port, int local_port) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = ::readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2 || fd == ::dirfd(dir)) continue;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    char host[NI_MAXHOST], lport[NI_MAXSERV], pport[NI_MAXSERV];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&local), local_len, nullptr, 0, lport, sizeof(lport),
                      NI_NUMERICSERV) != 0 ||
        ::getnameinfo(reinterpret_cast<sockaddr*>(&peer), peer_len, host, sizeof(host), pport, sizeof(pport),
                      NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      continue;
    }
    if (std::atoi(lport) == local_port && std::atoi(pport) == peer_port && peer_addr == host) {
      found = fd;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// True once the client closed its end (or the connection broke).
bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// A plain TCP connect within `timeout_s`: the check that lets a request move to another server
// of the same role before anything was sent to either.
bool can_connect(const UpstreamUrl& url, double timeout_s) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  std::string host = url.host;
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (::getaddrinfo(host.c_str(), std::to_string(url.port).c_str(), &hints, &res) != 0) return false;
  bool ok = false;
  for (addrinfo* a = res; a != nullptr && !ok; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof(err);
      ok = ::poll(&p, 1, static_cast<int>(timeout_s * 1000)) == 1 &&
           ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return ok;
}

// One upstream request of the exchange, sent on its own thread.
struct Leg {
  Upstream* upstream = nullptr;
  std::unique_ptr<httplib::Client> client;
  std::thread thread;
  // Guarded by Exchange::mu.
  bool headers = false;
  bool done = false;
  bool transport_error = false;
  int status = 0;
  std::string content_type;
  std::string body;  // the whole body, unless it streams to the client
  std::string error_text;
};

struct Exchange {
  RouterContext* ctx = nullptr;
  Clock::time_point t0;
  Clock::time_point deadline;
  int client_fd = -1;
  std::mutex mu;
  std::condition_variable cv;
  Leg prefill, decode;
  bool decode_streaming = false;  // decode answered text/event-stream
  std::deque<std::string> chunks;  // decode bytes not yet written to the client (streaming)
  std::atomic<bool> cancelled{false};
  bool finished = false;  // metrics recorded

  void run_leg(Leg& leg, const std::string& path, const std::string& body, const httplib::Headers& headers) {
    const bool is_decode = &leg == &decode;
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.headers = headers;
    req.body = body;
    req.response_handler = [&](const httplib::Response& r) {
      std::lock_guard lock(mu);
      leg.headers = true;
      leg.status = r.status;
      leg.content_type = r.get_header_value("Content-Type");
      if (is_decode) decode_streaming = r.status == 200 && leg.content_type.rfind("text/event-stream", 0) == 0;
      cv.notify_all();
      return !cancelled;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (cancelled) return false;
      std::lock_guard lock(mu);
      if (is_decode && decode_streaming) {
        chunks.emplace_back(data, n);
      } else {
        leg.body.append(data, n);
      }
      cv.notify_all();
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    leg.upstream->requests_total.fetch_add(1);
    const bool sent = !cancelled && leg.client->send(req, res, err);
    ctx->pool.release(leg.upstream);
    if (!sent && err == httplib::Error::Connection) {
      ctx->pool.mark_down(leg.upstream, "connection failed: " + httplib::to_string(err));
    }
    std::lock_guard lock(mu);
    leg.done = true;
    if (!sent) {
      leg.transport_error = true;
      leg.error_text = cancelled ? "cancelled" : httplib::to_string(err);
    }
    cv.notify_all();
  }

  // Closes both upstream requests: their servers see the connection end and abort the room.
  void cancel() {
    cancelled = true;
    prefill.client->stop();
    decode.client->stop();
  }

  // Waits for both legs; a cancelled exchange keeps closing its sockets, since a leg may have
  // been connecting when cancel() first ran.
  void join() {
    std::unique_lock lock(mu);
    while (!(prefill.done && decode.done)) {
      if (cancelled) {
        lock.unlock();
        prefill.client->stop();
        decode.client->stop();
        lock.lock();
      }
      cv.wait_for(lock, kPollStep);
    }
    lock.unlock();
    prefill.thread.join();
    decode.thread.join();
  }

  void finish(const std::string& reason) {
    if (finished) return;
    finished = true;
    if (!reason.empty()) {
      TANDEM_LOG_WARN("router: request via prefill {} / decode {} failed: {}", prefill.upstream->url.url,
                      decode.upstream->url.url, reason);
    }
    ctx->metrics.request_finished(reason, seconds_since(t0));
  }
};

// A reachable healthy upstream of `role`: one that refuses the connection is marked down and
// the request tries one other server of that role.
Upstream* acquire_reachable(RouterContext& ctx, Role role) {
  Upstream* first = ctx.pool.acquire(role);
  if (first == nullptr || can_connect(first->url, ctx.config.connect_timeout_s)) return first;
  ctx.pool.mark_down(first, "connection refused or timed out");
  ctx.pool.release(first);
  Upstream* second = ctx.pool.acquire(role, first);
  if (second == nullptr || can_connect(second->url, ctx.config.connect_timeout_s)) return second;
  ctx.pool.mark_down(second, "connection refused or timed out");
  ctx.pool.release(second);
  return nullptr;
}

void pass_reply(httplib::Response& res, const Leg& leg) {
  res.status = leg.status;
  res.set_content(leg.body, leg.content_type.empty() ? "application/json" : leg.content_type);
}

}  // namespace

void set_api_error(httplib::Response& res, int status, const std::string& message, const std::string& type) {
  nlohmann::json j{{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

void forward_generation(RouterContext& ctx, const httplib::Request& req, httplib::Response& res) {
  nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    ctx.metrics.request_rejected("bad_request");
    return set_api_error(res, 400, "the request body must be a JSON object");
  }
  for (const char* field : {"bootstrap_host", "bootstrap_port", "bootstrap_room"}) {
    if (body.contains(field)) {
      ctx.metrics.request_rejected("bad_request");
      return set_api_error(res, 400, std::string(field) + ": set by the router, not by clients");
    }
  }
  Upstream* p = acquire_reachable(ctx, Role::kPrefill);
  if (p == nullptr) {
    ctx.metrics.request_rejected("no_prefill");
    return set_api_error(res, 503, "no healthy prefill server", "service_unavailable");
  }
  Upstream* d = acquire_reachable(ctx, Role::kDecode);
  if (d == nullptr) {
    ctx.pool.release(p);
    ctx.metrics.request_rejected("no_decode");
    return set_api_error(res, 503, "no healthy decode server", "service_unavailable");
  }
  body["bootstrap_host"] = ctx.pool.bootstrap_host(*p);
  body["bootstrap_port"] = p->bootstrap_port.load();
  body["bootstrap_room"] = ctx.new_room();
  const std::string upstream_body = body.dump();

  ctx.metrics.request_started();
  auto ex = std::make_shared<Exchange>();
  ex->ctx = &ctx;
  ex->t0 = Clock::now();
  ex->deadline = ex->t0 + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(ctx.config.request_timeout_s));
  ex->client_fd = find_client_socket(req.remote_addr, req.remote_port, ctx.bound_port);
  httplib::Headers headers{{"Content-Type", "application/json"}};
  if (req.has_header("Authorization")) headers.emplace("Authorization", req.get_header_value("Authorization"));
  const auto timeout_us = static_cast<int64_t>(ctx.config.request_timeout_s * 1e6);
  for (Leg* leg : {&ex->prefill, &ex->decode}) {
    leg->upstream = leg == &ex->prefill ? p : d;
    leg->client = std::make_unique<httplib::Client>(leg->upstream->url.host, leg->upstream->url.port);
    leg->client->set_connection_timeout(0, static_cast<int64_t>(ctx.config.connect_timeout_s * 1e6));
    leg->client->set_read_timeout(timeout_us / 1000000, timeout_us % 1000000);
    leg->client->set_write_timeout(timeout_us / 1000000, timeout_us % 1000000);
    leg->client->set_keep_alive(false);
  }
  ex->prefill.thread = std::thread([ex, path = req.path, upstream_body, headers] {
    ex->run_leg(ex->prefill, path, upstream_body, headers);
  });
  ex->decode.thread = std::thread([ex, path = req.path, upstream_body, headers] {
    ex->run_leg(ex->decode, path, upstream_body, headers);
  });

  // Decide what the client gets. The response is committed once decode's headers are in and
  // either prefill finished its part or decode finished: until then a prefill error still wins.
  std::string reason;
  bool stream = false;
  {
    std::unique_lock lock(ex->mu);
    for (;;) {
      const Leg& pl = ex->prefill;
      const Leg& dl = ex->decode;
      const bool prefill_failed = pl.done && (pl.transport_error || pl.status != 200);
      if (prefill_failed && !(dl.done && !dl.transport_error && dl.status == 200)) {
        reason = "prefill_error";
        break;
      }
      if (dl.done) {
        reason = dl.transport_error || dl.status != 200 ? "decode_error" : "";
        break;
      }
      if (dl.headers && ex->decode_streaming && pl.done) {
        stream = true;
        break;
      }
      if (Clock::now() >= ex->deadline) {
        reason = "timeout";
        break;
      }
      if (client_gone(ex->client_fd)) {
        reason = "client_disconnect";
        break;
      }
      ex->cv.wait_for(lock, kPollStep);
    }
  }
  if (stream) {
    res.status = 200;
    const std::string content_type = ex->decode.content_type;
    res.set_chunked_content_provider(
        content_type,
        [ex](size_t, httplib::DataSink& sink) {
          std::deque<std::string> out;
          bool done = false, broken = false;
          {
            std::unique_lock lock(ex->mu);
            ex->cv.wait_for(lock, kPollStep, [&] { return !ex->chunks.empty() || ex->decode.done; });
            out.swap(ex->chunks);
            done = ex->decode.done;
            broken = ex->decode.transport_error;
          }
          for (const std::string& c : out) {
            if (!sink.write(c.data(), c.size())) {
              ex->cancel();
              ex->finish("client_disconnect");
              return false;
            }
          }
          if (done) {
            if (broken) {
              // Decode broke mid-stream: the client sees the stream end without its last event.
              ex->finish("decode_error");
              return false;
            }
            sink.done();
            return true;
          }
          if (client_gone(ex->client_fd)) {
            ex->cancel();
            ex->finish("client_disconnect");
            return false;
          }
          if (Clock::now() >= ex->deadline) {
            ex->cancel();
            ex->finish("timeout");
            return false;
          }
          return true;
        },
        [ex](bool) {
          // Runs when the response is dropped: after the last byte, or when the client left.
          ex->cancel();
          ex->join();
          ex->finish("");
        });
    return;
  }

  if (reason == "prefill_error" || reason == "decode_error" || reason == "timeout" ||
      reason == "client_disconnect") {
    ex->cancel();
  }
  ex->join();
  if (ex->decode_streaming) {
    // Decode's whole stream came before the response was committed (a short one): its bytes
    // are in `chunks`, not in the leg's body.
    for (const std::string& c : ex->chunks) ex->decode.body += c;
    ex->chunks.clear();
  }
  if (reason.empty()) {
    pass_reply(res, ex->decode);
  } else if (reason == "prefill_error") {
    if (ex->prefill.transport_error) {
      set_api_error(res, 502, "prefill server " + p->url.url + " failed: " + ex->prefill.error_text,
                    "upstream_error");
    } else {
      pass_reply(res, ex->prefill);
    }
  } else if (reason == "decode_error") {
    if (ex->decode.transport_error) {
      set_api_error(res, 502, "decode server " + d->url.url + " failed: " + ex->decode.error_text,
                    "upstream_error");
    } else {
      pass_reply(res, ex->decode);
    }
  } else if (reason == "timeout") {
    set_api_error(res, 504, "no answer within --request-timeout-s", "timeout");
  } else {
    set_api_error(res, 499, "client closed the connection", "client_disconnect");
  }
  ex->finish(reason);
}

}  // namespace tandem::router
