// MLA prefill attention over per-head expanded keys and values, causal, variable length
// (DeepSeek-V2 paper, section 2.1): score = (q_nope . k_nope_h + q_pe . k_pe) * scale.
// One block per (query token, head); keys in chunks with an online softmax. Keys are re-read by
// every query of a sequence (through L2): the correct baseline, not a tiled flash kernel.
#include "ops/cuda/smxx_attention.cuh"

namespace tandem::ops::cuda {

namespace {

__global__ void __launch_bounds__(kAttnThreads) mla_prefill_kernel(MlaPrefillParams p) {
  extern __shared__ float smem[];
  const int64_t qk_dim = p.nope + p.rope, kv_dim = p.nope + p.v;
  float* q = smem;                 // [nope + rope]
  float* scores = q + qk_dim;      // [kAttnChunk]
  float* scratch = scores + kAttnChunk;  // [32]
  const int64_t t = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // The sequence of token t: the last b with cu_q[b] <= t.
  int64_t lo = 0, hi = p.batch - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.cu_q[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const int64_t b = lo;
  const int64_t q_len = p.cu_q[b + 1] - p.cu_q[b], kv0 = p.cu_kv[b];
  const int64_t kv_len = p.cu_kv[b + 1] - kv0;
  float* out = p.out + (t * p.heads + h) * p.v;
  if (kv_len < q_len || kv0 < 0 || kv0 + kv_len > p.kv_rows) {
    if (threadIdx.x == 0) report_error(p.error, kErrPrefillLengths, kv_len, p.kv_rows, b);
    for (int64_t d = threadIdx.x; d < p.v; d += blockDim.x) out[d] = __int_as_float(0x7fc00000);
    return;
  }
  const int64_t visible = kv_len - q_len + (t - p.cu_q[b]) + 1;  // keys 0..own position

  const float* q_row = p.q + (t * p.heads + h) * qk_dim;
  for (int64_t d = threadIdx.x; d < qk_dim; d += blockDim.x) q[d] = q_row[d];
  __syncthreads();

  OnlineSoftmax state;
  for (int64_t j0 = 0; j0 < visible; j0 += kAttnChunk) {
    const int n = int(min64(kAttnChunk, visible - j0));
    for (int jj = warp; jj < n; jj += kAttnWarps) {
      const int64_t row = kv0 + j0 + jj;
      const float* k = p.kv + (row * p.heads + h) * kv_dim;
      const float* kp = p.k_pe + row * p.k_pe_stride;
      float s = 0.0f;
      for (int64_t d = lane; d < p.nope; d += 32) s = fmaf(q[d], k[d], s);
      for (int64_t d = lane; d < p.rope; d += 32) s = fmaf(q[p.nope + d], kp[d], s);
      s = warp_sum(s);
      if (lane == 0) scores[jj] = s * p.scale;
    }
    __syncthreads();
    online_softmax_round(state, scores, n, p.v, scratch, [&](int j, int64_t d) {
      return p.kv[((kv0 + j0 + j) * p.heads + h) * kv_dim + p.nope + d];
    });
  }
  const float inv = __fdiv_rn(1.0f, state.l);
#pragma unroll
  for (int i = 0; i < kAttnMaxVPerThread; ++i) {
    const int64_t d = threadIdx.x + int64_t(i) * kAttnThreads;
    if (d < p.v) out[d] = state.acc[i] * inv;
  }
}

}  // namespace

void launch_mla_prefill(const MlaPrefillParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return;
  const size_t smem = size_t(p.nope + p.rope + kAttnChunk + 32) * sizeof(float);
  mla_prefill_kernel<<<unsigned(p.tokens * p.heads), kAttnThreads, smem, stream>>>(p);
}

}  // namespace tandem::ops::cuda
