// Blocking TCP sockets with deadlines: every wait is a poll() bounded by a deadline and, where
// given, a stop flag, so nothing in disagg/ waits forever. Plus the shared-token check.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "core/error.h"
#include "disagg/messages.h"

namespace tandem::disagg {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.release()) {}
  Socket& operator=(Socket&& o) noexcept;
  ~Socket() { close(); }
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void close();
  // Shuts both directions down so a thread blocked in poll() on it wakes up.
  void shutdown();

 private:
  int fd_ = -1;
};

// Listens on host:port (port 0 picks a free one; *bound_port says which).
Status tcp_listen(const std::string& host, uint16_t port, Socket* out, uint16_t* bound_port);
// Accepts one connection if one arrives within `timeout`; *out stays invalid otherwise.
Status tcp_accept(const Socket& listener, std::chrono::milliseconds timeout, Socket* out);
// Connects to "host:port" before `deadline`.
Status tcp_connect(const std::string& endpoint, Clock::time_point deadline, Socket* out);

// Sends / receives exactly `data.size()` bytes before `deadline`. A closed or reset peer is
// kUnavailable, the deadline kDeadlineExceeded, a set `stop` flag kAborted.
Status send_all(const Socket& s, std::span<const uint8_t> data, Clock::time_point deadline,
                const std::atomic<bool>* stop = nullptr);
Status recv_all(const Socket& s, std::span<uint8_t> data, Clock::time_point deadline,
                const std::atomic<bool>* stop = nullptr);
// Waits until `s` is readable (or closed) before `deadline`.
Status wait_readable(const Socket& s, Clock::time_point deadline,
                     const std::atomic<bool>* stop = nullptr);

Status send_message(const Socket& s, const Message& m, Clock::time_point deadline);
// kDeadlineExceeded only when no frame began before `deadline` (nothing consumed).
Status recv_message(const Socket& s, Message* m, Clock::time_point deadline,
                    const std::atomic<bool>* stop = nullptr);

// Compares in time independent of where the strings differ (length still leaks).
bool constant_time_equal(std::string_view a, std::string_view b);

// The job's token: `flag` when given, else $TANDEM_PD_TOKEN, else empty.
std::string resolve_pd_token(const std::string& flag);

// Sends the 1-frame hello (magic, version, token) and reads the peer's verdict.
Status client_handshake(const Socket& s, const std::string& token, Clock::time_point deadline);
// Reads a hello and answers it; kPermissionDenied-like kInvalidArgument on a wrong token.
Status server_handshake(const Socket& s, const std::string& token, Clock::time_point deadline);

}  // namespace tandem::disagg
