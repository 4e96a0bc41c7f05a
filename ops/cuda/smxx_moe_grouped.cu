// Grouped MoE expert kernels (moe_experts on CUDA): sort the (token, slot) pairs by expert,
// grouped GEMMs on tensor cores, weighted un-permute. Everything stays on the device (the
// experts' row ranges are read by the kernels, never by the host), so a decode step that uses
// them can be captured in a CUDA graph.
//
// The GEMM is written for decode, where it is bound by reading the expert weights: a warp owns
// 32 output columns of one expert and streams their weight rows straight from global memory
// into registers (16-byte loads, no shared memory), widening e4m3 to bf16 there, and runs
// mma.sync m16n8k16 (bf16 in, f32 accumulate) over 16 rows of the expert at a time. The K
// index inside each 64-wide chunk is permuted the same way for A and B so that every lane's
// fragment is 16 contiguous k values (one or two 16-byte loads) instead of scattered pairs;
// a dot product does not depend on the order of its terms' pairing, only on A and B agreeing.
// FP8 weights: the partial sums of each 128-wide K block are scaled by that block's weight
// scale in f32 (as DeepSeek-V3's block-scaled GEMMs do), so e4m3 values enter the MMA exactly.
//
// With FP8 activations (MoeGroupedGemmParams::fp8_act) the rows come quantized per 128 columns
// (the FP8 linear's quantizer) and the MMA is m16n8k32 on e4m3 x e4m3: the weights go from
// memory into the tensor cores with no widening, and each K block's partial sums are scaled by
// activation scale x weight scale.
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"

#include <cuda_fp16.h>

