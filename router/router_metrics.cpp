#include "router/router_metrics.h"

#include <fmt/format.h>

namespace tandem::router {

void RouterMetrics::request_finished(const std::string& reason, double seconds) {
  in_flight_--;
  std::lock_guard lock(mu_);
  if (!reason.empty()) failed_[reason]++;
  for (size_t i = 0; i < kLatencyBucketsS.size(); ++i) {
    if (seconds <= kLatencyBucketsS[i]) buckets_[i]++;
  }
  latency_count_++;
  latency_sum_s_ += seconds;
}

void RouterMetrics::request_rejected(const std::string& reason) {
  requests_total_++;
  std::lock_guard lock(mu_);
  failed_[reason]++;
}

std::string RouterMetrics::render(const UpstreamPool& pool) const {
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  line("# HELP tandem_router_requests_total Generation requests received by the router.");
  line("# TYPE tandem_router_requests_total counter");
  line(fmt::format("tandem_router_requests_total {}", requests_total_.load()));
  line("# HELP tandem_router_requests_failed_total Generation requests that failed, by reason.");
  line("# TYPE tandem_router_requests_failed_total counter");
  {
    std::lock_guard lock(mu_);
    for (const auto& [reason, n] : failed_) {
      line(fmt::format("tandem_router_requests_failed_total{{reason=\"{}\"}} {}", reason, n));
    }
    line("# HELP tandem_router_requests_in_flight Generation requests being forwarded now.");
    line("# TYPE tandem_router_requests_in_flight gauge");
    line(fmt::format("tandem_router_requests_in_flight {}", in_flight_.load()));
    line("# HELP tandem_router_request_duration_seconds Time from request to its last byte.");
    line("# TYPE tandem_router_request_duration_seconds histogram");
    for (size_t i = 0; i < kLatencyBucketsS.size(); ++i) {
      line(fmt::format("tandem_router_request_duration_seconds_bucket{{le=\"{}\"}} {}", kLatencyBucketsS[i],
                       buckets_[i]));
    }
    line(fmt::format("tandem_router_request_duration_seconds_bucket{{le=\"+Inf\"}} {}", latency_count_));
    line(fmt::format("tandem_router_request_duration_seconds_sum {}", latency_sum_s_));
    line(fmt::format("tandem_router_request_duration_seconds_count {}", latency_count_));
  }
  line("# HELP tandem_router_upstream_healthy 1 when the upstream passed its last health check.");
  line("# TYPE tandem_router_upstream_healthy gauge");
  for (const auto& u : pool.all()) {
    line(fmt::format("tandem_router_upstream_healthy{{role=\"{}\",url=\"{}\"}} {}", role_name(u->role),
                     u->url.url, u->healthy ? 1 : 0));
  }
  line("# HELP tandem_router_upstream_in_flight Requests through this router at the upstream now.");
  line("# TYPE tandem_router_upstream_in_flight gauge");
  for (const auto& u : pool.all()) {
    line(fmt::format("tandem_router_upstream_in_flight{{role=\"{}\",url=\"{}\"}} {}", role_name(u->role),
                     u->url.url, u->in_flight.load()));
  }
  line("# HELP tandem_router_upstream_requests_total Requests the router sent to the upstream.");
  line("# TYPE tandem_router_upstream_requests_total counter");
  for (const auto& u : pool.all()) {
    line(fmt::format("tandem_router_upstream_requests_total{{role=\"{}\",url=\"{}\"}} {}", role_name(u->role),
                     u->url.url, u->requests_total.load()));
  }
  return out;
}

}  // namespace tandem::router
