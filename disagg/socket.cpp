#include "disagg/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "disagg/wire.h"

namespace tandem::disagg {
namespace {

constexpr uint32_t kHelloMagic = 0x4f4c4854;  // "THLO"
constexpr uint32_t kMaxTokenBytes = 4096;
constexpr int kPollSliceMs = 50;  // how often a blocked wait looks at its stop flag

Status errno_status(StatusCode code, const std::string& what) {
  return {code, what + ": " + std::strerror(errno)};
}

void set_common_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Polls for `events` until the deadline, in slices so a stop flag is seen promptly.
Status wait_for(int fd, short events, Clock::time_point deadline,
                const std::atomic<bool>* stop) {
  for (;;) {
    if (stop && stop->load(std::memory_order_relaxed)) return {StatusCode::kAborted, "stopped"};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    // A past deadline still polls once, so a zero timeout means "only if ready now".
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, int(std::clamp<int64_t>(left.count() + 1, 0, kPollSliceMs)));
    if (r < 0 && errno != EINTR) return errno_status(StatusCode::kUnavailable, "poll");
    if (r > 0) return {};  // ready, or an error/hangup the next read/write reports
    if (left.count() <= 0) return {StatusCode::kDeadlineExceeded, "pd socket: timed out"};
  }
}

bool split_endpoint(const std::string& endpoint, std::string* host, std::string* port) {
  size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) return false;
  *host = endpoint.substr(0, colon);
  *port = endpoint.substr(colon + 1);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']')
    *host = host->substr(1, host->size() - 2);
  return true;
}

}  // namespace

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = o.release();
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Socket::shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

Status tcp_listen(const std::string& host, uint16_t port, Socket* out, uint16_t* bound_port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string port_str = std::to_string(port);
  if (int e = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_str.c_str(), &hints, &res))
    return {StatusCode::kInvalidArgument, "listen address " + host + ": " + gai_strerror(e)};
  Status last{StatusCode::kUnavailable, "no address to listen on"};
  for (addrinfo* a = res; a; a = a->ai_next) {
    Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!s.valid()) continue;
    int one = 1;
    setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(s.fd(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(s.fd(), 128) != 0) {
      last = errno_status(StatusCode::kUnavailable, "bind/listen " + host + ":" + port_str);
      continue;
    }
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
    *bound_port = ntohs(addr.ss_family == AF_INET6
                            ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                            : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    int flags = fcntl(s.fd(), F_GETFL, 0);
    fcntl(s.fd(), F_SETFL, flags | O_NONBLOCK);
    *out = std::move(s);
    freeaddrinfo(res);
    return {};
  }
  freeaddrinfo(res);
  return last;
}

Status tcp_accept(const Socket& listener, std::chrono::milliseconds timeout, Socket* out) {
  pollfd p{listener.fd(), POLLIN, 0};
  int r = ::poll(&p, 1, int(timeout.count()));
  if (r <= 0) return {};
  int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
      return {};
    return errno_status(StatusCode::kUnavailable, "accept");
  }
  set_common_options(fd);
  *out = Socket(fd);
  return {};
}

Status tcp_connect(const std::string& endpoint, Clock::time_point deadline, Socket* out) {
  std::string host, port;
  if (!split_endpoint(endpoint, &host, &port))
    return {StatusCode::kInvalidArgument, "endpoint '" + endpoint + "' is not host:port"};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int e = getaddrinfo(host.c_str(), port.c_str(), &hints, &res))
    return {StatusCode::kUnavailable, "resolve " + endpoint + ": " + gai_strerror(e)};
  Status last{StatusCode::kUnavailable, "connect " + endpoint + ": no address"};
  for (addrinfo* a = res; a; a = a->ai_next) {
    Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!s.valid()) continue;
    set_common_options(s.fd());
    if (::connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = errno_status(StatusCode::kUnavailable, "connect " + endpoint);
        continue;
      }
      if (Status w = wait_for(s.fd(), POLLOUT, deadline, nullptr); !w.ok()) {
        last = w;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        errno = err;
        last = errno_status(StatusCode::kUnavailable, "connect " + endpoint);
        continue;
      }
    }
    *out = std::move(s);
    freeaddrinfo(res);
    return {};
  }
  freeaddrinfo(res);
  return last;
}

Status send_all(const Socket& s, std::span<const uint8_t> data, Clock::time_point deadline,
                const std::atomic<bool>* stop) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(s.fd(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Status w = wait_for(s.fd(), POLLOUT, deadline, stop); !w.ok()) return w;
      continue;
    }
    return errno_status(StatusCode::kUnavailable, "pd socket: peer gone (send)");
  }
  return {};
}