namespace tandem::ops::cuda {

namespace {

constexpr int kAlignThreads = 1024;
constexpr int kGemmThreads = 128;  // 4 warps x 32 columns: one 128-column weight-scale block
constexpr int kUnpermuteThreads = 256;

// Counts per expert, exclusive scan into offsets, then each pair takes the next position of its
// expert. The order inside an expert depends on atomics; every row is computed on its own and
// the un-permute sums a token's slots in slot order, so results do not depend on it.
__global__ void __launch_bounds__(kAlignThreads) moe_align_kernel(MoeAlignParams p) {
  extern __shared__ int32_t smem[];
  int32_t* counts = smem;             // [E]
  int32_t* cursor = smem + p.experts; // [E]
  __shared__ int32_t warp_total[kAlignThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t pairs = p.tokens * p.top_k;
  for (int64_t e = tid; e < p.experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t i = tid; i < pairs; i += blockDim.x) {
    const int32_t e = p.ids[(i / p.top_k) * p.ids_stride + i % p.top_k];
    if (e < 0 || e >= p.experts) {
      report_error(p.error, kErrExpertId, e, p.experts, i);
      continue;
    }
    atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  // Exclusive scan over experts (experts <= blockDim.x, checked by the launcher).
  const int32_t v = tid < p.experts ? counts[tid] : 0;
  int32_t incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int32_t w = lane < int(blockDim.x >> 5) ? warp_total[lane] : 0;
    int32_t wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t n = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += n;
    }
    warp_total[lane] = wi - w;
  }
  __syncthreads();
  const int32_t excl = incl - v + warp_total[warp];
  if (tid < p.experts) {
    cursor[tid] = excl;
    p.offsets[tid] = excl;
    if (tid == p.experts - 1) p.offsets[p.experts] = excl + v;
  }
  __syncthreads();
  for (int64_t i = tid; i < pairs; i += blockDim.x) {
    const int64_t t = i / p.top_k;
    const int32_t e = p.ids[t * p.ids_stride + i % p.top_k];
    if (e < 0 || e >= p.experts) {
      p.slot_of[i] = -1;
      continue;
    }
    const int32_t pos = atomicAdd(&cursor[e], 1);
    p.sorted_rows[pos] = int32_t(t);
    p.slot_of[i] = pos;
  }
}

__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t two_bytes) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);  // exact: e4m3 fits in bf16
  return *reinterpret_cast<const uint32_t*>(&b);
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += A B on FP8 tensor cores: A 16 x 32 e4m3 (a0/a1: rows g, g + 8, k 4t .. 4t + 3; a2/a3:
// k 16 + 4t ..), B 32 x 8 e4m3 (b0: k 4t .. 4t + 3, b1: k 16 + 4t .., column g), f32 c.
__device__ __forceinline__ void mma_e4m3(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 load16(const void* p) {
  return __ldg(static_cast<const uint4*>(p));
}

// Zeroes a float array of any shape (the accumulators; fully unrolled, so they stay registers).
template <class A>
__device__ __forceinline__ void zero(A& a) {
  float* f = reinterpret_cast<float*>(&a);
#pragma unroll
  for (int i = 0; i < int(sizeof(A) / sizeof(float)); ++i) f[i] = 0.0f;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Output row r, columns col and col + 1, from the sums of gate (g) and, for gate_up, up (u):
// gate_up: gate and up are rounded to bf16 as the CPU op's bf16 linears round them, then
// silu(gate) * up is rounded to bf16 once; else the sums in out_dtype (f32 or bf16).
// `group` offsets the output by group * out_group_stride (batched dense weights; 0 otherwise).
template <bool kGateUp>
__device__ __forceinline__ void store_pair(const MoeGroupedGemmParams& p, int64_t group, int32_t r,
                                           int64_t col, float g0, float g1, float u0, float u1) {
  const int64_t at = group * p.out_group_stride + int64_t(r) * p.out_stride + col;
  if constexpr (kGateUp) {
    const float y0 = silu(round_bf16(g0)) * round_bf16(u0);
    const float y1 = silu(round_bf16(g1)) * round_bf16(u1);
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + at) = __floats2bfloat162_rn(y0, y1);
  } else if (p.out_dtype == DType::kBF16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + at) = __floats2bfloat162_rn(g0, g1);
  } else {
    *reinterpret_cast<float2*>(static_cast<float*>(p.out) + at) = make_float2(g0, g1);
  }
}

// The rows r0 and r1 (< end) of a warp's 16 x 32 tile, m16n8 layout: acc[w][i][0..1] are row
// r0, columns n0 + 8 i + 2 t4 (+ 1), acc[w][i][2..3] row r1 (w: gate, up).
// f(i, half, r, col) for the valid (row, column pair) places of a warp's 16 x 32 tile: rows r0
// (half 0) and r1 (half 1) below end, columns n0 + 8 i + 2 t4 below n.
template <class F>
__device__ __forceinline__ void for_tile_pairs(int64_t n0, int t4, int32_t r0, int32_t r1, int32_t end,
                                               int64_t n, const F& f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t col = n0 + 8 * i + 2 * t4;
    if (col >= n) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int32_t r = half ? r1 : r0;
      if (r < end) f(i, half, r, col);
    }
  }
}

template <bool kGateUp, int kW>
__device__ __forceinline__ void store_tile(const MoeGroupedGemmParams& p, int64_t group,
                                           const float (&acc)[kW][4][4], int64_t n0, int t4,
                                           int32_t r0, int32_t r1, int32_t end) {
  for_tile_pairs(n0, t4, r0, r1, end, p.n, [&](int i, int half, int32_t r, int64_t col) {
    store_pair<kGateUp>(p, group, r, col, acc[0][i][2 * half], acc[0][i][2 * half + 1],
                        acc[kW - 1][i][2 * half], acc[kW - 1][i][2 * half + 1]);
  });
}

