// MLA prefill attention on Hopper's wgmma with TMA (opt-in: TANDEM_MLA_PREFILL_WGMMA=1, until it
// has been checked and timed on a GPU): causal, variable length, bf16 q / kv / k_pe of DeepSeek's
// head dims (nope 128 + rope 64, v 128), the same contract and tile order as
// mla_prefill_mma_kernel (smxx_mla_prefill.cu), whose mma.sync loop ran at 0.44-0.61x of cuDNN.
//
// One CTA of two warpgroups per (128 queries, head, sequence); warpgroup wg owns query rows
// [64 wg, 64 wg + 64) of the tile. Thread 0 loads with the TMA engine, in 128-byte-swizzled
// regions: the query tile once (6 boxes of 64 x 64), then key blocks of 128 keys in two stages
// (k_nope and v from the head's kv row, k_pe from its shared cache row: 5 boxes of 64 columns x
// 128 rows), block n + 2 issued once every thread is done with block n. Per block and
// warpgroup: S = Q K^T (12 wgmma m64n128k16, Q and K from shared memory), the causal mask on the
// blocks that need it, an online softmax in base 2 (a row lives in the four threads of a quad,
// so no exchange between warpgroups), P rounded to bf16 and kept in registers as the A operand
// of O += P V (8 wgmma m64n128k16, V N-major from shared memory). Accuracy as the mma.sync
// kernel: the row sums add the rounded probabilities P V uses.
//
// Keys past the sequence are masked; their value rows (the next sequence's, or zeros past the
// tensor) are zeroed in shared memory first, so 0 x NaN cannot reach a row.
#include "ops/cuda/common.cuh"
#include "ops/cuda/sm90.cuh"
#include "ops/cuda/smxx_attention.cuh"
#include "ops/cuda/tma_map.h"

#include <cstdlib>

namespace tandem::ops::cuda {

namespace {

constexpr int kNope = 128, kRope = 64, kQk = kNope + kRope, kV = 128;
constexpr int kTileM = 128, kTileN = 128, kStages = 2, kThreads = 256;
constexpr int kQRegion = 64 * 64;    // bf16: 64 query rows x 64 dims
constexpr int kKRegion = kTileN * 64;  // bf16: 128 keys x 64 dims (16 KB)
constexpr float kLog2e = 1.4426950408889634f;

struct PrefillSmem {
  __nv_bfloat16 q[2][kQk / 64][kQRegion];       // per warpgroup: 64 rows x 192, K-major
  __nv_bfloat16 k[kStages][kQk / 64][kKRegion];  // 128 keys x [k_nope | k_pe], K-major
  __nv_bfloat16 v[kStages][kV / 64][kKRegion];   // 128 keys x 128 dims, N-major
  uint64_t full[kStages];
  uint64_t q_bar;
};
constexpr size_t kPrefillSmemBytes = sizeof(PrefillSmem) + 1024;
static_assert(kPrefillSmemBytes <= 227 * 1024, "the wgmma prefill kernel's shared memory");

// d[64 x 128] += A[64 x 16] (smem, K-major) * B[16 x 128] (smem, K-major).
__device__ __forceinline__ void wgmma_m64n128_ss(float (&d)[64], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WGMMA_D64_REGS
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : WGMMA_D64_OUTS(d)
      : "l"(da), "l"(db), "r"(1));
}
// d[64 x 128] += A[64 x 16] (registers: the m16n8k16 A fragment of each warp's 16 rows) *
// B[16 x 128] (smem, N-major).
__device__ __forceinline__ void wgmma_m64n128_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WGMMA_D64_REGS
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : WGMMA_D64_OUTS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}


struct PrefillMaps {
  CUtensorMap q;   // [tokens, heads * 192]
  CUtensorMap kv;  // [kv_rows, heads * 256]
  CUtensorMap pe;  // [kv_rows, 64], rows k_pe_stride apart
};

