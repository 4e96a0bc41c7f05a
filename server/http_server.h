// HttpServer: tandem's routes (docs/server.md) on Boost.Beast over Boost.Asio. A fixed set of
// I/O threads (--http-threads) runs one io_context; every connection is a coroutine on its own
// strand, so no connection holds a thread while its request runs: a generation waits for its
// stream's wake-up, not on a blocked thread, and thousands of streams share the few threads.
// It enforces the body size limit, read/write timeouts and the API key, answers HTTP-level
// errors with the same OpenAI-style JSON bodies as the handlers, aborts the request of a
// client that leaves, and shuts down gracefully.
// Thread-safety: bind/run belong to one thread; shutdown and hurry_shutdown may be called from
// any other thread (a signal-handling one) while run() is serving.
#pragma once

#include <memory>

#include "core/error.h"
#include "server/server_state.h"

namespace tandem::server {

class HttpServer {
 public:
  explicit HttpServer(ServerState& state);
  ~HttpServer();

  // Binds config.host:config.port (port 0: a free port) and listens with the system's
  // largest backlog. Unavailable names the address.
  Status bind();
  int port() const;
  // Serves on config.http_threads threads (the caller's among them) until shutdown().
  void run();
  // Refuses new requests (503, /health 503), gives in-flight ones `timeout_s` to finish,
  // aborts the rest, then stops listening and makes run() return. Blocks until then.
  void shutdown(double timeout_s);
  // Cuts a shutdown's wait short: in-flight requests are aborted now (a second signal).
  void hurry_shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::server