// Grid: (ceil(n / 128), experts). Warp w of block (bx, e) computes columns
// [bx * 128 + 32 w, + 32) of expert e's rows, 16 rows at a time.
template <bool kFp8, bool kGateUp>
__global__ void __launch_bounds__(kGemmThreads) moe_grouped_gemm_kernel(MoeGroupedGemmParams p) {
  constexpr int kW = kGateUp ? 2 : 1;       // weight matrices: gate and up, or one
  constexpr int kLoads = kFp8 ? 1 : 2;      // 16-byte loads per lane per row per 64-k chunk
  const int64_t e = blockIdx.y;
  const int32_t begin = p.offsets ? p.offsets[e] : 0, end = p.offsets ? p.offsets[e + 1] : p.rows;
  if (begin >= end) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * 128 + warp * 32;
  if (n0 >= p.n) return;

  const char* wrow[kW][4];  // this lane's weight rows: columns n0 + 8 i + g
  const float* scale[kW];
  const int64_t kblocks = (p.k + 127) / 128;
#pragma unroll
  for (int w = 0; w < kW; ++w) {
    // Experts: the address tables; batched dense weights (no tables): group e's slice.
    const char* base = p.w0 ? reinterpret_cast<const char*>(w == 0 ? p.w0[e] : p.w1[e])
                            : static_cast<const char*>(p.w_dense) + e * p.w_group_stride * (kFp8 ? 1 : 2);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t col = n0 + 8 * i + g;
      wrow[w][i] = col < p.n ? base + col * p.k * (kFp8 ? 1 : 2) : nullptr;
    }
    if constexpr (kFp8) {
      scale[w] = (p.s0 ? reinterpret_cast<const float*>(w == 0 ? p.s0[e] : p.s1[e])
                       : p.s_dense + e * p.s_group_stride) +
                 (n0 / 128) * kblocks;
    } else {
      scale[w] = nullptr;
    }
  }
  const __nv_bfloat16* a = static_cast<const __nv_bfloat16*>(p.a) + (p.w0 ? 0 : e * p.a_group_stride);

  for (int32_t m0 = begin; m0 < end; m0 += 16) {
    const int32_t r0 = m0 + g, r1 = m0 + g + 8;
    const __nv_bfloat16* arow0 =
        r0 < end ? a + int64_t(p.row_index ? p.row_index[r0] : r0) * p.a_stride : nullptr;
    const __nv_bfloat16* arow1 =
        r1 < end ? a + int64_t(p.row_index ? p.row_index[r1] : r1) * p.a_stride : nullptr;
    float acc[kW][4][4];
    zero(acc);

    for (int64_t kb = 0; kb < p.k; kb += 128) {
      float part[kW][4][4];
      zero(part);
      const int64_t kend = kb + 128 < p.k ? kb + 128 : p.k;
      for (int64_t kc = kb; kc < kend; kc += 64) {
        const int64_t kl = kc + 16 * t4;  // this lane's 16 k values
        uint4 av0[2] = {}, av1[2] = {};
        if (arow0) { av0[0] = load16(arow0 + kl); av0[1] = load16(arow0 + kl + 8); }
        if (arow1) { av1[0] = load16(arow1 + kl); av1[1] = load16(arow1 + kl + 8); }
        uint4 bv[kW][4][kLoads];
#pragma unroll
        for (int w = 0; w < kW; ++w)
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int l = 0; l < kLoads; ++l) {
              bv[w][i][l] = wrow[w][i] ? load16(wrow[w][i] + (kl * (kFp8 ? 1 : 2)) + 16 * l)
                                       : make_uint4(0, 0, 0, 0);
            }
        const uint32_t* A0 = reinterpret_cast<const uint32_t*>(av0);  // 8 words: k pairs
        const uint32_t* A1 = reinterpret_cast<const uint32_t*>(av1);
#pragma unroll
        for (int s = 0; s < 4; ++s) {  // 16-k steps; step s uses k values kl + 4s .. + 3
#pragma unroll
          for (int w = 0; w < kW; ++w)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              uint32_t b0, b1;
              if constexpr (kFp8) {
                const uint32_t word = reinterpret_cast<const uint32_t*>(&bv[w][i][0])[s];
                b0 = e4m3x2_to_bf16x2(word & 0xffffu);
                b1 = e4m3x2_to_bf16x2(word >> 16);
              } else {
                const uint32_t* B = reinterpret_cast<const uint32_t*>(bv[w][i]);
                b0 = B[2 * s];
                b1 = B[2 * s + 1];
              }
              if constexpr (kFp8) {
                mma_bf16(part[w][i], A0[2 * s], A1[2 * s], A0[2 * s + 1], A1[2 * s + 1], b0, b1);
              } else {
                mma_bf16(acc[w][i], A0[2 * s], A1[2 * s], A0[2 * s + 1], A1[2 * s + 1], b0, b1);
              }
            }
        }
      }
      if constexpr (kFp8) {
#pragma unroll
        for (int w = 0; w < kW; ++w) {
          const float sc = scale[w][kb / 128];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[w][i][c] = fmaf(sc, part[w][i][c], acc[w][i][c]);
        }
      }
    }

    store_tile<kGateUp, kW>(p, p.w0 ? 0 : e, acc, n0, t4, r0, r1, end);
  }
}

