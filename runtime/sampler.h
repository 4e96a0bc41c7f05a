// Sampler: picks one request's next token from its logits row. Order: penalties, then greedy
// argmax (temperature 0) or temperature, top-k, softmax, top-p, min-p and one draw from the
// request's own generator, so a request with a seed gives the same tokens in any batch.
// Logprobs are of the model's distribution (log-softmax of the raw logits), as vLLM reports.
// Not thread-safe: one per request, used by the engine thread.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "runtime/sampling_params.h"

namespace tandem::runtime {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;            // filled when params.logprobs
  std::vector<TokenLogprob> top;   // params.top_logprobs most likely, best first
};

class Sampler {
 public:
  // `seed` is used when params.seed is unset (the engine draws one per request).
  Sampler(const SamplingParams& params, std::span<const int32_t> prompt, uint64_t seed);

  // Chooses the next token from `logits` [vocab] and remembers it for the penalties.
  SampleResult sample(std::span<const float> logits);

 private:
  void apply_penalties(std::vector<float>& w) const;
  int32_t draw(const std::vector<float>& w);
  double uniform();  // [0, 1) from 53 random bits: the same on every platform

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_set<int32_t> seen_;               // prompt and output, for repetition
  std::unordered_map<int32_t, int32_t> counts_;    // output only, for frequency / presence
  std::vector<float> work_;
  std::vector<int32_t> order_;
  std::vector<double> probs_;
};

// log-softmax helpers shared by the sampler and tests.
float log_sum_exp(std::span<const float> logits);

}  // namespace tandem::runtime
