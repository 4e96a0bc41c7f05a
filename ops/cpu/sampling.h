// CPU reference of ops::sample_tokens, and its row sampler: runtime::Sampler draws its tokens
// with sample_row too, so host sampling and the device op follow one definition (ops/ops.h).
// Thread-safe for distinct scratch buffers.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/ops.h"

namespace tandem::ops::cpu {

struct RowSampling {
  float temperature = 1.0f;  // 0: greedy
  int32_t top_k = 0;         // 0 (or >= vocab): off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
};

// Reused buffers of sample_row (a V3 row is 129,280 values).
struct SampleScratch {
  std::vector<float> x;
  std::vector<int32_t> order;
  std::vector<double> p;
};

// The token chosen from one row of logits [vocab] (penalties already applied) for the uniform
// draw u in [0, 1), as ops::sample_tokens defines it.
int32_t sample_row(const float* logits, int64_t vocab, const RowSampling& params, double u,
                   SampleScratch& scratch);
// log(sum(exp(logits))) of one row, accumulated in double.
float row_log_sum_exp(const float* logits, int64_t vocab);

void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs);

// ops::top_logprobs on one row with its lse (row_log_sum_exp): ids and values [k].
void row_top_logprobs(const float* logits, int64_t vocab, int64_t k, float lse, int32_t* ids,
                      float* values, std::vector<int32_t>& order);
void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values);

// ops::apply_penalties's rule on one row: n distinct tokens with their output counts.
void penalize_row(float* row, const int32_t* tokens, const int32_t* counts, int64_t n,
                  float repetition, float frequency, float presence);
void apply_penalties(Tensor& logits, const PenaltyRows& rows);

}  // namespace tandem::ops::cpu