// The FP8-activation kernel: the same warps and tiles; grid (ceil(n / 128), groups, splits).
// A group is an expert's sorted rows, or, without offsets, rows [0, rows) of one dense weight
// (w_dense, s_dense: linear at decode sizes). Split z of `splits` takes a range of whole
// 128-wide K blocks and, when there are several, writes its raw sums to `partial`, which
// moe_split_reduce_kernel adds up in split order (deterministic) and finishes.
// Per K block (one weight scale block), lane t4 holds the 32 bytes [32 t4, 32 t4 + 32) of its
// rows and columns (two 16-byte loads each) and MMA step s takes bytes [8 s, 8 s + 8) of them:
// a0/b0 the first four, a2/b1 the next four. That maps the MMA's k index to memory the same way
// for A and B (a permutation of the block), so the products are the block's.
template <bool kGateUp>
__global__ void __launch_bounds__(kGemmThreads) moe_grouped_fp8_mma_kernel(MoeGroupedGemmParams p) {
  constexpr int kW = kGateUp ? 2 : 1;
  const int64_t e = blockIdx.y;
  const int32_t begin = p.offsets ? p.offsets[e] : 0, end = p.offsets ? p.offsets[e + 1] : p.rows;
  if (begin >= end) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * 128 + warp * 32;
  if (n0 >= p.n) return;

  const int64_t kblocks = p.k / 128;
  const int64_t per_split = (kblocks + p.splits - 1) / p.splits;
  const int64_t kb0 = int64_t(blockIdx.z) * per_split;
  const int64_t kb1 = kb0 + per_split < kblocks ? kb0 + per_split : kblocks;
  const uint8_t* wrow[kW][4];  // this lane's weight rows: columns n0 + 8 i + g
  const float* wscale[kW];
#pragma unroll
  for (int w = 0; w < kW; ++w) {
    const void* wbase = p.w0 ? reinterpret_cast<const void*>(w == 0 ? p.w0[e] : p.w1[e]) : p.w_dense;
    const void* sbase = p.s0 ? reinterpret_cast<const void*>(w == 0 ? p.s0[e] : p.s1[e]) : p.s_dense;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t col = n0 + 8 * i + g;
      wrow[w][i] = col < p.n ? static_cast<const uint8_t*>(wbase) + col * p.k : nullptr;
    }
    wscale[w] = static_cast<const float*>(sbase) + (n0 / 128) * kblocks;
  }
  const uint8_t* a = static_cast<const uint8_t*>(p.a);

  for (int32_t m0 = begin; m0 < end; m0 += 16) {
    const int32_t r0 = m0 + g, r1 = m0 + g + 8;
    const int64_t x0 = r0 < end ? (p.row_index ? p.row_index[r0] : r0) : -1;
    const int64_t x1 = r1 < end ? (p.row_index ? p.row_index[r1] : r1) : -1;
    const uint8_t* arow0 = x0 >= 0 ? a + x0 * p.a_stride : nullptr;
    const uint8_t* arow1 = x1 >= 0 ? a + x1 * p.a_stride : nullptr;
    const float* ascale0 = x0 >= 0 ? p.a_scale + x0 * p.a_scale_stride : nullptr;
    const float* ascale1 = x1 >= 0 ? p.a_scale + x1 * p.a_scale_stride : nullptr;
    float acc[kW][4][4];
    zero(acc);

    for (int64_t kb = kb0; kb < kb1; ++kb) {
      const int64_t kl = kb * 128 + 32 * t4;  // this lane's 32 k values of the block
      uint4 av0[2] = {}, av1[2] = {};
      if (arow0) { av0[0] = load16(arow0 + kl); av0[1] = load16(arow0 + kl + 16); }
      if (arow1) { av1[0] = load16(arow1 + kl); av1[1] = load16(arow1 + kl + 16); }
      uint4 bv[kW][4][2];
#pragma unroll
      for (int w = 0; w < kW; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int l = 0; l < 2; ++l)
            bv[w][i][l] = wrow[w][i] ? load16(wrow[w][i] + kl + 16 * l) : make_uint4(0, 0, 0, 0);
      float part[kW][4][4];
      zero(part);
      const uint32_t* A0 = reinterpret_cast<const uint32_t*>(av0);  // 8 words of 4 k values
      const uint32_t* A1 = reinterpret_cast<const uint32_t*>(av1);
#pragma unroll
      for (int s = 0; s < 4; ++s) {
#pragma unroll
        for (int w = 0; w < kW; ++w)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const uint32_t* B = reinterpret_cast<const uint32_t*>(bv[w][i]);
            mma_e4m3(part[w][i], A0[2 * s], A1[2 * s], A0[2 * s + 1], A1[2 * s + 1], B[2 * s], B[2 * s + 1]);
          }
      }
      const float sa0 = ascale0 ? ascale0[kb] : 0.0f, sa1 = ascale1 ? ascale1[kb] : 0.0f;
#pragma unroll
      for (int w = 0; w < kW; ++w) {
        const float sw = wscale[w][kb];
        const float f0 = sa0 * sw, f1 = sa1 * sw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[w][i][0] = fmaf(part[w][i][0], f0, acc[w][i][0]);
          acc[w][i][1] = fmaf(part[w][i][1], f0, acc[w][i][1]);
          acc[w][i][2] = fmaf(part[w][i][2], f1, acc[w][i][2]);
          acc[w][i][3] = fmaf(part[w][i][3], f1, acc[w][i][3]);
        }
      }
    }
    if (p.splits == 1) {
      store_tile<kGateUp, kW>(p, 0, acc, n0, t4, r0, r1, end);
      continue;
    }
    // partial[split][row][w * n + col]: this split's raw sums.
    float* part_out = p.partial + int64_t(blockIdx.z) * p.partial_rows * (kW * p.n);
    for_tile_pairs(n0, t4, r0, r1, end, p.n, [&](int i, int half, int32_t r, int64_t col) {
#pragma unroll
      for (int w = 0; w < kW; ++w)
        *reinterpret_cast<float2*>(part_out + int64_t(r) * (kW * p.n) + w * p.n + col) =
            make_float2(acc[w][i][2 * half], acc[w][i][2 * half + 1]);
    });
  }
}

