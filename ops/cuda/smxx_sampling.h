// Kernel parameters of ops::sample_tokens on CUDA (smxx_sampling.cu), filled by its host
// launcher (smxx_sampling.cpp) after ops.cpp's validation. Pointers are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/launch.h"

namespace tandem::ops::cuda {

struct SampleTokensParams {
  const float* logits;  // [rows, vocab], rows `stride` floats apart
  int64_t rows, stride;
  int32_t vocab;
  const float* temperature;  // [rows]
  const int32_t* top_k;      // [rows]
  const float* top_p;        // [rows]
  const float* min_p;        // [rows]
  const int64_t* seed;       // [rows]
  const int64_t* draw;       // [rows]
  int32_t* tokens;           // [rows]
  float* logprobs;           // [rows]
};
void launch_sample_tokens(const SampleTokensParams& p, cudaStream_t stream);

struct TopLogprobsParams {
  const float* logits;  // [rows, vocab], rows `stride` floats apart
  int64_t rows, stride;
  int32_t vocab, k;     // 1 <= k <= 20
  int32_t* ids;         // [rows, k]
  float* values;        // [rows, k]
};
void launch_top_logprobs(const TopLogprobsParams& p, cudaStream_t stream);

struct ApplyPenaltiesParams {
  float* logits;  // [rows, vocab], rows `stride` floats apart; changed in place
  int64_t rows, stride;
  int32_t vocab;
  const int32_t* offsets;  // [rows + 1]
  const int32_t* tokens;   // [entries]
  const int32_t* counts;   // [entries]
  const float* repetition; // [rows]
  const float* frequency;  // [rows]
  const float* presence;   // [rows]
  KernelErrorWord* error;
};
void launch_apply_penalties(const ApplyPenaltiesParams& p, cudaStream_t stream);

}  // namespace tandem::ops::cuda
