// MLA prefill attention over per-head expanded keys and values, causal, variable length
// (DeepSeek-V2 paper, section 2.1): score = (q_nope . k_nope_h + q_pe . k_pe) * scale.
//
// Two kernels:
// - mla_prefill_kernel (SIMT, f32 or bf16 inputs, any head dims): one block per (query token,
//   head), keys in chunks with an online softmax; keys are re-read by every query of a sequence
//   (through L2). The exact path: f32 inputs give the CPU op's result to f32 rounding.
// - mla_prefill_mma_kernel (tensor cores, bf16 inputs, nope = v = 128, rope = 64): flash
//   attention 2 (Dao 2023, arXiv:2307.08691). One CTA of 8 warps per (128 queries, head,
//   sequence); each warp owns 16 query rows, keeps their query fragments (192 dims) and their
//   f32 output accumulator (16 x 128) in registers, and loops over 64-key blocks of its
//   sequence: S = Q K^T on mma.sync m16n8k16 (bf16 in, f32 accumulate), the causal mask only on
//   the blocks that cross the diagonal, blocks past the tile's last query never loaded, an online
//   softmax in base 2 with f32 statistics, P rounded to bf16 as the A operand of O += P V.
//   K (k_nope | k_pe) and V blocks go through three shared-memory stages with cp.async, read
//   with ldmatrix (V transposed by ldmatrix.trans).
//
// Why mma.sync and not wgmma: the same fragment layouts as the decode kernel
// (sm90_mla_decode.cu), a kernel that can be checked with few GPU runs, and it runs on any
// sm_80+ part. wgmma with TMA and warp specialization (FlashAttention-3) is the next step for the
// last factor of about 1.5-2 on Hopper (bench/RESULTS.md, "Prefill attention").
//
// Accuracy of the tensor-core path: q, k, v are bf16 inputs (exact), products accumulate in
// f32, the probabilities are rounded to bf16 (relative 2^-9) and the row sums add up those same
// rounded values, so the weights applied to V sum to one. Relative L2 error against the f32 CPU
// op on the same bf16 inputs is a few 1e-3 (tests/ops/op_harness_test.cpp).
//
// NaN in a key or query reaches exactly the rows that see that key, as on the CPU. NaN in the
// value of a masked (future) key can reach the other rows of its 64-row tile (0 * NaN in P V),
// which the CPU op never reads; expanded values come from a linear of finite weights.
#include "ops/cuda/mma.cuh"
#include "ops/cuda/smxx_attention.cuh"

