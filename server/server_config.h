// ServerConfig: everything `tandem serve` is told on its command line. It extends the
// runtime's EngineConfig (STYLE.md 5); validate() checks the invariants once and names the
// flag at fault. app/cmd_serve.cpp holds the one flag table that fills it.
#pragma once

#include <cstdint>
#include <string>

#include "core/error.h"
#include "disagg/pd_worker.h"
#include "runtime/engine.h"

namespace tandem::server {

// min(4, hardware threads): a few I/O threads serve thousands of connections, since no
// connection holds a thread while its request runs.
int default_http_threads();

struct ServerConfig {
  std::string model_path;
  std::string tokenizer_path;      // empty: the model directory
  std::string served_model_name;   // empty: model_path, as SGLang and vLLM do
  bool skip_tokenizer_init = false;  // no tokenizer: only /generate with input_ids
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string api_key;             // empty: no authentication
  std::string device = "cpu";      // cpu, cuda, cuda:N
  std::string load_format = "auto";  // auto (the checkpoint) or dummy (random weights)
  int64_t context_length = 0;      // 0: the model's max_position_embeddings
  std::string kv_cache_dtype = "auto";  // auto (bf16), bf16, f32
  // Admission: requests beyond max_running_requests + max_queued_requests sequences in flight
  // are refused with 503 and Retry-After instead of queueing without bound.
  int32_t max_queued_requests = 256;
  int64_t max_body_bytes = 8 << 20;  // larger request bodies get 413
  double shutdown_timeout_s = 30.0;  // SIGTERM: in-flight requests get this long to finish
  int http_threads = default_http_threads();  // I/O threads running every connection
  int32_t cuda_graph_max_bs = 256;  // CUDA: decode batches up to this replay CUDA graphs; 0 off
  runtime::EngineConfig engine;
  // Expert parallelism (docs/parallel.md "The DP engine"): --ep ranks, each with 1/ep of every
  // MoE layer's routed experts; --dp-attention gives each rank its own requests, attention and
  // KV pool (required with --ep > 1 for now). CPU: the ranks are threads; cuda: GPUs 0..ep-1.
  int32_t ep = 1;
  bool dp_attention = false;
  int64_t max_dispatch_tokens_per_rank = 0;  // low_latency buffers; 0: --max-running-requests
  // PD disaggregation (docs/disagg.md "HTTP"): colocated (both phases here), prefill or decode.
  std::string role = "colocated";  // --role
  // --transfer-backend, --pd-token, --disaggregation-bootstrap-port, --bootstrap-timeout-ms,
  // --transfer-timeout-ms; the decode reserve is engine.pd_decode_reserve_tokens.
  disagg::PdWorkerConfig pd = default_pd_config();

  static disagg::PdWorkerConfig default_pd_config() {
    disagg::PdWorkerConfig c;
    c.bootstrap_port = 8998;  // SGLang's default bootstrap port
    return c;
  }
  bool is_prefill() const { return role == "prefill"; }
  bool is_decode() const { return role == "decode"; }

  // InvalidArgument naming the flag at fault.
  Status validate() const;
  // The name clients pass as "model" and /v1/models lists.
  std::string model_name() const { return served_model_name.empty() ? model_path : served_model_name; }
  std::string tokenizer_dir() const { return tokenizer_path.empty() ? model_path : tokenizer_path; }
  // Sequences allowed in flight (running or queued) before 503; --dp-attention: every rank
  // runs --max-running-requests.
  int64_t max_in_flight() const {
    return int64_t(engine.scheduler.max_running_requests) * (dp_attention ? ep : 1) +
           max_queued_requests;
  }
};

// "cpu", "cuda", "cuda:N"; InvalidArgument for anything else.
Status parse_device(const std::string& name, Device* device);

}  // namespace tandem::server
