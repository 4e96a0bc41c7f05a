// Shared pieces of the MLA attention kernels: an online softmax over key chunks
// (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"), one block of
// kAttnThreads threads per query row (and head), the query in shared memory.
#pragma once

#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnChunk = 64;        // keys scored per round
constexpr int kAttnMaxVPerThread = 8; // value width up to 8 * kAttnThreads = 1024

// Running state of one query row: out_acc[i] holds value dims threadIdx.x + i * kAttnThreads.
struct OnlineSoftmax {
  float m = -INFINITY;  // running max of the scaled scores
  float l = 0.0f;       // running sum of exp(score - m)
  float acc[kAttnMaxVPerThread] = {};
};

// One round over `n` keys whose scaled scores are in p[0..n) (shared memory). Rescales the
// state, turns p into exp(score - m_new) and adds sum_j p[j] * value(j)[d].
// value_at(j, d) returns value dim d of key j as f32. All threads of the block must call it.
template <class ValueAt>
__device__ __forceinline__ void online_softmax_round(OnlineSoftmax& s, float* p, int n, int64_t v_dim,
                                                     float* scratch, ValueAt value_at) {
  const float chunk_max = block_max(threadIdx.x < n ? p[threadIdx.x] : -INFINITY, scratch);
  const float m_new = fmaxf(s.m, chunk_max);
  const float correction = expf(s.m - m_new);  // 0 on the first round
  float e = 0.0f;
  if (threadIdx.x < n) {
    e = expf(p[threadIdx.x] - m_new);
    p[threadIdx.x] = e;
  }
  const float chunk_sum = block_sum(e, scratch);  // ends with a barrier: p is visible
  s.l = s.l * correction + chunk_sum;
  s.m = m_new;
#pragma unroll
  for (int i = 0; i < kAttnMaxVPerThread; ++i) {
    const int64_t d = threadIdx.x + int64_t(i) * kAttnThreads;
    if (d >= v_dim) break;
    float a = s.acc[i] * correction;
    for (int j = 0; j < n; ++j) a = fmaf(p[j], value_at(j, d), a);
    s.acc[i] = a;
  }
  __syncthreads();  // p is rewritten by the next round
}

}  // namespace tandem::ops::cuda