// Grid: x over the query tiles of all sequences (an upper bound, ceil(T / 128) + B; spare CTAs
// exit), last tile of a sequence first; y over heads.
template <class TOut>
__global__ void __launch_bounds__(kThreads, 1)
    mla_prefill_wgmma_kernel(MlaPrefillParams p, const __grid_constant__ PrefillMaps maps) {
  extern __shared__ __align__(16) unsigned char smem_pf[];
  PrefillSmem& sm = align_1024<PrefillSmem>(smem_pf);
  __shared__ int64_t s_seq, s_tile;
  [[maybe_unused]] const auto [tid, wg, lane, w4, g, t, row0] = wg_thread();
  const int64_t h = blockIdx.y;
  TOut* outg = static_cast<TOut*>(p.out);

  if (tid == 0) prefill_tile_of(p, blockIdx.x, kTileM, s_seq, s_tile);
  __syncthreads();
  if (s_seq < 0) return;
  const auto [b, q0, q_len, kv0, kv_len, m0, rows] = prefill_tile(p, s_seq, s_tile, kTileM);
  if (prefill_lengths_bad(p, b, h, m0, rows, outg, tid, kThreads)) return;
  // Query i of the sequence sits at key position shift + i and sees keys 0..shift + i.
  const int shift = int(kv_len - q_len), kv_n = int(kv_len);
  const int nblocks = (shift + int(m0) + rows - 1) / kTileN + 1;  // up to the last row's key
  const int all_see = shift + int(m0) + 1;  // keys below this are visible to every row

  auto load_block = [&](int blk) {  // thread 0
    const int st = blk % kStages;
    const int row = int(kv0) + blk * kTileN;
    mbar_arrive_expect(&sm.full[st], uint32_t(5 * kKRegion * 2));
    const int col = int(h) * (kNope + kV);
    tma_load_2d(&sm.k[st][0][0], &maps.kv, col, row, &sm.full[st]);
    tma_load_2d(&sm.k[st][1][0], &maps.kv, col + 64, row, &sm.full[st]);
    tma_load_2d(&sm.k[st][2][0], &maps.pe, 0, row, &sm.full[st]);
    tma_load_2d(&sm.v[st][0][0], &maps.kv, col + kNope, row, &sm.full[st]);
    tma_load_2d(&sm.v[st][1][0], &maps.kv, col + kNope + 64, row, &sm.full[st]);
  };
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&maps.q)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&maps.kv)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&maps.pe)) : "memory");
    for (int s = 0; s < kStages; ++s) mbar_init(&sm.full[s], 1);
    mbar_init(&sm.q_bar, 1);
    mbar_init_fence();
    mbar_arrive_expect(&sm.q_bar, uint32_t(2 * (kQk / 64) * kQRegion * 2));
    for (int w = 0; w < 2; ++w)
      for (int c = 0; c < kQk / 64; ++c)
        tma_load_2d(&sm.q[w][c][0], &maps.q, int(h) * kQk + 64 * c, int(q0 + m0) + 64 * w, &sm.q_bar);
    for (int blk = 0; blk < nblocks && blk < kStages; ++blk) load_block(blk);
  }
  __syncthreads();  // barriers initialized

  float o[64];  // out[row][8 j + 2 t + c] at o[4 j + 2 i + c], rows 16 w4 + g + 8 i of the warpgroup
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // running max (log2 units)
  float l_row[2] = {0.0f, 0.0f};            // this thread's part of the running sum
  const float scale_log2 = p.scale * kLog2e;
  const int row_lo = int(m0) + 64 * wg + 16 * w4 + g;  // sequence-local query of row i = 0
  bool lost = false;
  mbar_wait_bounded(&sm.q_bar, 0, lost);

  for (int blk = 0; blk < nblocks; ++blk) {
    const int st = blk % kStages, key0 = blk * kTileN;
    mbar_wait_bounded(&sm.full[st], uint32_t(blk / kStages) & 1, lost);
    if (key0 + kTileN > kv_n) {  // value rows past the sequence: zero (all threads, then sync)
      const int valid = kv_n - key0;
      for (int i = tid; i < (kTileN - valid) * (kV / 8); i += kThreads) {
        const int r = valid + i / (kV / 8), c = i % (kV / 8);
        *reinterpret_cast<uint4*>(&sm.v[st][c >> 3][swizzled(r, c & 7)]) = make_uint4(0, 0, 0, 0);
      }
      fence_proxy_async();
      __syncthreads();
    }

    float s[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) s[i] = 0.0f;
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kQk / 16; ++k)
      wgmma_m64n128_ss(s, desc_k_major(&sm.q[wg][k >> 2][(k & 3) * 16]),
                       desc_k_major(&sm.k[st][k >> 2][(k & 3) * 16]));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);

    // Scale to log2 units; the causal mask (and keys past the sequence) where the block needs it.
    const bool crosses = key0 + kTileN > all_see;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[4 * j + e] * scale_log2;
        if (crosses) {
          const int key = key0 + 8 * j + 2 * t + (e & 1);
          const int row = row_lo + 8 * (e >> 1);
          if (key > shift + row || key >= kv_n) x = -INFINITY;
        }
        s[4 * j + e] = x;
      }
    }

    // Online softmax of rows i = 0, 1; P as bf16 A fragments (k-step kk: keys 16 kk ..).
    uint32_t pa[kTileN / 16][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 16; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_row[i], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no visible key yet
      const float corr = exp2f(m_row[i] - m_use);              // 0 on the first block
      m_row[i] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const uint32_t pp = pack_bf16(exp2f(s[4 * j + 2 * i] - m_use), exp2f(s[4 * j + 2 * i + 1] - m_use));
        sum += bf16_lo(pp) + bf16_hi(pp);  // the rounded values P V uses: weights sum to one
        pa[j / 2][(j & 1) * 2 + i] = pp;  // a0/a1: keys 16 kk + 2 t (rows g, g + 8); a2/a3: + 8
      }
      l_row[i] = l_row[i] * corr + sum;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        o[4 * j + 2 * i] *= corr;
        o[4 * j + 2 * i + 1] *= corr;
      }
    }

    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileN / 16; ++kk)
      wgmma_m64n128_rs(o, pa[kk], desc_n_major(&sm.v[st][0][kk * 16 * 64], kKRegion * 2));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
