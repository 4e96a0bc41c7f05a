// The HTTP handlers (docs/server.md lists the endpoints). Each parses and checks its request,
// posts the work to the engine (through Generation) and reads the result back; none touches
// the model. Errors leave as OpenAI-style JSON bodies through send_error.
// Thread-safe: handlers run on many connection threads at once; they share only ServerState.
#pragma once

#include <httplib.h>

#include "server/api_error.h"
#include "server/request_parser.h"
#include "server/server_state.h"

namespace tandem::server {

void send_error(ServerState& state, httplib::Response& res, const ApiError& error);

// POST /v1/completions, /v1/chat/completions, /generate.
void handle_generation(ServerState& state, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res);

void handle_abort(ServerState& state, const httplib::Request& req, httplib::Response& res);
void handle_slow_down(ServerState& state, const httplib::Request& req, httplib::Response& res);
void handle_models(ServerState& state, const httplib::Request& req, httplib::Response& res);
void handle_health(ServerState& state, const httplib::Request& req, httplib::Response& res);
void handle_metrics(ServerState& state, const httplib::Request& req, httplib::Response& res);

// Answers 401 (and returns false) unless the request carries `Authorization: Bearer <key>`.
// The key is compared in constant time.
bool check_api_key(ServerState& state, const httplib::Request& req, httplib::Response& res);
bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace tandem::server
