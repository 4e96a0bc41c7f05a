#include "server/metrics.h"

#include <fmt/format.h>

namespace tandem::server {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  std::lock_guard lk(mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help,
                       const std::string& labels) const {
  std::lock_guard lk(mu_);
  const std::string sep = labels.empty() ? "" : ",";
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bounds_[i], cumulative);
  }
  cumulative += counts_.back();
  out += fmt::format("{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, cumulative);
  out += fmt::format("{}_sum{{{}}} {}\n", name, labels, sum_);
  out += fmt::format("{}_count{{{}}} {}\n", name, labels, count_);
}

ServerMetrics::ServerMetrics()
    // SGLang's bucket bounds for these three histograms, in seconds.
    : time_to_first_token({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                           2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0}),
      inter_token_latency({0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035,
                           0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0}),
      e2e_request_latency({0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0,
                           60.0, 80.0, 100.0, 200.0, 400.0, 800.0}) {}

void ServerMetrics::count_finished(runtime::FinishReason reason) {
  finished_[size_t(reason)].fetch_add(1, std::memory_order_relaxed);
}

std::string prometheus_escape(const std::string& value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

namespace {

void metric(std::string& out, const char* type, const std::string& name, const std::string& help,
            const std::string& labels, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{{{}}} {}\n", name, help, name, type, name,
                     labels, value);
}

}  // namespace

std::string ServerMetrics::render(const std::string& model_name,
                                  const runtime::EngineStats& s) const {
  const std::string labels = fmt::format("model_name=\"{}\"", prometheus_escape(model_name));
  std::string out;
  metric(out, "gauge", "tandem:num_requests_running", "Sequences in the running batch.", labels,
         s.running);
  metric(out, "gauge", "tandem:num_requests_waiting", "Sequences waiting to be scheduled.",
         labels, s.waiting);
  metric(out, "gauge", "tandem:num_requests_awaiting_kv",
         "PD decode: requests holding reserved pages until their prompt KV arrives.", labels,
         s.awaiting_kv);
  metric(out, "gauge", "tandem:num_requests_transferring",
         "PD prefill: requests done computing whose KV is still being sent.", labels,
         s.transferring);
  metric(out, "gauge", "tandem:token_usage",
         "Fraction of the KV cache pool held by requests (0 to 1).", labels, s.kv_usage);
  metric(out, "gauge", "tandem:kv_pages_used", "KV cache pages held by requests.", labels,
         s.kv_pages_used);
  metric(out, "gauge", "tandem:kv_pages_total", "KV cache pages in the pool.", labels,
         s.kv_pages_total);
  metric(out, "gauge", "tandem:kv_pages_cached", "KV cache pages in the prefix cache.", labels,
         s.kv_pages_cached);
  metric(out, "counter", "tandem:prompt_tokens_total", "Prompt tokens of admitted sequences.",
         labels, double(s.prompt_tokens));
  metric(out, "counter", "tandem:generation_tokens_total", "Generated tokens.", labels,
         double(s.generated_tokens));
  metric(out, "counter", "tandem:cached_tokens_total",
         "Prompt tokens served from the prefix cache.", labels, double(s.prefix_hit_tokens));
  metric(out, "counter", "tandem:num_preemptions_total",
         "Sequences retracted to free KV pages.", labels, double(s.preemptions));
  metric(out, "counter", "tandem:engine_steps_total", "Forward steps the engine ran.", labels,
         double(s.steps));
  out += "# HELP tandem:request_success_total Requests finished, by finish reason.\n"
         "# TYPE tandem:request_success_total counter\n";
  for (const runtime::FinishReason r :
       {runtime::FinishReason::kStop, runtime::FinishReason::kLength,
        runtime::FinishReason::kAbort, runtime::FinishReason::kError}) {
    out += fmt::format("tandem:request_success_total{{{},finished_reason=\"{}\"}} {}\n", labels,
                       runtime::finish_reason_name(r), finished_[size_t(r)].load());
  }
  metric(out, "counter", "tandem:num_requests_rejected_total",
         "Requests refused with 503 (queue full or shutting down).", labels,
         double(rejected_overload.load()));
  out += "# HELP tandem:http_errors_total Requests answered with an HTTP error.\n"
         "# TYPE tandem:http_errors_total counter\n";
  out += fmt::format("tandem:http_errors_total{{{},class=\"4xx\"}} {}\n", labels,
                     http_errors_4xx.load());
  out += fmt::format("tandem:http_errors_total{{{},class=\"5xx\"}} {}\n", labels,
                     http_errors_5xx.load());
  time_to_first_token.render(out, "tandem:time_to_first_token_seconds",
                             "Time from the request's arrival to its first token.", labels);
  inter_token_latency.render(out, "tandem:inter_token_latency_seconds",
                             "Time between successive tokens of a completion.", labels);
  e2e_request_latency.render(out, "tandem:e2e_request_latency_seconds",
                             "Time from the request's arrival to its last token.", labels);
  return out;
}

}  // namespace tandem::server
