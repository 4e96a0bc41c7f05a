// Sampler: picks one request's next token from its logits row. Order: penalties, then greedy
// argmax (temperature 0) or temperature, top-k, softmax, top-p, min-p and one draw, exactly as
// ops::sample_tokens defines them (ops/cpu/sampling.h's sample_row does both). The draws are
// counter-based: token n of a request uses sampling_uniform(seed, n) (ops/sampling_rng.h), so a
// seeded request gives the same tokens in any batch, on the host or sampled on the GPU.
// Logprobs are of the model's distribution (log-softmax of the raw logits), as vLLM reports.
// Not thread-safe: one per request, used by the engine thread.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ops/cpu/sampling.h"
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

  // Device sampling (ops::apply_penalties, ops::sample_tokens, ops::top_logprobs) gives this
  // request's next token, logprob and top_logprobs what sample() would, unless it asks for
  // logprobs together with a penalty (logprobs are of the raw logits, which the device
  // penalizes in place).
  bool device_ok() const;
  ops::cpu::RowSampling row_params() const;
  bool has_penalties() const;
  // The penalty entries of the next token (ops::PenaltyRows' rules): the distinct tokens seen
  // (prompt and output when repetition_penalty != 1, else the output) with their output counts.
  // Kept up to date by accept() (no rebuild per step); valid until the next accept/sample.
  std::span<const int32_t> penalty_tokens() const { return pen_tokens_; }
  std::span<const int32_t> penalty_counts() const { return pen_counts_; }
  int32_t top_logprobs() const { return params_.top_logprobs; }
  float repetition_penalty() const { return params_.repetition_penalty; }
  float frequency_penalty() const { return params_.frequency_penalty; }
  float presence_penalty() const { return params_.presence_penalty; }
  uint64_t seed() const { return seed_; }
  uint64_t draws() const { return draws_; }  // tokens chosen so far: the next token's draw
  // Records a token chosen elsewhere (on the device, or by a PD prefill server) as sample()
  // would have: penalty state and the draw counter move on.
  void accept(int32_t token);

 private:
  void apply_penalties(std::vector<float>& w) const;
  int32_t& entry_count(int32_t token);  // the entry of `token`, added with count 0 if new

  SamplingParams params_;
  uint64_t seed_ = 0;
  uint64_t draws_ = 0;
  // The penalty entries (penalty_tokens/counts) and each token's place in them.
  std::vector<int32_t> pen_tokens_, pen_counts_;
  std::unordered_map<int32_t, int32_t> pen_index_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
  ops::cpu::SampleScratch scratch_;
};

// log-softmax helpers shared by the sampler and tests.
float log_sum_exp(std::span<const float> logits);

}  // namespace tandem::runtime
