#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tandem::runtime {

float log_sum_exp(std::span<const float> logits) {
  float mx = -INFINITY;
  for (const float v : logits) mx = std::max(mx, v);
  double sum = 0.0;
  for (const float v : logits) sum += std::exp(double(v - mx));
  return mx + float(std::log(sum));
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt, uint64_t seed)
    : params_(params), rng_(params.seed.value_or(seed)) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(prompt.begin(), prompt.end());
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

void Sampler::apply_penalties(std::vector<float>& w) const {
  if (params_.repetition_penalty != 1.0f) {
    const float r = params_.repetition_penalty;
    for (const int32_t t : seen_) w[size_t(t)] = w[size_t(t)] > 0 ? w[size_t(t)] / r : w[size_t(t)] * r;
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    for (const auto& [t, c] : counts_) {
      w[size_t(t)] -= params_.frequency_penalty * float(c) + params_.presence_penalty;
    }
  }
}

// Samples from softmax(w) restricted by top-k, top-p and min-p (w already divided by T).
int32_t Sampler::draw(const std::vector<float>& w) {
  const int32_t vocab = int32_t(w.size());
  order_.resize(size_t(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  int32_t n = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    n = params_.top_k;
    std::nth_element(order_.begin(), order_.begin() + n, order_.end(), by_logit);
  }
  // Sorting is needed only for the nucleus cut; otherwise index order is as good.
  if (params_.top_p < 1.0f) std::sort(order_.begin(), order_.begin() + n, by_logit);
  float mx = -INFINITY;
  for (int32_t i = 0; i < n; ++i) mx = std::max(mx, w[order_[i]]);
  std::vector<double>& p = probs_;
  p.resize(size_t(n));
  double sum = 0.0;
  for (int32_t i = 0; i < n; ++i) sum += p[i] = std::exp(double(w[order_[i]] - mx));
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    int32_t keep = 0;
    while (keep < n && cum < params_.top_p * sum) cum += p[keep++];
    n = std::max(keep, 1);
  }
  sum = 0.0;
  // min-p relative to the most likely token, whose weight is exp(0) = 1.
  for (int32_t i = 0; i < n; ++i) {
    if (p[i] < params_.min_p) p[i] = 0.0;
    sum += p[i];
  }
  double u = uniform() * sum;
  int32_t last = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (p[i] == 0.0) continue;
    last = i;
    if (u < p[i]) return order_[i];
    u -= p[i];
  }
  return order_[last];  // rounding left u just past the end
}

SampleResult Sampler::sample(std::span<const float> logits) {
  SampleResult r;
  const bool penalties = params_.repetition_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                         params_.presence_penalty != 0.0f;
  if (params_.greedy() && !penalties) {
    // The common benchmark case: no copy of the row (128k floats for DeepSeek-V3).
    r.token = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else if (params_.greedy()) {
    work_.assign(logits.begin(), logits.end());
    apply_penalties(work_);
    r.token = int32_t(std::max_element(work_.begin(), work_.end()) - work_.begin());
  } else {
    work_.assign(logits.begin(), logits.end());
    apply_penalties(work_);
    const float inv_t = 1.0f / params_.temperature;
    for (float& v : work_) v *= inv_t;
    r.token = draw(work_);
  }
  if (params_.logprobs || params_.top_logprobs > 0) {
    const float lse = log_sum_exp(logits);
    r.logprob = logits[size_t(r.token)] - lse;
    const int32_t k = std::min<int32_t>(params_.top_logprobs, int32_t(logits.size()));
    order_.resize(logits.size());
    std::iota(order_.begin(), order_.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
    for (int32_t i = 0; i < k; ++i) r.top.push_back({order_[i], logits[size_t(order_[i])] - lse});
  }
  if (params_.repetition_penalty != 1.0f) seen_.insert(r.token);
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) ++counts_[r.token];
  return r;
}

}  // namespace tandem::runtime
