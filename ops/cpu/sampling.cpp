// CPU reference of ops::sample_tokens (definition in ops/ops.h): written for clarity, with a
// partial selection for top-k and a sort only where the nucleus needs the order.
#include "ops/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/thread_pool.h"
#include "ops/sampling_rng.h"

namespace tandem::ops::cpu {

float row_log_sum_exp(const float* logits, int64_t vocab) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - mx));
  return mx + float(std::log(sum));
}

int32_t sample_row(const float* logits, int64_t vocab, const RowSampling& params, double u,
                   SampleScratch& s) {
  const int32_t n_vocab = int32_t(vocab);
  if (params.temperature == 0.0f) {  // greedy: the first maximum
    return int32_t(std::max_element(logits, logits + vocab) - logits);
  }
  // x = logits / T, rounded to f32 once (the device computes the same product).
  const float inv_t = 1.0f / params.temperature;
  std::vector<float>& x = s.x;
  x.resize(size_t(vocab));
  for (int64_t i = 0; i < vocab; ++i) x[size_t(i)] = logits[i] * inv_t;
  const float mx = *std::max_element(x.begin(), x.end());
  // Candidates in the order "larger x first, lower id on ties".
  auto before = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::vector<int32_t>& order = s.order;
  int32_t n = n_vocab;
  const bool top_k = params.top_k > 0 && params.top_k < n_vocab;
  const bool nucleus = params.top_p < 1.0f;
  if (top_k || nucleus) {
    order.resize(size_t(vocab));
    std::iota(order.begin(), order.end(), 0);
  }
  if (top_k) {
    n = params.top_k;
    std::nth_element(order.begin(), order.begin() + n, order.end(), before);
  }
  // p[i]: the unnormalized probability of token i, 0 when it is not a candidate.
  std::vector<double>& p = s.p;
  if (top_k) {
    p.assign(size_t(vocab), 0.0);
    for (int32_t j = 0; j < n; ++j) p[order[j]] = std::exp(double(x[order[j]] - mx));
  } else {
    p.resize(size_t(vocab));
    for (int64_t i = 0; i < vocab; ++i) p[size_t(i)] = std::exp(double(x[size_t(i)] - mx));
  }
  if (nucleus) {  // the shortest prefix of the sorted candidates holding top_p of their mass
    std::sort(order.begin(), order.begin() + n, before);
    double total = 0.0;
    for (int32_t j = 0; j < n; ++j) total += p[order[j]];
    const double target = double(params.top_p) * total;
    double cum = 0.0;
    int32_t keep = 0;
    while (keep < n && cum < target) cum += p[order[keep++]];
    for (int32_t j = std::max(keep, 1); j < n; ++j) p[order[j]] = 0.0;
  }
  // min-p relative to the most likely token, whose weight is exp(0) = 1.
  if (params.min_p > 0.0f) {
    for (double& v : p) if (v < double(params.min_p)) v = 0.0;
  }
  double total = 0.0;
  for (const double v : p) total += v;
  // The draw walks the kept tokens in id order: the first whose running sum exceeds u * total.
  const double target = u * total;
  double cum = 0.0;
  int32_t last = 0;
  for (int32_t i = 0; i < n_vocab; ++i) {
    if (p[size_t(i)] == 0.0) continue;
    last = i;
    cum += p[size_t(i)];
    if (target < cum) return i;
  }
  return last;  // rounding left the target just past the end
}

