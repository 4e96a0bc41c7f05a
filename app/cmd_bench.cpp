// tandem bench: a load generator for any OpenAI-compatible server (like the reference's
// bench_serving and bench_one_batch_server). Serving mode sends a random dataset at a Poisson
// rate under a concurrency cap and reports throughput and latency percentiles; one-batch mode
// sends N requests at once and reports prefill and decode throughput separately.
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "app/bench_client.h"
#include "app/bench_report.h"
#include "app/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "tokenizer/tokenizer.h"

namespace tandem::app {

namespace {

struct BenchArgs {
  std::string base_url = "http://127.0.0.1:30000";
  std::string mode = "serving";
  std::string tokenizer;
  std::string model;
  std::string api_key;
  int64_t input_len = 1024;
  int64_t output_len = 128;
  double range_ratio = 1.0;
  int num_prompts = 100;
  int max_concurrency = 0;
  double request_rate = std::numeric_limits<double>::infinity();
  std::string batch_sizes = "1,8,32";
  uint64_t seed = 1;
  int num_gpus = 1;
  std::string output_file;
};

struct Prompt {
  std::string text;
  int64_t output_len;
};

// Random token ids decoded to text, as the reference's "random" dataset does; the server's
// re-encoding may change the count slightly, and the report uses the server's usage counts.
std::vector<Prompt> random_dataset(const BenchArgs& a, const tokenizer::Tokenizer& tok, int n) {
  std::mt19937_64 rng(a.seed);
  auto len_in = [&](int64_t len) {
    const int64_t lo = std::max<int64_t>(1, int64_t(std::floor(double(len) * a.range_ratio)));
    return std::uniform_int_distribution<int64_t>(lo, len)(rng);
  };
  // Ordinary vocabulary ids only (DeepSeek's specials are 0-2 and >= 128000).
  const int32_t hi = std::min<int32_t>(tok.vocab_size(), 100000);
  std::uniform_int_distribution<int32_t> id(1000, std::max<int32_t>(1001, hi - 1));
  std::vector<Prompt> prompts;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> ids(size_t(len_in(a.input_len)));
    for (int32_t& t : ids) t = id(rng);
    prompts.push_back({tok.decode(ids), len_in(a.output_len)});
  }
  return prompts;
}

std::vector<int> parse_int_list(const std::string& s, const char* flag) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoi(item));
    } catch (const std::exception&) {
      TANDEM_FAIL("{}: '{}' is not an integer", flag, item);
    }
    TANDEM_CHECK(out.back() >= 1, "{}: batch sizes must be positive, got {}", flag, out.back());
  }
  TANDEM_CHECK(!out.empty(), "{}: empty list", flag);
  return out;
}

// Sends `prompts` with Poisson arrivals at `rate` (inf: all at once) and at most
// `concurrency` in flight (0: no cap). One client thread per request in flight.
std::vector<RequestTiming> send_all(const BenchTarget& target, const std::vector<Prompt>& prompts,
                                    double rate, int concurrency, uint64_t seed, bool progress_bar) {
  std::vector<RequestTiming> timings(prompts.size());
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::vector<std::thread> threads;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(std::isinf(rate) ? 1.0 : rate);
  ProgressBar progress("bench", prompts.size(), "req");
  const double start = now_seconds();
  double next_send = start;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!std::isinf(rate)) {
      next_send += gap(rng);
      const double wait = next_send - now_seconds();
      if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return concurrency <= 0 || in_flight < concurrency; });
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      timings[i] = run_streaming_completion(target, prompts[i].text, prompts[i].output_len, start);
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
      if (progress_bar) progress.advance(1);
      cv.notify_all();
    });
  }
  for (auto& t : threads) t.join();
  progress.finish();
  return timings;
}

void write_result(const std::string& path, const nlohmann::json& result) {
  if (path.empty()) return;
  std::ofstream f(path);
  TANDEM_CHECK(f.good(), "--output-file: cannot write {}", path);
  f << result.dump(2) << "\n";
  TANDEM_LOG_INFO("wrote {}", path);
}

