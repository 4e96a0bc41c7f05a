// ServerState: what every HTTP handler shares. Handlers post work to the engine (submit,
// abort) and read results from request streams; they never touch the model or the scheduler.
// Thread-safety: the members are thread-safe objects (Engine's public API, the tokenizer's
// const methods, RequestTracker, ServerMetrics, SleepyRunner::set_sleep)
// or immutable after start-up.
#pragma once

#include <memory>
#include <string>

#include "model/config.h"
#include "runtime/engine.h"
#include "server/forward_sleep.h"
#include "server/metrics.h"
#include "server/request_parser.h"
#include "server/request_tracker.h"
#include "server/server_config.h"
#include "tokenizer/tokenizer.h"

namespace tandem::server {

struct ServerState {
  ServerState(const ServerConfig& config, const ModelConfig& model, runtime::Engine& engine,
              const tokenizer::Tokenizer* tokenizer, SleepyRunner& runner);

  const ServerConfig config;
  const ModelConfig model;  // max_position_embeddings is the served context length
  runtime::Engine& engine;
  const tokenizer::Tokenizer* tokenizer;  // null with --skip-tokenizer-init
  SleepyRunner& runner;
  const ParseContext parse_context;
  const int64_t created_unix_s;

  ServerMetrics metrics;
  RequestTracker tracker;
};

}  // namespace tandem::server
