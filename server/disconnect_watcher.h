// DisconnectWatcher: aborts a request whose client has gone away. One thread polls the sockets
// of the connections that wait for a generation (every 50 ms) and calls `on_disconnect` once
// for a socket whose peer has closed or reset it. A handler waiting for its stream then sees
// the request end with finish reason abort, and its KV pages are freed.
//
// Streaming responses also notice a closed peer when a write fails; the watcher covers the
// time between tokens (a long prefill, a slowed-down step) and non-streaming requests, which
// write nothing until they finish.
// Thread-safe: watch() and the handles' destructors may run on any thread.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "runtime/request.h"

namespace tandem::server {

class DisconnectWatcher {
 public:
  explicit DisconnectWatcher(std::function<void(runtime::RequestId)> on_disconnect);
  ~DisconnectWatcher();

  // Stops watching when destroyed. Destroy it before the connection's socket is closed.
  class Handle {
   public:
    Handle() = default;
    Handle(Handle&& o) noexcept : owner_(o.owner_), key_(o.key_) { o.owner_ = nullptr; }
    Handle& operator=(Handle&& o) noexcept;
    ~Handle() { reset(); }
    void reset();

   private:
    friend class DisconnectWatcher;
    Handle(DisconnectWatcher* owner, uint64_t key) : owner_(owner), key_(key) {}
    DisconnectWatcher* owner_ = nullptr;
    uint64_t key_ = 0;
  };

  // Watches socket `fd` for request `id`; an fd < 0 is not watched.
  Handle watch(int fd, runtime::RequestId id);

 private:
  struct Entry {
    int fd;
    runtime::RequestId id;
    bool fired;
  };
  void unwatch(uint64_t key);
  void loop();

  std::function<void(runtime::RequestId)> on_disconnect_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<uint64_t, Entry> entries_;
  uint64_t next_key_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

// The socket of the accepted connection with these addresses, found among this process's
// file descriptors; -1 when there is none. cpp-httplib 0.11 gives handlers the peer's and
// the local address but not the socket, which the watcher needs.
int find_connection_socket(const std::string& remote_addr, int remote_port, int local_port);

}  // namespace tandem::server
