#include "server/serve.h"

#include <algorithm>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "core/log.h"
#include "model/loader.h"
#include "server/http_server.h"

namespace tandem::server {

namespace {

// SIGTERM/SIGINT reach a pipe (the self-pipe trick: write() is async-signal-safe), read by a
// thread that runs the graceful shutdown. Any thread may take the signal.
int g_signal_pipe[2] = {-1, -1};

void on_signal(int signo) {
  const char c = signo == SIGINT ? 'i' : 't';
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &c, 1);
}

class SignalScope {
 public:
  SignalScope() {
    TANDEM_CHECK(::pipe2(g_signal_pipe, O_CLOEXEC) == 0, "pipe2 failed");
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &sa, &old_term_);
    ::sigaction(SIGINT, &sa, &old_int_);
    // A client that vanishes mid-write must fail the write, not kill the server.
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ign, &old_pipe_);
  }
  ~SignalScope() {
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    ::close(g_signal_pipe[0]);
    ::close(g_signal_pipe[1]);
    g_signal_pipe[0] = g_signal_pipe[1] = -1;
  }
  // Blocks until a signal or wake(); returns the byte ('t', 'i' or 'q').
  char wait() {
    char c = 'q';
    while (::read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {}
    return c;
  }
  void wake() {
    const char c = 'q';
    [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &c, 1);
  }

 private:
  struct sigaction old_term_ {}, old_int_ {}, old_pipe_ {};
};

std::unique_ptr<tokenizer::Tokenizer> load_tokenizer(const ServerConfig& c) {
  if (c.skip_tokenizer_init) return nullptr;
  const std::filesystem::path dir = c.tokenizer_dir();
  TANDEM_CHECK(std::filesystem::exists(dir / "tokenizer.json"),
               "no tokenizer.json in {} (--tokenizer-path defaults to the model directory): "
               "pass --tokenizer-path DIR, e.g. the DeepSeek-V3 tokenizer files, or "
               "--skip-tokenizer-init to serve token ids only", dir.string());
  return std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load(dir));
}

DType kv_dtype_of(const std::string& name) { return name == "f32" ? DType::kF32 : DType::kBF16; }

// The port of a "host:port" endpoint.
int endpoint_port(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  return colon == std::string::npos ? 0 : std::atoi(endpoint.c_str() + colon + 1);
}

// --role prefill|decode: the PD worker over `engine`, listening (bootstrap, transfer) on the
// server's --host; nothing for colocated.
Status start_pd_worker(const ServerConfig& config, const Device& device, runtime::Engine& engine,
                       std::unique_ptr<disagg::PrefillWorker>* prefill,
                       std::unique_ptr<disagg::DecodeWorker>* decode) {
  if (config.role == "colocated") return {};
  if (config.pd.transfer.token.empty()) {
    TANDEM_LOG_WARN("--role {} without --pd-token: any process that reaches the bootstrap and "
                    "transfer ports can join this PD job", config.role);
  }
  disagg::PdWorkerConfig pd = config.pd;
  pd.bootstrap_host = config.host;
  pd.transfer.listen_host = config.host;
  pd.transfer.transfer_timeout_ms = pd.transfer_timeout_ms;
  pd.transfer.connect_timeout_ms = pd.bootstrap_timeout_ms;
  if (device.is_cuda()) pd.transfer.device_index = device.index;
  if (config.is_prefill()) return disagg::PrefillWorker::create(engine, pd, prefill);
  return disagg::DecodeWorker::create(engine, pd, decode);
}