namespace tandem::ops::cuda {

namespace {

// ---------------------------------------------------------------------------------------------
// SIMT kernel
// ---------------------------------------------------------------------------------------------

template <class TIn, class TOut>
__global__ void __launch_bounds__(kAttnThreads) mla_prefill_kernel(MlaPrefillParams p) {
  extern __shared__ float smem[];
  const int64_t qk_dim = p.nope + p.rope, kv_dim = p.nope + p.v;
  float* q = smem;                 // [nope + rope]
  float* scores = q + qk_dim;      // [kAttnChunk]
  float* scratch = scores + kAttnChunk;  // [32]
  const int64_t t = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TIn* qg = static_cast<const TIn*>(p.q);
  const TIn* kvg = static_cast<const TIn*>(p.kv);
  const TIn* peg = static_cast<const TIn*>(p.k_pe);

  // The sequence of token t: the last b with cu_q[b] <= t.
  int64_t lo = 0, hi = p.batch - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.cu_q[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const int64_t b = lo;
  const int64_t q_len = p.cu_q[b + 1] - p.cu_q[b], kv0 = p.cu_kv[b];
  const int64_t kv_len = p.cu_kv[b + 1] - kv0;
  TOut* out = static_cast<TOut*>(p.out) + (t * p.heads + h) * p.v;
  if (kv_len < q_len || kv0 < 0 || kv0 + kv_len > p.kv_rows) {
    if (threadIdx.x == 0) report_error(p.error, kErrPrefillLengths, kv_len, p.kv_rows, b);
    for (int64_t d = threadIdx.x; d < p.v; d += blockDim.x) store_as(out + d, __int_as_float(0x7fc00000));
    return;
  }
  const int64_t visible = kv_len - q_len + (t - p.cu_q[b]) + 1;  // keys 0..own position

  const TIn* q_row = qg + (t * p.heads + h) * qk_dim;
  for (int64_t d = threadIdx.x; d < qk_dim; d += blockDim.x) q[d] = to_f32(q_row[d]);
  __syncthreads();

  OnlineSoftmax state;
  for (int64_t j0 = 0; j0 < visible; j0 += kAttnChunk) {
    const int n = int(min64(kAttnChunk, visible - j0));
    for (int jj = warp; jj < n; jj += kAttnWarps) {
      const int64_t row = kv0 + j0 + jj;
      const TIn* k = kvg + (row * p.heads + h) * kv_dim;
      const TIn* kp = peg + row * p.k_pe_stride;
      float s = 0.0f;
      for (int64_t d = lane; d < p.nope; d += 32) s = fmaf(q[d], to_f32(k[d]), s);
      for (int64_t d = lane; d < p.rope; d += 32) s = fmaf(q[p.nope + d], to_f32(kp[d]), s);
      s = warp_sum(s);
      if (lane == 0) scores[jj] = s * p.scale;
    }
    __syncthreads();
    online_softmax_round(state, scores, n, p.v, scratch, [&](int j, int64_t d) {
      return to_f32(kvg[((kv0 + j0 + j) * p.heads + h) * kv_dim + p.nope + d]);
    });
  }
  const float inv = __fdiv_rn(1.0f, state.l);
#pragma unroll
  for (int i = 0; i < kAttnMaxVPerThread; ++i) {
    const int64_t d = threadIdx.x + int64_t(i) * kAttnThreads;
    if (d < p.v) store_as(out + d, state.acc[i] * inv);
  }
}

template <class TIn, class TOut>
void launch_simt(const MlaPrefillParams& p, cudaStream_t stream) {
  const size_t smem = size_t(p.nope + p.rope + kAttnChunk + 32) * sizeof(float);
  mla_prefill_kernel<TIn, TOut><<<unsigned(p.tokens * p.heads), kAttnThreads, smem, stream>>>(p);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel
// ---------------------------------------------------------------------------------------------

constexpr int kNope = 128, kRope = 64, kQk = kNope + kRope, kV = 128;
// 128 queries per CTA: each key block loaded from L2 serves 128 rows (64 rows measured 100-110
// TFLOP/s on the H200, bound by the key/value traffic and the load instructions per MMA).
constexpr int kTileM = 128;            // queries per CTA: 8 warps x 16 rows
constexpr int kTileN = 64;             // keys per block
constexpr int kMmaWarps = kTileM / 16, kMmaThreads = kMmaWarps * 32;
// Shared rows padded by 16 bytes (400 and 272 bytes, odd multiples of 16): the eight row
// addresses of one ldmatrix fall on distinct bank groups.
constexpr int kQkPad = kQk + 8, kVPad = kV + 8;
constexpr int kQChunks = kQk * 2 / 16;                  // 16-byte chunks per query row (24)
constexpr int kNopeChunks = kNope * 2 / 16, kRopeChunks = kRope * 2 / 16;  // 16, 8 per key
// Each thread copies fixed chunks of a key block: k_nope and v chunk tid % 16 of keys
// tid / 16 + 16 j, k_pe chunk tid % 8 of keys tid / 8 + 32 j.
constexpr int kNopeRowStep = kMmaThreads / kNopeChunks, kRopeRowStep = kMmaThreads / kRopeChunks;
static_assert(kTileN % kNopeRowStep == 0 && kTileN % kRopeRowStep == 0, "key block copy split");
constexpr float kLog2e = 1.4426950408889634f;

// Key blocks in flight: three stages keep two blocks loading while one is used (the loads come
// from L2 and HBM with a latency of the order of the compute of one block).
constexpr int kStages = 3;

struct MmaSmem {  // 176 KB: one CTA per multiprocessor
  __nv_bfloat16 q[kTileM][kQkPad];
  __nv_bfloat16 k[kStages][kTileN][kQkPad];  // [k_nope | k_pe] per key
  __nv_bfloat16 v[kStages][kTileN][kVPad];
};



// Grid: x over the query tiles of all sequences (an upper bound, ceil(T / 128) + B; spare CTAs
// exit), y over heads. Within a sequence the tiles run last first: the last tile sees the most
// keys, so the longest CTAs start first.
template <class TOut>
__global__ void __launch_bounds__(kMmaThreads, 1) mla_prefill_mma_kernel(MlaPrefillParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  MmaSmem& sm = *reinterpret_cast<MmaSmem*>(smem_raw);
  __shared__ int64_t s_seq, s_tile;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t h = blockIdx.y;
  const auto* qg = static_cast<const __nv_bfloat16*>(p.q);
  const auto* kvg = static_cast<const __nv_bfloat16*>(p.kv);
  const auto* peg = static_cast<const __nv_bfloat16*>(p.k_pe);
  TOut* outg = static_cast<TOut*>(p.out);

  if (tid == 0) prefill_tile_of(p, blockIdx.x, kTileM, s_seq, s_tile);
  __syncthreads();
  if (s_seq < 0) return;
  const auto [b, q0, q_len, kv0, kv_len, m0, rows] = prefill_tile(p, s_seq, s_tile, kTileM);
  if (prefill_lengths_bad(p, b, h, m0, rows, outg, tid, kMmaThreads)) return;
  // Query i of the sequence sits at key position shift + i and sees keys 0..shift + i.
  const int shift = int(kv_len - q_len), kv_n = int(kv_len);  // lengths < 2^31 (i32 cu_kv)
  const int nblocks = (shift + int(m0) + rows - 1) / kTileN + 1;  // up to the last row's key
  const int all_see = shift + int(m0) + 1;  // keys below this are visible to every row of the tile

  // Query tile (rows past the sequence are zero).
  for (int i = tid; i < kTileM * kQChunks; i += kMmaThreads) {
    const int r = i / kQChunks, c = i % kQChunks;
    void* dst = &sm.q[r][c * 8];
    if (r < rows) {
      cp_async16(dst, qg + ((q0 + m0 + r) * p.heads + h) * kQk + c * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  // Key block blk into stage: k_nope and v from kv's head row, k_pe from its shared row. Keys
  // past the sequence are zero (a zero probability times stale shared memory could be NaN).
  const int64_t kv_row = p.heads * (kNope + kV);  // elements between keys in kv
  const __nv_bfloat16* nope_src = kvg + (kv0 * p.heads + h) * (kNope + kV) + (tid % kNopeChunks) * 8;
  const __nv_bfloat16* rope_src = peg + kv0 * p.k_pe_stride + (tid % kRopeChunks) * 8;
  const int nope_col = (tid % kNopeChunks) * 8, rope_col = kNope + (tid % kRopeChunks) * 8;
  auto load_block = [&](int blk, int stage) {
    const int key0 = blk * kTileN;
#pragma unroll
    for (int j = 0; j < kTileN / kNopeRowStep; ++j) {
      const int r = tid / kNopeChunks + j * kNopeRowStep;
      void* kdst = &sm.k[stage][r][nope_col];
      void* vdst = &sm.v[stage][r][nope_col];
      if (key0 + r < kv_len) {
        const __nv_bfloat16* src = nope_src + int64_t(key0 + r) * kv_row;
        cp_async16(kdst, src);
        cp_async16(vdst, src + kNope);
      } else {
        *reinterpret_cast<uint4*>(kdst) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(vdst) = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int j = 0; j < kTileN / kRopeRowStep; ++j) {
      const int r = tid / kRopeChunks + j * kRopeRowStep;
      void* dst = &sm.k[stage][r][rope_col];
      if (key0 + r < kv_len) {
        cp_async16(dst, rope_src + int64_t(key0 + r) * p.k_pe_stride);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  load_block(0, 0);
  cp_async_commit();  // group 0: the query tile and block 0
  if (nblocks > 1) {
    load_block(1, 1);
    cp_async_commit();
  }

  uint32_t qf[kQk / 16][4];  // A fragments of the warp's 16 query rows
  float o[kV / 8][4];        // out[16 rows][8 n + {2 t4, 2 t4 + 1}], rows g and g + 8
#pragma unroll
  for (int n = 0; n < kV / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // running max (log2 units) of rows g, g + 8
  float l_row[2] = {0.0f, 0.0f};            // this thread's part of the running sum
  const float scale_log2 = p.scale * kLog2e;
  const int row_lo = int(m0) + warp * 16 + g;  // the sequence-local query of rows g (and + 8)

  // One barrier per block: past it, block blk has landed for every thread and every warp has
  // finished block blk - 1, so its stage ((blk + 2) % 3) can be refilled. Warps then drift
  // apart within a block, so one warp's softmax overlaps another's MMAs.
  for (int blk = 0; blk < nblocks; ++blk) {
    const int stage = blk % kStages;
    if (blk + 1 < nblocks) {
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (blk + 2 < nblocks) {
      load_block(blk + 2, (blk + 2) % kStages);
      cp_async_commit();
    }
    if (blk == 0) {
      const __nv_bfloat16* qa = &sm.q[warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][(lane >> 4) * 8];
#pragma unroll
      for (int kk = 0; kk < kQk / 16; ++kk) ldmatrix_x4(qf[kk], qa + kk * 16);
    }

    // S = Q K^T: 16 rows x 64 keys over 192 dims.
    float s[kTileN / 8][4];
#pragma unroll
    for (int n = 0; n < kTileN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    const __nv_bfloat16* kb = &sm.k[stage][(lane & 7) + (lane >> 4) * 8][((lane >> 3) & 1) * 8];
#pragma unroll
    for (int kk = 0; kk < kQk / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kTileN / 16; ++np) {
        uint32_t bb[4];
        ldmatrix_x4(bb, kb + np * 16 * kQkPad + kk * 16);
        mma_bf16(s[2 * np], qf[kk], bb[0], bb[1]);
        mma_bf16(s[2 * np + 1], qf[kk], bb[2], bb[3]);
      }
    }

    // Scale to log2 units; the causal mask where the block crosses the diagonal.
    const bool crosses = (blk + 1) * kTileN > all_see;
#pragma unroll
    for (int n = 0; n < kTileN / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x = s[n][i] * scale_log2;
        if (crosses) {
          const int key = blk * kTileN + n * 8 + 2 * t4 + (i & 1);
          const int row = row_lo + 8 * (i >> 1);
          if (key > shift + row || key >= kv_n) x = -INFINITY;
        }
        s[n][i] = x;
      }
    }

    // Online softmax of rows g, g + 8 (a row's 64 scores live in the 4 threads of a quad).
    uint32_t pa[kTileN / 16][4];  // P as A fragments, 16 keys each
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_row[r], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no visible key yet
      const float corr = exp2f(m_row[r] - m_use);              // 0 on the first block
      m_row[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n) {
        const uint32_t pp = pack_bf16(exp2f(s[n][2 * r] - m_use), exp2f(s[n][2 * r + 1] - m_use));
        sum += bf16_lo(pp) + bf16_hi(pp);  // the rounded values P V uses: weights sum to one
        pa[n / 2][(n & 1) * 2 + r] = pp;
      }
      l_row[r] = l_row[r] * corr + sum;
#pragma unroll
      for (int n = 0; n < kV / 8; ++n) {
        o[n][2 * r] *= corr;
        o[n][2 * r + 1] *= corr;
      }
    }

    // O += P V: 16 rows x 128 dims over 64 keys; V rows are keys, so ldmatrix.trans.
    const __nv_bfloat16* vb = &sm.v[stage][(lane & 7) + ((lane >> 3) & 1) * 8][(lane >> 4) * 8];
#pragma unroll
    for (int kk = 0; kk < kTileN / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < kV / 16; ++dp) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, vb + kk * 16 * kVPad + dp * 16);
        mma_bf16(o[2 * dp], pa[kk], bb[0], bb[1]);
        mma_bf16(o[2 * dp + 1], pa[kk], bb[2], bb[3]);
      }
    }
  }

  // out = O / l for the rows of the sequence.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_row[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = __fdiv_rn(1.0f, l);
    const int row = row_lo + 8 * r;
    if (row - int(m0) >= rows) continue;
    TOut* dst = outg + ((q0 + row) * p.heads + h) * kV + 2 * t4;
#pragma unroll
    for (int n = 0; n < kV / 8; ++n) store_pair(dst + n * 8, o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
  }
}

template <class TOut>
void launch_mma(const MlaPrefillParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(MmaSmem);
  cudaFuncSetAttribute(mla_prefill_mma_kernel<TOut>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(smem));
  const dim3 grid(unsigned((p.tokens + kTileM - 1) / kTileM + p.batch), unsigned(p.heads));
  mla_prefill_mma_kernel<TOut><<<grid, kMmaThreads, smem, stream>>>(p);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

void launch_mla_prefill(const MlaPrefillParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return;
  const bool in32 = p.in_dtype == DType::kF32, out32 = p.out_dtype == DType::kF32;
  if (in32 && out32) launch_simt<float, float>(p, stream);
  else if (in32) launch_simt<float, __nv_bfloat16>(p, stream);
  else if (out32) launch_simt<__nv_bfloat16, float>(p, stream);
  else launch_simt<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

bool mla_prefill_mma_supported(const MlaPrefillParams& p) {
  return p.in_dtype == DType::kBF16 && p.nope == kNope && p.rope == kRope && p.v == kV &&
         aligned16(p.q) && aligned16(p.kv) && aligned16(p.k_pe) && aligned16(p.out) &&
         p.k_pe_stride % 8 == 0;
}

void launch_mla_prefill_mma(const MlaPrefillParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return;
  if (p.out_dtype == DType::kF32) launch_mma<float>(p, stream);
  else launch_mma<__nv_bfloat16>(p, stream);
}

}  // namespace tandem::ops::cuda
