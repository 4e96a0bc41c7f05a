// Summary statistics of a `tandem bench` run and their JSON / table forms.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "app/bench_client.h"

namespace tandem::app {

struct Distribution {
  double mean = 0, median = 0, p90 = 0, p99 = 0, max = 0;
  static Distribution of(std::vector<double> values);  // empty -> zeros
  nlohmann::json to_json(double scale) const;           // scale: 1e3 for milliseconds
};

struct BenchSummary {
  int64_t completed = 0, failed = 0;
  double duration_s = 0;
  int64_t input_tokens = 0, output_tokens = 0;
  int num_gpus = 1;
  Distribution ttft, itl, tpot, e2e;  // seconds
  std::vector<std::string> first_errors;

  static BenchSummary of(const std::vector<RequestTiming>& timings, double duration_s,
                         int num_gpus);
  nlohmann::json to_json() const;
  std::string table() const;  // the human-readable block printed at the end
};

}  // namespace tandem::app