// Adds up the splits' partial sums of every row (in split order) and stores them as the kernel
// with one split would: one thread per row and column pair.
template <bool kGateUp>
__global__ void __launch_bounds__(256) moe_split_reduce_kernel(MoeGroupedGemmParams p) {
  constexpr int kW = kGateUp ? 2 : 1;
  const int64_t rows = p.offsets ? p.offsets[p.experts] : p.rows;
  const int64_t pairs = p.n / 2;
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= rows * pairs) return;
  const int32_t r = int32_t(item / pairs);
  const int64_t col = (item % pairs) * 2;
  float sum[kW][2] = {};
  for (int s = 0; s < p.splits; ++s) {
    const float* src = p.partial + (int64_t(s) * p.partial_rows + r) * (kW * p.n) + col;
#pragma unroll
    for (int w = 0; w < kW; ++w) {
      const float2 v = *reinterpret_cast<const float2*>(src + w * p.n);
      sum[w][0] += v.x;
      sum[w][1] += v.y;
    }
  }
  store_pair<kGateUp>(p, 0, r, col, sum[0][0], sum[0][1], sum[kW - 1][0], sum[kW - 1][1]);
}

// ---- Tiled FP8 kernel for many rows per expert (prefill) ----
// The streaming kernels above re-read an expert's weights for every 16 rows; with hundreds of
// rows per expert that is the whole cost. Here a CTA owns a tile of 64 of an expert's rows and
// 128 output columns (of gate and of up for gate_up: 64 + 64), stages 128-wide K blocks of the
// quantized rows and of the weights in shared memory (cp.async, two stages, 16-byte chunks
// swizzled by row so ldmatrix is conflict-free), and 8 warps (2 along M x 4 along N) run
// mma.sync m16n8k32 e4m3 over them, each warp 32 rows x 32 columns (x2 for gate_up: 16 gate +
// 16 up), with the per-block scale promotion of the streaming FP8 kernel. Tiles come from
// moe_tiles_kernel: (expert, first row) for every 64 rows of every expert, written on the device.
constexpr int kTiledRows = int(kMoeTileRows), kTiledThreads = 256, kTiledStages = 2;

