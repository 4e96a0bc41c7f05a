// ServerState: what every HTTP handler shares. Handlers post work to the engine (submit,
// abort) and read results from request streams; they never touch the model or the scheduler.
// Thread-safety: the members are thread-safe objects (EngineFront's API, the tokenizer's
// const methods, RequestTracker, ServerMetrics, SleepyRunner::set_sleep)
// or immutable after start-up; the PD worker pointers are set before the server takes requests.
#pragma once

#include <memory>
#include <string>

#include "disagg/pd_worker.h"
#include "model/config.h"
#include "runtime/dp_engine.h"
#include "runtime/engine.h"
#include "server/forward_sleep.h"
#include "server/metrics.h"
#include "server/request_parser.h"
#include "server/request_tracker.h"
#include "server/server_config.h"
#include "tokenizer/tokenizer.h"

namespace tandem::server {

struct ServerState {
  ServerState(const ServerConfig& config, const ModelConfig& model, runtime::EngineFront& engine,
              const tokenizer::Tokenizer* tokenizer, SleepyRunner& runner);

  const ServerConfig config;
  const ModelConfig model;  // max_position_embeddings is the served context length
  runtime::EngineFront& engine;  // one Engine, or the DpEngine's ranks (--ep)
  const tokenizer::Tokenizer* tokenizer;  // null with --skip-tokenizer-init
  SleepyRunner& runner;
  const ParseContext parse_context;
  const int64_t created_unix_s;

  ServerMetrics metrics;
  RequestTracker tracker;

  // --role prefill|decode: the PD worker beside the engine (null otherwise) and, on a prefill
  // server, the port its bootstrap endpoint listens on (GET /pd_info).
  disagg::PrefillWorker* prefill_worker = nullptr;
  disagg::DecodeWorker* decode_worker = nullptr;
  int bootstrap_port = 0;
  // --ep with --dp-attention: the DP engine behind `engine` (per-rank metrics), else null.
  const runtime::DpEngine* dp = nullptr;

  bool disaggregated() const { return prefill_worker != nullptr || decode_worker != nullptr; }
  // Ends request `id` early (client gone, POST /abort, shutdown): through the PD worker when
  // there is one (it tells the peer and never frees pages under a running transfer), else
  // through the engine.
  void abort(runtime::RequestId id) {
    if (prefill_worker) return prefill_worker->abort(id);
    if (decode_worker) return decode_worker->abort(id);
    engine.abort(id);
  }
};

}  // namespace tandem::server