#pragma unroll
    for (int kk = 0; kk < kTileN / 16; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(pa[kk][r])::"memory");  // live until the wait
    }

    __syncthreads();  // every warpgroup is done with this stage
    if (tid == 0 && blk + kStages < nblocks) load_block(blk + kStages);
  }

  // out = O / l for the rows of the sequence.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float l = l_row[i];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = lost ? __int_as_float(0x7fc00000) : __fdiv_rn(1.0f, l);
    const int row = row_lo + 8 * i;
    if (row - int(m0) >= rows) continue;
    TOut* dst = outg + ((q0 + row) * p.heads + h) * kV + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j) store_pair(dst + 8 * j, o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
  }
}

}  // namespace

bool mla_prefill_wgmma_enabled(const MlaPrefillParams& p) {
  const char* e = std::getenv("TANDEM_MLA_PREFILL_WGMMA");
  return e && e[0] == '1' && tma_available() && mla_prefill_mma_supported(p) &&
         p.tokens < (int64_t(1) << 31) && p.kv_rows < (int64_t(1) << 31);
}

bool launch_mla_prefill_wgmma(const MlaPrefillParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return true;
  PrefillMaps maps{};
  const uint64_t h = uint64_t(p.heads);
  if (!encode_bf16_map(&maps.q, p.q, h * kQk, uint64_t(p.tokens), h * kQk * 2, 64, 64) ||
      !encode_bf16_map(&maps.kv, p.kv, h * (kNope + kV), uint64_t(p.kv_rows), h * (kNope + kV) * 2, 64, kTileN) ||
      !encode_bf16_map(&maps.pe, p.k_pe, kRope, uint64_t(p.kv_rows), uint64_t(p.k_pe_stride) * 2, 64, kTileN))
    return false;
  const dim3 grid(unsigned((p.tokens + kTileM - 1) / kTileM + p.batch), unsigned(p.heads));
  if (p.out_dtype == DType::kF32) {
    cudaFuncSetAttribute(mla_prefill_wgmma_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         int(kPrefillSmemBytes));
    mla_prefill_wgmma_kernel<float><<<grid, kThreads, kPrefillSmemBytes, stream>>>(p, maps);
  } else {
    cudaFuncSetAttribute(mla_prefill_wgmma_kernel<__nv_bfloat16>,
                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(kPrefillSmemBytes));
    mla_prefill_wgmma_kernel<__nv_bfloat16><<<grid, kThreads, kPrefillSmemBytes, stream>>>(p, maps);
  }
  return true;
}

}  // namespace tandem::ops::cuda