// tiles[i] = expert << 16 | tile index within the expert, for i < *tile_count (experts' rows from
// offsets). One block; the scan over experts is serial (<= 1024 of them, once per layer).
__global__ void __launch_bounds__(1024) moe_tiles_kernel(const int32_t* offsets, int64_t experts,
                                                         int32_t* tiles, int32_t* tile_count) {
  __shared__ int32_t first[1025];
  const int e = threadIdx.x;
  if (e == 0) {
    int32_t n = 0;
    for (int64_t i = 0; i < experts; ++i) {
      first[i] = n;
      n += (offsets[i + 1] - offsets[i] + kTiledRows - 1) / kTiledRows;
    }
    first[experts] = n;
    *tile_count = n;
  }
  __syncthreads();
  for (int64_t i = e; i < experts; i += blockDim.x)
    for (int32_t t = first[i]; t < first[i + 1]; ++t) tiles[t] = int32_t(i << 16) | (t - first[i]);
}

// Shared-memory byte offset of 16-byte chunk c (0..7) of row r of a [rows][128 bytes] tile.
__device__ __forceinline__ uint32_t tiled_chunk(int r, int c) { return uint32_t(r * 128 + ((c ^ (r & 7)) << 4)); }

template <bool kGateUp>
__global__ void __launch_bounds__(kTiledThreads, 1) moe_grouped_fp8_tiled_kernel(MoeGroupedGemmParams p) {
  constexpr int kW = kGateUp ? 2 : 1;
  constexpr int kColsPerW = 128 / kW;        // columns of each weight matrix in the CTA tile
  constexpr int kWarpCols = kColsPerW / 4;   // per warp and matrix: 32 (down) or 16 (gate/up)
  constexpr int kNt = kWarpCols / 8;         // n8 tiles per warp and matrix
  constexpr int kABytes = kTiledRows * 128, kBBytes = kW * kColsPerW * 128;
  extern __shared__ __align__(128) unsigned char smem_tl[];
  if (int64_t(blockIdx.y) >= *p.tile_count) return;
  const int32_t tile = p.tiles[blockIdx.y];
  const int64_t e = tile >> 16;
  const int32_t begin = p.offsets[e] + (tile & 0xffff) * kTiledRows, end = p.offsets[e + 1];
  const int64_t c0 = int64_t(blockIdx.x) * kColsPerW;  // first column of each matrix
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int wm = warp >> 2, wn = warp & 3;  // warp's rows [32 wm, +32), columns [kWarpCols wn, +)
  const int64_t kblocks = p.k / 128;

  const uint8_t* wbase[kW];
  const float* wscale[kW];
#pragma unroll
  for (int w = 0; w < kW; ++w) {
    wbase[w] = reinterpret_cast<const uint8_t*>(w == 0 ? p.w0[e] : p.w1[e]);
    wscale[w] = reinterpret_cast<const float*>(w == 0 ? p.s0[e] : p.s1[e]) + (c0 / 128) * kblocks;
  }
  const uint8_t* a = static_cast<const uint8_t*>(p.a);
  // This thread's copies per stage: A chunks (2) and B chunks (kW * 2 or 4).
  auto load_stage = [&](int64_t kb, int st) {
    unsigned char* sa = smem_tl + st * (kABytes + kBBytes);
    unsigned char* sb = sa + kABytes;
    for (int i = tid; i < kTiledRows * 8; i += kTiledThreads) {
      const int r = i >> 3, c = i & 7;
      void* dst = sa + tiled_chunk(r, c);
      const int32_t row = begin + r;
      if (row < end) {
        const int64_t src_row = p.row_index ? p.row_index[row] : row;
        cp_async16(dst, a + src_row * p.a_stride + kb * 128 + c * 16);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
    for (int i = tid; i < kW * kColsPerW * 8; i += kTiledThreads) {
      const int r = i >> 3, c = i & 7;  // r: w * kColsPerW + column
      const int col = r % kColsPerW;
      const uint8_t* wb = r < kColsPerW ? wbase[0] : wbase[kW - 1];  // no dynamic index: registers
      cp_async16(sb + tiled_chunk(r, c), wb + (c0 + col) * p.k + kb * 128 + c * 16);
    }
  };

  float acc[kW][2][kNt][4];
  zero(acc);
  // Activation scales of this thread's four rows (rows 32 wm + 16 mt + g + 8 h).
  const float* ascale[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t row = begin + 32 * wm + 16 * mt + g + 8 * h;
      const int64_t src_row = row < end ? (p.row_index ? p.row_index[row] : row) : -1;
      ascale[mt][h] = src_row >= 0 ? p.a_scale + src_row * p.a_scale_stride : nullptr;
    }

  load_stage(0, 0);
  cp_async_commit();
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const int st = int(kb & 1);
    if (kb + 1 < kblocks) {
      load_stage(kb + 1, st ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const unsigned char* sa = smem_tl + st * (kABytes + kBBytes);
    const unsigned char* sb = sa + kABytes;
    float part[kW][2][kNt][4];
    zero(part);
#pragma unroll
    for (int s = 0; s < 4; ++s) {  // k32 steps: bytes [32 s, 32 s + 32) of the block
      uint32_t af[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int r = 32 * wm + 16 * mt + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(af[mt], sa + tiled_chunk(r, 2 * s + (lane >> 4)));
      }
#pragma unroll
      for (int w = 0; w < kW; ++w) {
#pragma unroll
        for (int np = 0; np < kNt / 2; ++np) {  // two n8 tiles per ldmatrix.x4
          const int r = w * kColsPerW + kWarpCols * wn + 16 * np + (lane & 7) + (lane >> 4) * 8;
          uint32_t bf[4];
          ldmatrix_x4(bf, sb + tiled_chunk(r, 2 * s + ((lane >> 3) & 1)));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma_e4m3(part[w][mt][2 * np], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[0], bf[1]);
            mma_e4m3(part[w][mt][2 * np + 1], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[2], bf[3]);
          }
        }
      }
    }
#pragma unroll
    for (int w = 0; w < kW; ++w) {
      const float sw = wscale[w][kb];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const float f0 = ascale[mt][0] ? ascale[mt][0][kb] * sw : 0.0f;
        const float f1 = ascale[mt][1] ? ascale[mt][1][kb] * sw : 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) {
          acc[w][mt][nt][0] = fmaf(part[w][mt][nt][0], f0, acc[w][mt][nt][0]);
          acc[w][mt][nt][1] = fmaf(part[w][mt][nt][1], f0, acc[w][mt][nt][1]);
          acc[w][mt][nt][2] = fmaf(part[w][mt][nt][2], f1, acc[w][mt][nt][2]);
          acc[w][mt][nt][3] = fmaf(part[w][mt][nt][3], f1, acc[w][mt][nt][3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      const int64_t col = c0 + kWarpCols * wn + 8 * nt + 2 * t4;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int32_t r = begin + 32 * wm + 16 * mt + g + 8 * h;
        if (r >= end) continue;
        store_pair<kGateUp>(p, 0, r, col, acc[0][mt][nt][2 * h], acc[0][mt][nt][2 * h + 1],
                            acc[kW - 1][mt][nt][2 * h], acc[kW - 1][mt][nt][2 * h + 1]);
      }
    }
  }
}

// One block per token; a token's slots are summed in slot order, then added to out once.
__global__ void __launch_bounds__(kUnpermuteThreads) moe_unpermute_kernel(MoeUnpermuteParams p) {
  const int64_t t = blockIdx.x;
  float* o = p.out + t * p.out_stride;
  for (int64_t d = threadIdx.x; d < p.width; d += blockDim.x) {
    float sum = 0.0f;
    for (int64_t j = 0; j < p.top_k; ++j) {
      const int32_t slot = p.slot_of[t * p.top_k + j];
      if (slot < 0) continue;
      sum += __fmul_rn(p.weights[t * p.weights_stride + j], p.y[int64_t(slot) * p.y_stride + d]);
    }
    o[d] += sum;
  }
}

}  // namespace

void launch_moe_align(const MoeAlignParams& p, cudaStream_t stream) {
  const size_t smem = size_t(2 * p.experts) * sizeof(int32_t);
  moe_align_kernel<<<1, kAlignThreads, smem, stream>>>(p);
}

void launch_moe_grouped_gemm(const MoeGroupedGemmParams& p, cudaStream_t stream) {
  const dim3 grid(unsigned((p.n + 127) / 128), unsigned(p.experts), unsigned(p.fp8_act ? p.splits : 1));
  const bool fp8 = p.w_dtype == DType::kF8E4M3;
  if (p.fp8_act && p.tiles) {
    const int cols = p.gate_up ? 64 : 128;  // of each weight matrix per CTA
    const dim3 tgrid(unsigned(p.n / cols), unsigned(p.max_tiles));
    const int smem = kTiledStages * (kTiledRows * 128 + 128 * 128);
    if (p.gate_up) {
      cudaFuncSetAttribute(moe_grouped_fp8_tiled_kernel<true>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      moe_grouped_fp8_tiled_kernel<true><<<tgrid, kTiledThreads, smem, stream>>>(p);
    } else {
      cudaFuncSetAttribute(moe_grouped_fp8_tiled_kernel<false>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      moe_grouped_fp8_tiled_kernel<false><<<tgrid, kTiledThreads, smem, stream>>>(p);
    }
  } else if (p.fp8_act) {
    if (p.gate_up) {
      moe_grouped_fp8_mma_kernel<true><<<grid, kGemmThreads, 0, stream>>>(p);
    } else {
      moe_grouped_fp8_mma_kernel<false><<<grid, kGemmThreads, 0, stream>>>(p);
    }
    if (p.splits > 1) {
      const int64_t items = p.partial_rows * (p.n / 2);
      const unsigned blocks = unsigned((items + 255) / 256);
      if (p.gate_up) {
        moe_split_reduce_kernel<true><<<blocks, 256, 0, stream>>>(p);
      } else {
        moe_split_reduce_kernel<false><<<blocks, 256, 0, stream>>>(p);
      }
    }
  } else if (fp8 && p.gate_up) {
    moe_grouped_gemm_kernel<true, true><<<grid, kGemmThreads, 0, stream>>>(p);
  } else if (fp8) {
    moe_grouped_gemm_kernel<true, false><<<grid, kGemmThreads, 0, stream>>>(p);
  } else if (p.gate_up) {
    moe_grouped_gemm_kernel<false, true><<<grid, kGemmThreads, 0, stream>>>(p);
  } else {
    moe_grouped_gemm_kernel<false, false><<<grid, kGemmThreads, 0, stream>>>(p);
  }
}

void launch_moe_tiles(const int32_t* offsets, int64_t experts, int32_t* tiles, int32_t* tile_count,
                      cudaStream_t stream) {
  moe_tiles_kernel<<<1, 1024, 0, stream>>>(offsets, experts, tiles, tile_count);
}

void launch_moe_unpermute(const MoeUnpermuteParams& p, cudaStream_t stream) {
  moe_unpermute_kernel<<<unsigned(p.tokens), kUnpermuteThreads, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
