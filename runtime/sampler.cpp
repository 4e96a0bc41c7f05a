#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/sampling_rng.h"

namespace tandem::runtime {

float log_sum_exp(std::span<const float> logits) {
  float mx = -INFINITY;
  for (const float v : logits) mx = std::max(mx, v);
  double sum = 0.0;
  for (const float v : logits) sum += std::exp(double(v - mx));
  return mx + float(std::log(sum));
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt, uint64_t seed)
    : params_(params), seed_(params.seed.value_or(seed)) {
  if (params_.repetition_penalty != 1.0f) {
    for (const int32_t t : prompt) entry_count(t);
  }
}

bool Sampler::has_penalties() const {
  return params_.repetition_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
         params_.presence_penalty != 0.0f;
}

bool Sampler::device_ok() const {
  return !(has_penalties() && (params_.logprobs || params_.top_logprobs > 0));
}

int32_t& Sampler::entry_count(int32_t token) {
  const auto [it, added] = pen_index_.try_emplace(token, int32_t(pen_tokens_.size()));
  if (added) {
    pen_tokens_.push_back(token);
    pen_counts_.push_back(0);
  }
  return pen_counts_[size_t(it->second)];
}

ops::cpu::RowSampling Sampler::row_params() const {
  ops::cpu::RowSampling p;
  p.temperature = params_.temperature;
  p.top_k = std::max(params_.top_k, 0);
  p.top_p = params_.top_p;
  p.min_p = params_.min_p;
  return p;
}

void Sampler::accept(int32_t token) {
  // repetition: every seen token is an entry; frequency / presence: output tokens are counted.
  const bool counted = params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f;
  if (params_.repetition_penalty != 1.0f || counted) {
    int32_t& c = entry_count(token);
    if (counted) ++c;
  }
  ++draws_;
}

// The device's rule (ops::cpu::penalize_row), so host and device penalize alike.
void Sampler::apply_penalties(std::vector<float>& w) const {
  ops::cpu::penalize_row(w.data(), pen_tokens_.data(), pen_counts_.data(), int64_t(pen_tokens_.size()),
                         params_.repetition_penalty, params_.frequency_penalty, params_.presence_penalty);
}

SampleResult Sampler::sample(std::span<const float> logits) {
  SampleResult r;
  const auto vocab = int64_t(logits.size());
  // Every token takes one draw, greedy ones too, so the counter is the output length.
  const double u = ops::sampling_uniform(seed_, draws_);
  if (!has_penalties()) {  // the common case: no copy of the row (128k floats for V3)
    r.token = ops::cpu::sample_row(logits.data(), vocab, row_params(), u, scratch_);
  } else {
    work_.assign(logits.begin(), logits.end());
    apply_penalties(work_);
    r.token = ops::cpu::sample_row(work_.data(), vocab, row_params(), u, scratch_);
  }
  if (params_.logprobs || params_.top_logprobs > 0) {
    const float lse = log_sum_exp(logits);
    r.logprob = logits[size_t(r.token)] - lse;
    const int32_t k = std::min<int32_t>(params_.top_logprobs, int32_t(logits.size()));
    std::vector<int32_t> ids(static_cast<size_t>(k));
    std::vector<float> values(static_cast<size_t>(k));
    ops::cpu::row_top_logprobs(logits.data(), vocab, k, lse, ids.data(), values.data(), order_);
    for (int32_t i = 0; i < k; ++i) r.top.push_back({ids[size_t(i)], values[size_t(i)]});
  }
  accept(r.token);
  return r;
}

}  // namespace tandem::runtime