void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  for (int64_t r = 0; r < n; ++r) {  // values are checked here; the device trusts its caller
    const float t = rows.temperature.data<float>()[r], tp = rows.top_p.data<float>()[r],
                mp = rows.min_p.data<float>()[r];
    const int32_t k = rows.top_k.data<int32_t>()[r];
    TANDEM_CHECK(std::isfinite(t) && t >= 0.0f, "sample_tokens: temperature[{}] = {} must be >= 0", r, t);
    TANDEM_CHECK(k >= 0, "sample_tokens: top_k[{}] = {} must be >= 0 (0: off)", r, k);
    TANDEM_CHECK(tp > 0.0f && tp <= 1.0f, "sample_tokens: top_p[{}] = {} must be in (0, 1]", r, tp);
    TANDEM_CHECK(mp >= 0.0f && mp <= 1.0f, "sample_tokens: min_p[{}] = {} must be in [0, 1]", r, mp);
  }
  parallel_for(n, 1, [&](int64_t begin, int64_t end) {
    SampleScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      const float* row = logits.data<float>() + r * logits.stride(0);
      RowSampling p;
      p.temperature = rows.temperature.data<float>()[r];
      p.top_k = rows.top_k.data<int32_t>()[r];
      p.top_p = rows.top_p.data<float>()[r];
      p.min_p = rows.min_p.data<float>()[r];
      const double u = sampling_uniform(uint64_t(rows.seed.data<int64_t>()[r]),
                                        uint64_t(rows.draw.data<int64_t>()[r]));
      const int32_t token = sample_row(row, vocab, p, u, scratch);
      tokens.data<int32_t>()[r] = token;
      logprobs.data<float>()[r] = row[token] - row_log_sum_exp(row, vocab);
    }
  });
}

void row_top_logprobs(const float* logits, int64_t vocab, int64_t k, float lse, int32_t* ids,
                      float* values, std::vector<int32_t>& order) {
  order.resize(size_t(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) {
    ids[i] = order[size_t(i)];
    values[i] = logits[order[size_t(i)]] - lse;
  }
}

void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values) {
  const int64_t n = logits.size(0), vocab = logits.size(1), k = ids.size(1);
  parallel_for(n, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order;
    for (int64_t r = begin; r < end; ++r) {
      const float* row = logits.data<float>() + r * logits.stride(0);
      row_top_logprobs(row, vocab, k, row_log_sum_exp(row, vocab), ids.data<int32_t>() + r * k,
                       values.data<float>() + r * k, order);
    }
  });
}

void penalize_row(float* row, const int32_t* tokens, const int32_t* counts, int64_t n,
                  float repetition, float frequency, float presence) {
  for (int64_t e = 0; e < n; ++e) {
    float& x = row[tokens[e]];
    if (repetition != 1.0f) x = x > 0.0f ? x / repetition : x * repetition;
    if (counts[e] > 0) x -= std::fma(frequency, float(counts[e]), presence);
  }
}

void apply_penalties(Tensor& logits, const PenaltyRows& rows) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const int32_t* off = rows.offsets.data<int32_t>();
  const int32_t* tok = rows.tokens.data<int32_t>();
  const int32_t* cnt = rows.counts.data<int32_t>();
  TANDEM_CHECK(off[0] == 0 && off[n] == rows.tokens.size(0),
               "apply_penalties: offsets must run from 0 to the {} entries", rows.tokens.size(0));
  for (int64_t r = 0; r < n; ++r) {
    TANDEM_CHECK(off[r] <= off[r + 1], "apply_penalties: offsets decrease at row {}", r);
    TANDEM_CHECK(rows.repetition.data<float>()[r] > 0.0f, "apply_penalties: repetition[{}] = {} must be > 0",
                 r, rows.repetition.data<float>()[r]);
    for (int32_t e = off[r]; e < off[r + 1]; ++e) {
      TANDEM_CHECK(tok[e] >= 0 && tok[e] < vocab, "apply_penalties: token {} at entry {} outside [0, {})",
                   tok[e], e, vocab);
      TANDEM_CHECK(cnt[e] >= 0, "apply_penalties: count {} at entry {} is negative", cnt[e], e);
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    penalize_row(logits.data<float>() + r * logits.stride(0), tok + off[r], cnt + off[r],
                 off[r + 1] - off[r], rows.repetition.data<float>()[r], rows.frequency.data<float>()[r],
                 rows.presence.data<float>()[r]);
  }
}

}  // namespace tandem::ops::cpu
