// Server metrics in the Prometheus text format (GET /metrics). Names follow SGLang's and
// vLLM's where the meaning is the same, with the prefix `tandem:`; docs/server.md lists them.
// Latencies are measured at the HTTP layer, from the request's arrival to each token event.
// Thread-safe: observe/add may be called from any thread; render reads a consistent-enough
// snapshot (each histogram under its own lock).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace tandem::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, ascending; +Inf is implied
  void observe(double value);
  // Appends NAME_bucket{le=...}, NAME_sum and NAME_count with `labels` ("" or `a="b"`).
  void render(std::string& out, const std::string& name, const std::string& help,
              const std::string& labels) const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last is +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  Histogram time_to_first_token;  // seconds
  Histogram inter_token_latency;  // seconds between a choice's successive tokens
  Histogram e2e_request_latency;  // seconds, arrival to the last token
  void count_finished(runtime::FinishReason reason);
  std::atomic<int64_t> rejected_overload{0};
  std::atomic<int64_t> http_errors_4xx{0};
  std::atomic<int64_t> http_errors_5xx{0};

  std::string render(const std::string& model_name, const runtime::EngineStats& engine) const;

 private:
  std::array<std::atomic<int64_t>, 5> finished_{};  // by FinishReason
};

// `value` escaped for a Prometheus label value (backslash, quote, newline).
std::string prometheus_escape(const std::string& value);

}  // namespace tandem::server