Status recv_all(const Socket& s, std::span<uint8_t> data, Clock::time_point deadline,
                const std::atomic<bool>* stop) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::recv(s.fd(), data.data() + done, data.size() - done, 0);
    if (n > 0) {
      done += size_t(n);
      continue;
    }
    if (n == 0) return {StatusCode::kUnavailable, "pd socket: peer closed the connection"};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (Status w = wait_for(s.fd(), POLLIN, deadline, stop); !w.ok()) return w;
      continue;
    }
    return errno_status(StatusCode::kUnavailable, "pd socket: peer gone (recv)");
  }
  return {};
}

Status wait_readable(const Socket& s, Clock::time_point deadline,
                     const std::atomic<bool>* stop) {
  return wait_for(s.fd(), POLLIN, deadline, stop);
}

Status send_message(const Socket& s, const Message& m, Clock::time_point deadline) {
  std::vector<uint8_t> frame = encode_frame(m);
  return send_all(s, frame, deadline);
}

Status recv_message(const Socket& s, Message* m, Clock::time_point deadline,
                    const std::atomic<bool>* stop) {
  // Wait without consuming anything, so a timeout leaves the stream in step; once a frame
  // starts, the rest must follow within kFrameTimeout or the peer counts as gone.
  if (Status st = wait_readable(s, deadline, stop); !st.ok()) return st;
  constexpr auto kFrameTimeout = std::chrono::seconds(5);
  const auto frame_deadline = std::max(deadline, Clock::now() + kFrameTimeout);
  auto gone = [](const Status& st) {
    if (st.code() != StatusCode::kDeadlineExceeded) return st;
    return Status{StatusCode::kUnavailable, "pd socket: peer stalled mid-message"};
  };
  std::vector<uint8_t> frame(kFrameHeaderBytes);
  if (Status st = recv_all(s, frame, frame_deadline, stop); !st.ok()) return gone(st);
  MessageType type;
  uint32_t length;
  if (Status st = decode_frame_header(frame, &type, &length); !st.ok()) return st;
  frame.resize(kFrameHeaderBytes + length);
  if (Status st = recv_all(s, std::span(frame).subspan(kFrameHeaderBytes), frame_deadline, stop);
      !st.ok())
    return gone(st);
  return decode_frame(frame, m);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk the longer length so the time does not depend on the contents.
  size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

std::string resolve_pd_token(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("TANDEM_PD_TOKEN");
  return env ? env : "";
}

Status client_handshake(const Socket& s, const std::string& token, Clock::time_point deadline) {
  ByteWriter w;
  w.u32(kHelloMagic);
  w.u16(kProtocolVersion);
  w.str(token);
  if (Status st = send_all(s, w.buffer(), deadline); !st.ok()) return st;
  uint8_t verdict = 0;
  if (Status st = recv_all(s, {&verdict, 1}, deadline); !st.ok()) {
    if (st.code() == StatusCode::kDeadlineExceeded)
      return {st.code(), "pd handshake: no answer from the peer in time"};
    return {StatusCode::kUnavailable, "pd handshake: peer refused the connection (token?)"};
  }
  if (verdict != 1) return {StatusCode::kInvalidArgument, "pd handshake: peer refused the token"};
  return {};
}

Status server_handshake(const Socket& s, const std::string& token, Clock::time_point deadline) {
  uint8_t head[10];
  if (Status st = recv_all(s, head, deadline); !st.ok()) return st;
  ByteReader r(head);
  uint32_t magic = 0, length = 0;
  uint16_t version = 0;
  r.u32(&magic);
  r.u16(&version);
  r.u32(&length);
  if (magic != kHelloMagic || version != kProtocolVersion || length > kMaxTokenBytes)
    return {StatusCode::kInvalidArgument, "pd handshake: not a tandem PD peer"};
  std::string presented(length, '\0');
  if (Status st = recv_all(s, {reinterpret_cast<uint8_t*>(presented.data()), length}, deadline);
      !st.ok())
    return st;
  bool ok = constant_time_equal(presented, token);
  uint8_t verdict = ok ? 1 : 0;
  Status sent = send_all(s, {&verdict, 1}, deadline);
  if (!ok) return {StatusCode::kInvalidArgument, "pd handshake: wrong token"};
  return sent;
}

}  // namespace tandem::disagg
