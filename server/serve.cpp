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

}  // namespace

ServerState::ServerState(const ServerConfig& c, const ModelConfig& m, runtime::Engine& e,
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
  LoadedModel m = load_model(config.model_path, device, format);
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
  auto sleepy = std::make_unique<SleepyRunner>(std::make_unique<runtime::DeepseekRunner>(
      *m.model, sc.num_pages(), sc.page_size, config.engine.kv_dtype, device,
      std::min<int32_t>(config.cuda_graph_max_bs, sc.max_running_requests)));
  SleepyRunner& runner = *sleepy;
  runtime::Engine engine(served, std::move(sleepy), tok.get(), config.engine);
  engine.start();

  ServerState state(config, served, engine, tok.get(), runner);
  // PD roles (docs/disagg.md "HTTP"): the worker beside the engine; destroyed before it.
  std::unique_ptr<disagg::PrefillWorker> prefill_worker;
  std::unique_ptr<disagg::DecodeWorker> decode_worker;
  if (Status s = start_pd_worker(config, device, engine, &prefill_worker, &decode_worker);
      !s.ok()) {
    std::fprintf(stderr, "error: --role %s: %s\n", config.role.c_str(), s.message().c_str());
    engine.stop();
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
    engine.stop();
    return 1;
  }
  TANDEM_LOG_INFO("serving '{}' ({} layers, context {}, KV pool {} tokens in pages of {}) on {}",
                  config.model_name(), served.num_hidden_layers, served.max_position_embeddings,
                  int64_t(sc.num_pages()) * sc.page_size, sc.page_size, device.name());
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
  engine.stop();
  TANDEM_LOG_INFO("stopped");
  return 0;
}

}  // namespace tandem::server
