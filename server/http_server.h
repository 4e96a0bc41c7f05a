// HttpServer: cpp-httplib's server with tandem's routes (docs/server.md), a connection thread
// pool that grows up to the admission limit (so a full queue is answered with 503 rather than
// left waiting for a thread), the body size limit, API-key checks and graceful shutdown.
// Thread-safety: bind/run belong to one thread; shutdown may be called from any other thread
// (a signal-handling one) while run() is serving.
#pragma once

#include <memory>

#include "core/error.h"
#include "server/server_state.h"

namespace tandem::server {

class HttpServer {
 public:
  explicit HttpServer(ServerState& state);
  ~HttpServer();

  // Binds config.host:config.port (port 0: a free port). Unavailable names the address.
  Status bind();
  int port() const;
  // Serves until shutdown(); returns once every connection thread has finished.
  void run();
  // Refuses new requests (503, /health 503), gives in-flight ones `timeout_s` to finish,
  // aborts the rest, then stops the listener. Blocks until the requests are done.
  void shutdown(double timeout_s);
  // Cuts a shutdown's wait short: in-flight requests are aborted now (a second signal).
  void hurry_shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::server