int run_bench(const BenchArgs& a) {
  BenchTarget target = parse_base_url(a.base_url);
  target.api_key = a.api_key;
  target.model = a.model;
  TANDEM_CHECK(!a.tokenizer.empty(), "--tokenizer is required (a directory with tokenizer.json, "
                                     "usually the model directory)");
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(a.tokenizer);
  nlohmann::json config{{"base_url", a.base_url}, {"mode", a.mode}, {"input_len", a.input_len},
                        {"output_len", a.output_len}, {"range_ratio", a.range_ratio},
                        {"seed", a.seed}, {"num_gpus", a.num_gpus}};
  if (a.mode == "serving") {
    const std::vector<Prompt> prompts = random_dataset(a, tok, a.num_prompts);
    const double start = now_seconds();
    const auto timings = send_all(target, prompts, a.request_rate, a.max_concurrency, a.seed, true);
    const BenchSummary s = BenchSummary::of(timings, now_seconds() - start, a.num_gpus);
    std::printf("%s", s.table().c_str());
    config["num_prompts"] = a.num_prompts;
    config["max_concurrency"] = a.max_concurrency;
    config["request_rate"] = std::isinf(a.request_rate) ? -1.0 : a.request_rate;
    nlohmann::json requests = nlohmann::json::array();  // per request, for latency CDFs
    for (const RequestTiming& t : timings) {
      requests.push_back({{"ok", t.ok}, {"start_s", t.start_s}, {"ttft_s", t.ttft_s},
                          {"e2e_s", t.e2e_s}, {"prompt_tokens", t.prompt_tokens},
                          {"completion_tokens", t.completion_tokens}});
    }
    write_result(a.output_file, {{"config", config}, {"result", s.to_json()}, {"requests", requests}});
    return s.failed == 0 ? 0 : 1;
  }
  // one-batch: per batch size, all requests at once; prefill throughput from the last first
  // token, decode throughput over the time after it.
  nlohmann::json rows = nlohmann::json::array();
  std::printf("%-8s %14s %14s %12s %12s\n", "batch", "prefill tok/s", "decode tok/s", "TTFT ms",
              "latency s");
  int failures = 0;
  for (int batch : parse_int_list(a.batch_sizes, "--batch-size")) {
    BenchArgs fixed = a;
    fixed.range_ratio = 1.0;
    const std::vector<Prompt> prompts = random_dataset(fixed, tok, batch);
    const auto timings = send_all(target, prompts, std::numeric_limits<double>::infinity(), 0, a.seed, false);
    double max_ttft = 0, max_e2e = 0;
    int64_t in = 0, decode_tokens = 0;
    for (const RequestTiming& t : timings) {
      if (!t.ok) {
        ++failures;
        TANDEM_LOG_ERROR("request failed: {}", t.error);
        continue;
      }
      max_ttft = std::max(max_ttft, t.ttft_s);
      max_e2e = std::max(max_e2e, t.e2e_s);
      in += t.prompt_tokens;
      decode_tokens += t.completion_tokens - 1;
    }
    const double prefill = max_ttft > 0 ? double(in) / max_ttft : 0.0;
    const double decode = max_e2e > max_ttft ? double(decode_tokens) / (max_e2e - max_ttft) : 0.0;
    std::printf("%-8d %14.1f %14.1f %12.1f %12.2f\n", batch, prefill, decode, max_ttft * 1e3, max_e2e);
    rows.push_back({{"batch_size", batch}, {"prefill_throughput", prefill},
                    {"decode_throughput", decode},
                    {"decode_throughput_per_gpu", decode / a.num_gpus},
                    {"ttft_ms", max_ttft * 1e3}, {"latency_s", max_e2e},
                    {"summary", BenchSummary::of(timings, max_e2e, a.num_gpus).to_json()}});
  }
  write_result(a.output_file, {{"config", config}, {"results", rows}});
  return failures == 0 ? 0 : 1;
}

}  // namespace

void add_bench_command(CLI::App& app, int& exit_code) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Load-test an OpenAI-compatible server (serving or one-batch mode)");
  cmd->add_option("--base-url", a->base_url, "Server address")->capture_default_str();
  cmd->add_option("--mode", a->mode, "serving (random dataset, Poisson arrivals) or one-batch")
      ->capture_default_str()
      ->check(CLI::IsMember({"serving", "one-batch"}));
  cmd->add_option("--tokenizer", a->tokenizer, "Directory with tokenizer.json (the model's)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--model", a->model, "Model name sent in requests (default: the server's)");
  cmd->add_option("--api-key", a->api_key, "Bearer token for the server");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens per request")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  cmd->add_option("--output-len", a->output_len, "Generated tokens per request")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  cmd->add_option("--range-ratio", a->range_ratio,
                  "Lengths are uniform in [len * ratio, len] (serving mode)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--num-prompts", a->num_prompts, "Requests to send (serving mode)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--max-concurrency", a->max_concurrency, "Requests in flight at most (0: no cap)")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--request-rate", a->request_rate, "Requests per second, Poisson (inf: all at once)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", a->batch_sizes, "One-batch mode: comma-separated batch sizes")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Dataset and arrival seed")->capture_default_str();
  cmd->add_option("--num-gpus", a->num_gpus, "GPUs behind the server, for per-GPU throughput")
      ->capture_default_str()->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--output-file", a->output_file, "Write the result as JSON here");
  cmd->callback([a, &exit_code] { exit_code = run_bench(*a); });
}

}  // namespace tandem::app
