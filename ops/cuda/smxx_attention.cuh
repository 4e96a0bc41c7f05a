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

// The two halves of a bf16x2 register as f32 (exact).
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
// Two adjacent outputs, f32 or rounded to bf16.
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// ---- Tiled prefill kernels (smxx_mla_prefill.cu's mma.sync, sm90_mla_prefill.cu's wgmma) ----
// The grid's x runs over the query tiles of all sequences (ceil(q_len / tile_m) each; an upper
// bound of ceil(T / tile_m) + B CTAs), a sequence's last tile first (it sees the most keys, so
// the longest CTAs start first): CTA `cta` is tile `tile` of sequence `seq`, or seq = -1 (spare).
// O(B) scan of cu_q; one thread calls it.
__device__ inline void prefill_tile_of(const MlaPrefillParams& p, int64_t cta, int64_t tile_m,
                                       int64_t& seq, int64_t& tile) {
  int64_t first = 0;
  seq = -1;
  tile = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t q_len = p.cu_q[b + 1] - p.cu_q[b];
    const int64_t n = q_len > 0 ? (q_len + tile_m - 1) / tile_m : 0;
    if (cta < first + n) {
      seq = b;
      tile = n - 1 - (cta - first);
      return;
    }
    first += n;
  }
}

// Tile `tile` of sequence b: its queries start at token q0 + m0 (rows of them, <= tile_m); the
// sequence has q_len queries and kv_len keys from kv row kv0.
struct PrefillTile {
  int64_t b, q0, q_len, kv0, kv_len, m0;
  int rows;
};
__device__ inline PrefillTile prefill_tile(const MlaPrefillParams& p, int64_t b, int64_t tile, int64_t tile_m) {
  PrefillTile t;
  t.b = b;
  t.q0 = p.cu_q[b];
  t.q_len = p.cu_q[b + 1] - t.q0;
  t.kv0 = p.cu_kv[b];
  t.kv_len = p.cu_kv[b + 1] - t.kv0;
  t.m0 = tile * tile_m;
  t.rows = int(min64(tile_m, t.q_len - t.m0));
  return t;
}

// Sequence b's lengths against the tensors: on a mismatch, reports it and writes NaN into the
// `rows` query rows of the tile from m0 (head h, v values each), by `threads` threads; then the
// caller returns. A CTA-uniform answer.
template <class TOut>
__device__ inline bool prefill_lengths_bad(const MlaPrefillParams& p, int64_t b, int64_t h, int64_t m0,
                                           int rows, TOut* out, int tid, int threads) {
  const int64_t q0 = p.cu_q[b], q_len = p.cu_q[b + 1] - q0;
  const int64_t kv0 = p.cu_kv[b], kv_len = p.cu_kv[b + 1] - kv0;
  if (!(kv_len < q_len || kv0 < 0 || kv0 + kv_len > p.kv_rows || q0 < 0 || q0 + q_len > p.tokens)) return false;
  if (tid == 0) report_error(p.error, kErrPrefillLengths, kv_len, p.kv_rows, b);
  for (int i = tid; i < rows * int(p.v); i += threads) {
    const int64_t tok = q0 + m0 + i / p.v;
    if (tok >= 0 && tok < p.tokens)
      store_as(out + (tok * p.heads + h) * p.v + i % p.v, __int_as_float(0x7fc00000));
  }
  return true;
}

}  // namespace tandem::ops::cuda
