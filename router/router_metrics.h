// RouterMetrics: the router's Prometheus counters (docs/router.md lists every name) and their
// text rendering, together with the upstreams' health and in-flight gauges.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "router/upstream_pool.h"

namespace tandem::router {

class RouterMetrics {
 public:
  static constexpr std::array<double, 14> kLatencyBucketsS = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                              2.5,  5,     10,   30,  60,   120, 300};
  void request_started() { requests_total_++, in_flight_++; }
  // `reason` empty: the request succeeded.
  void request_finished(const std::string& reason, double seconds);
  // A request refused before it was counted as started (bad JSON, auth, no upstream).
  void request_rejected(const std::string& reason);
  std::string render(const UpstreamPool& pool) const;

 private:
  std::atomic<int64_t> requests_total_{0};
  std::atomic<int64_t> in_flight_{0};
  mutable std::mutex mu_;
  std::map<std::string, int64_t> failed_;  // by reason
  std::array<int64_t, kLatencyBucketsS.size()> buckets_{};
  int64_t latency_count_ = 0;
  double latency_sum_s_ = 0.0;
};

}  // namespace tandem::router
