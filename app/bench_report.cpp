#include "app/bench_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace tandem::app {

namespace {
// Linear interpolation between order statistics (numpy's default percentile).
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const double pos = p / 100.0 * double(sorted.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - double(lo));
}
}  // namespace

Distribution Distribution::of(std::vector<double> v) {
  Distribution d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  d.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  d.median = percentile(v, 50);
  d.p90 = percentile(v, 90);
  d.p99 = percentile(v, 99);
  d.max = v.back();
  return d;
}

nlohmann::json Distribution::to_json(double scale) const {
  return {{"mean", mean * scale}, {"median", median * scale}, {"p90", p90 * scale},
          {"p99", p99 * scale}, {"max", max * scale}};
}

BenchSummary BenchSummary::of(const std::vector<RequestTiming>& timings, double duration_s,
                              int num_gpus) {
  BenchSummary s;
  s.duration_s = duration_s;
  s.num_gpus = num_gpus;
  std::vector<double> ttft, itl, tpot, e2e;
  for (const RequestTiming& t : timings) {
    if (!t.ok) {
      ++s.failed;
      if (s.first_errors.size() < 5) s.first_errors.push_back(t.error);
      continue;
    }
    ++s.completed;
    s.input_tokens += t.prompt_tokens;
    s.output_tokens += t.completion_tokens;
    ttft.push_back(t.ttft_s);
    e2e.push_back(t.e2e_s);
    itl.insert(itl.end(), t.itl_s.begin(), t.itl_s.end());
    if (t.completion_tokens > 1) tpot.push_back((t.e2e_s - t.ttft_s) / double(t.completion_tokens - 1));
  }
  s.ttft = Distribution::of(ttft);
  s.itl = Distribution::of(itl);
  s.tpot = Distribution::of(tpot);
  s.e2e = Distribution::of(e2e);
  return s;
}

nlohmann::json BenchSummary::to_json() const {
  const double d = std::max(duration_s, 1e-9);
  return {{"completed", completed},
          {"failed", failed},
          {"duration_s", duration_s},
          {"num_gpus", num_gpus},
          {"total_input_tokens", input_tokens},
          {"total_output_tokens", output_tokens},
          {"request_throughput", double(completed) / d},
          {"input_throughput", double(input_tokens) / d},
          {"output_throughput", double(output_tokens) / d},
          {"input_throughput_per_gpu", double(input_tokens) / d / num_gpus},
          {"output_throughput_per_gpu", double(output_tokens) / d / num_gpus},
          {"ttft_ms", ttft.to_json(1e3)},
          {"itl_ms", itl.to_json(1e3)},
          {"tpot_ms", tpot.to_json(1e3)},
          {"e2e_latency_ms", e2e.to_json(1e3)},
          {"errors", first_errors}};
}

std::string BenchSummary::table() const {
  const double d = std::max(duration_s, 1e-9);
  std::string out = fmt::format(
      "============ tandem bench result ============\n"
      "{:<34}{:>12}\n{:<34}{:>12}\n{:<34}{:>12.2f}\n{:<34}{:>12}\n{:<34}{:>12}\n"
      "{:<34}{:>12.2f}\n{:<34}{:>12.1f}\n{:<34}{:>12.1f}\n{:<34}{:>12.1f}\n",
      "Successful requests:", completed, "Failed requests:", failed, "Duration (s):", duration_s,
      "Total input tokens:", input_tokens, "Total output tokens:", output_tokens,
      "Request throughput (req/s):", double(completed) / d,
      "Input throughput (tok/s):", double(input_tokens) / d,
      "Output throughput (tok/s):", double(output_tokens) / d,
      "Output throughput per GPU (tok/s):", double(output_tokens) / d / num_gpus);
  auto row = [&](const char* name, const Distribution& x) {
    out += fmt::format("{:<10} mean {:>9.2f}  median {:>9.2f}  p90 {:>9.2f}  p99 {:>9.2f}  (ms)\n",
                       name, x.mean * 1e3, x.median * 1e3, x.p90 * 1e3, x.p99 * 1e3);
  };
  row("TTFT", ttft);
  row("ITL", itl);
  row("TPOT", tpot);
  row("E2E", e2e);
  for (const std::string& e : first_errors) out += "error: " + e + "\n";
  return out;
}

}  // namespace tandem::app
