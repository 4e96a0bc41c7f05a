// `tandem serve`: loads the model and tokenizer, starts the engine and the HTTP server, and
// serves until SIGTERM or SIGINT, then shuts down gracefully (HttpServer::shutdown).
// Prints one line "tandem serve: listening on http://HOST:PORT" to stdout once it accepts
// requests (with --port 0 this is how a caller learns the port).
#pragma once

#include "server/server_config.h"

namespace tandem::server {

// Returns the process exit code. Throws tandem::Error for a model or tokenizer that cannot be
// loaded; an invalid config is reported and returns 2.
int run_serve(const ServerConfig& config);

}  // namespace tandem::server