// --ep N --dp-attention (docs/parallel.md "The DP engine"): N ranks, each loading only its
// experts from the checkpoint (or making them: --load-format dummy) on its own thread; every
// rank's runner follows `sleep_setting` (one /slow_down for all).
Status start_dp_engine(const ServerConfig& config, const Device& device, LoadFormat format,
                       const ModelConfig& model, const tokenizer::Tokenizer* tok,
                       const SleepyRunner& sleep_setting, std::unique_ptr<runtime::DpEngine>* dp) {
  runtime::DpEngineConfig c;
  c.ep = config.ep;
  c.backend = device.is_cuda() ? runtime::DpBackend::kNccl : runtime::DpBackend::kInProcess;
  c.engine = config.engine;
  c.max_dispatch_tokens_per_rank = config.max_dispatch_tokens_per_rank;
  c.context_length = config.context_length;
  if (Status s = c.validate(model); !s.ok()) return s;  // before reading the checkpoint
  if (device.is_cuda() && config.cuda_graph_max_bs > 0) {
    TANDEM_LOG_INFO("--ep: decode steps run eagerly (no CUDA graphs: a step's ranks agree on the "
                    "host before each forward)");
  }
  std::shared_ptr<Checkpoint> ckpt;
  if (format != LoadFormat::kDummy) {
    ckpt = std::make_shared<Checkpoint>(Checkpoint::open(config.model_path));
    ckpt->prefetch();
  }
  auto load = [ckpt, model](int, Device d, const ExpertFilter& keep) {
    return ckpt ? load_weights(model, *ckpt, d, keep) : load_dummy_weights(model, 0, d, keep);
  };
  auto wrap = [&sleep_setting](std::unique_ptr<runtime::ModelRunner> r)
      -> std::unique_ptr<runtime::ModelRunner> {
    return std::make_unique<SleepyRunner>(std::move(r), sleep_setting);
  };
  return runtime::DpEngine::create(model, c, load, tok, dp, wrap);
}

}  // namespace

ServerState::ServerState(const ServerConfig& c, const ModelConfig& m, runtime::EngineFront& e,
                         const tokenizer::Tokenizer* tok, SleepyRunner& r)
    : config(c),
      model(m),
      engine(e),
      tokenizer(tok),
      runner(r),
      parse_context{c.model_name(), tok, m.vocab_size, m.max_position_embeddings,
                    int64_t(c.engine.scheduler.num_pages()) * c.engine.scheduler.page_size},
      created_unix_s(int64_t(std::time(nullptr))),
      tracker(c.max_in_flight()) {}

