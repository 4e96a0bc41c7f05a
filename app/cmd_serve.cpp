// tandem serve: the OpenAI-compatible HTTP server (server/, docs/server.md). The flag table
// below is the only place a serve flag is declared: name (SGLang's where the meaning is the
// same), field, help and default.
#include "app/commands.h"
#include "server/serve.h"

namespace tandem::app {

void add_serve_command(CLI::App& app, int& exit_code) {
  auto c = std::make_shared<server::ServerConfig>();
  runtime::SchedulerConfig& sc = c->engine.scheduler;
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve a model over HTTP: OpenAI completions/chat, /generate, /metrics");
  // clang-format off
  cmd->add_option("--model-path", c->model_path, "Model directory (config.json + safetensors), e.g. from `tandem make-model`")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer-path", c->tokenizer_path, "Directory with tokenizer.json and tokenizer_config.json (default: the model directory)");
  cmd->add_flag("--skip-tokenizer-init", c->skip_tokenizer_init, "Run without a tokenizer: only /generate with input_ids");
  cmd->add_option("--served-model-name", c->served_model_name, "Model name in the API (default: --model-path)");
  cmd->add_option("--host", c->host, "Address to bind; 0.0.0.0 for every interface")->capture_default_str();
  cmd->add_option("--port", c->port, "Port to listen on (0: any free port, printed at start)")->capture_default_str();
  cmd->add_option("--api-key", c->api_key, "Require `Authorization: Bearer KEY` on every endpoint but /health and /metrics")->envname("TANDEM_API_KEY");
  cmd->add_option("--device", c->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--load-format", c->load_format,
                  "auto: the safetensors checkpoint; dummy: random weights from config.json alone")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "dummy"}));
  cmd->add_option("--context-length", c->context_length, "Longest prompt + completion in tokens (default: the model's max_position_embeddings)");
  cmd->add_option("--max-running-requests", sc.max_running_requests, "Sequences decoded together at most")->capture_default_str();
  cmd->add_option("--max-queued-requests", c->max_queued_requests, "Sequences that may wait beyond the running ones; more get 503 with Retry-After")->capture_default_str();
  cmd->add_option("--max-total-tokens", sc.max_total_tokens, "KV cache pool size in tokens")->capture_default_str();
  cmd->add_option("--page-size", sc.page_size, "Tokens per KV cache page (1-64)")->capture_default_str();
  cmd->add_option("--chunked-prefill-size", sc.max_batch_tokens, "Tokens computed per step at most; longer prompts are prefilled in chunks")->capture_default_str();
  cmd->add_flag("!--disable-radix-cache", sc.enable_prefix_cache, "Do not reuse KV pages of shared prompt prefixes");
  cmd->add_option("--kv-cache-dtype", c->kv_cache_dtype, "KV cache element type: auto (bf16), bf16 or f32")->capture_default_str();
  cmd->add_option("--max-body-bytes", c->max_body_bytes, "Largest request body accepted; larger ones get 413")->capture_default_str();
  cmd->add_option("--cuda-graph-max-bs", c->cuda_graph_max_bs, "With --device cuda: decode batches of up to this many requests replay CUDA graphs captured at startup (0: off)")->capture_default_str();
  cmd->add_option("--ep", c->ep, "Expert parallelism: each MoE layer's routed experts spread over N ranks (CPU: threads; --device cuda: GPUs 0..N-1, NCCL); needs --dp-attention")->capture_default_str();
  cmd->add_flag("--dp-attention", c->dp_attention, "Data-parallel attention: each --ep rank serves its own requests (attention, dense layers, lm_head, a KV pool of --max-total-tokens) and joins every MoE layer");
  cmd->add_option("--max-dispatch-tokens-per-rank", c->max_dispatch_tokens_per_rank, "--ep: tokens a rank sends in one low_latency (decode) dispatch at most; sizes its buffers (0: --max-running-requests)")->capture_default_str();
  cmd->add_option("--http-threads", c->http_threads, "I/O threads serving every HTTP connection (no thread per connection); default min(4, hardware threads)")->capture_default_str();
  cmd->add_option("--shutdown-timeout", c->shutdown_timeout_s, "Seconds in-flight requests get to finish after SIGTERM/SIGINT before they are aborted")->capture_default_str();
  // PD disaggregation (docs/disagg.md "HTTP"; SGLang's names).
  cmd->add_option("--role", c->role, "colocated: prefill and decode here; prefill or decode: one side of a PD pair, behind `tandem router`")->capture_default_str()->check(CLI::IsMember({"colocated", "prefill", "decode"}));
  cmd->add_option("--disaggregation-bootstrap-port", c->pd.bootstrap_port, "--role prefill: port of the bootstrap endpoint decode servers connect to (0: any free; GET /pd_info tells)")->capture_default_str();
  cmd->add_option("--transfer-backend", c->pd.transfer.backend, "PD KV transfer: tcp, ucx or cuda_ipc")->capture_default_str()->check(CLI::IsMember({"tcp", "ucx", "cuda_ipc"}));
  cmd->add_option("--pd-advertise-host", c->pd.transfer.advertise_host, "PD: the address peers on other hosts use to reach this server (prefill: bootstrap endpoint, given to the router in /pd_info; decode: KV transfer endpoint); default --host, or 127.0.0.1 when --host is 0.0.0.0");
  cmd->add_option("--pd-token", c->pd.transfer.token, "Shared secret of a PD job's prefill and decode servers (bootstrap and transfer handshakes)")->envname("TANDEM_PD_TOKEN");
  cmd->add_option("--disaggregation-decode-reserve", c->engine.pd_decode_reserve_tokens, "--role decode: KV tokens reserved per request beyond its prompt (up to its max_tokens)")->capture_default_str();
  cmd->add_option("--bootstrap-timeout-ms", c->pd.bootstrap_timeout_ms, "PD: how long a room waits for its peer (connect, handshake, page reservation)")->capture_default_str();
  cmd->add_option("--transfer-timeout-ms", c->pd.transfer_timeout_ms, "PD: how long a KV chunk's transfer, or decode's wait between prefill messages, may take")->capture_default_str();
  // clang-format on
  cmd->callback([c, &exit_code] { exit_code = server::run_serve(*c); });
}

}  // namespace tandem::app