int run_serve(const ServerConfig& config_in) {
  ServerConfig config = config_in;
  if (config.kv_cache_dtype != "auto") config.engine.kv_dtype = kv_dtype_of(config.kv_cache_dtype);
  if (Status s = config.validate(); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 2;
  }
  SignalScope signals;
  Device device;
  (void)parse_device(config.device, &device);

  std::unique_ptr<tokenizer::Tokenizer> tok = load_tokenizer(config);
  LoadFormat format = LoadFormat::kAuto;
  (void)load_format_from_name(config.load_format, &format);  // checked by the flag table
  // One engine loads the whole model here; the DP engine's ranks load their parts themselves.
  LoadedModel m;
  if (config.dp_attention) {
    m.config = ModelConfig::from_json_file(std::filesystem::path(config.model_path) / "config.json");
    TANDEM_LOG_INFO("model {}", m.config.summary());
  } else {
    m = load_model(config.model_path, device, format);
  }
  ModelConfig served = m.config;
  if (config.context_length > 0) {
    TANDEM_CHECK(config.context_length <= m.config.max_position_embeddings,
                 "--context-length {} exceeds the model's max_position_embeddings {}",
                 config.context_length, m.config.max_position_embeddings);
    served.max_position_embeddings = config.context_length;
  }
  if (tok && tok->vocab_size() > m.config.vocab_size) {
    TANDEM_LOG_WARN("the tokenizer has {} tokens, the model only {}: prompts with ids past the "
                    "model's vocabulary will be refused", tok->vocab_size(), m.config.vocab_size);
  }

  const runtime::SchedulerConfig& sc = config.engine.scheduler;
  std::unique_ptr<runtime::Engine> engine;       // one engine
  std::unique_ptr<runtime::EngineFront> front;  // over `engine`
  std::unique_ptr<runtime::DpEngine> dp;         // or --ep ranks
  std::unique_ptr<SleepyRunner> sleepy;
  SleepyRunner* runner = nullptr;
  if (config.dp_attention) {
    sleepy = std::make_unique<SleepyRunner>(nullptr);  // runs nothing: the ranks' shared setting
    runner = sleepy.get();
    if (Status s = start_dp_engine(config, device, format, m.config, tok.get(), *runner, &dp);
        !s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.message().c_str());
      return 1;
    }
  } else {
    sleepy = std::make_unique<SleepyRunner>(std::make_unique<runtime::DeepseekRunner>(
        *m.model, sc.num_pages(), sc.page_size, config.engine.kv_dtype, device,
        std::min<int32_t>(config.cuda_graph_max_bs, sc.max_running_requests)));
    runner = sleepy.get();
    engine = std::make_unique<runtime::Engine>(served, std::move(sleepy), tok.get(), config.engine);
    engine->start();
    front = runtime::EngineFront::of(*engine);
  }
  auto stop_engine = [&] {
    if (engine) engine->stop();
    if (dp) dp->stop();
  };

  ServerState state(config, served, dp ? static_cast<runtime::EngineFront&>(*dp) : *front, tok.get(),
                    *runner);
  state.dp = dp.get();
  // PD roles (docs/disagg.md "HTTP"): the worker beside the engine; destroyed before it.
  std::unique_ptr<disagg::PrefillWorker> prefill_worker;
  std::unique_ptr<disagg::DecodeWorker> decode_worker;
  if (Status s = engine ? start_pd_worker(config, device, *engine, &prefill_worker, &decode_worker)
                        : Status();
      !s.ok()) {
    std::fprintf(stderr, "error: --role %s: %s\n", config.role.c_str(), s.message().c_str());
    stop_engine();
    return 1;
  }
  state.prefill_worker = prefill_worker.get();
  state.decode_worker = decode_worker.get();
  if (prefill_worker) state.bootstrap_port = endpoint_port(prefill_worker->bootstrap_endpoint());
  HttpServer http(state);
  if (Status s = http.bind(); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    prefill_worker.reset();
    decode_worker.reset();
    stop_engine();
    return 1;
  }
  TANDEM_LOG_INFO("serving '{}' ({} layers, context {}, KV pool {} tokens in pages of {}{}) on {}",
                  config.model_name(), served.num_hidden_layers, served.max_position_embeddings,
                  int64_t(sc.num_pages()) * sc.page_size, sc.page_size,
                  dp ? fmt::format(" on each of {} EP ranks", config.ep) : std::string(),
                  device.name());
  if (prefill_worker) {
    TANDEM_LOG_INFO("--role prefill: bootstrap endpoint {} (transfer backend {})",
                    prefill_worker->bootstrap_endpoint(), config.pd.transfer.backend);
  } else if (decode_worker) {
    TANDEM_LOG_INFO("--role decode: transfer backend {}, decode reserve {} tokens",
                    config.pd.transfer.backend, config.engine.pd_decode_reserve_tokens);
  }
  std::printf("tandem serve: listening on http://%s:%d\n", config.host.c_str(), http.port());
  std::fflush(stdout);

  // The first signal starts the graceful shutdown; a second one aborts what is still running.
  std::thread drainer;
  std::thread stopper([&] {
    for (int received = 0;; ++received) {
      const char c = signals.wait();
      if (c == 'q') return;
      const char* name = c == 'i' ? "SIGINT" : "SIGTERM";
      if (received == 0) {
        TANDEM_LOG_INFO("{} received: shutting down (in-flight requests get {} s, "
                        "--shutdown-timeout; signal again to abort them now)",
                        name, config.shutdown_timeout_s);
        drainer = std::thread([&] { http.shutdown(config.shutdown_timeout_s); });
      } else {
        TANDEM_LOG_INFO("{} received again: aborting the requests in flight", name);
        http.hurry_shutdown();
      }
    }
  });
  http.run();
  signals.wake();
  stopper.join();
  if (drainer.joinable()) drainer.join();
  prefill_worker.reset();  // fails the rooms still in flight, before the engine goes
  decode_worker.reset();
  stop_engine();
  TANDEM_LOG_INFO("stopped");
  return 0;
}

}  // namespace tandem::server
