// MLA decode attention on tensor cores for a bf16 latent cache of DeepSeek's width
// (kv_lora_rank 512 + rope 64), absorbed form (DeepSeek-V2 paper, 2.1.3):
// score_j = (q_latent . c_j + q_pe . k_pe_j) * scale, out = softmax(score) @ c[:, :512].
// Three kernels, picked in launch_mla_decode_mma (switches for comparisons there):
// - mla_decode_wgmma_kernel, wgmma over 64 heads: every head count when the TMA engine can read
//   the cache (page size 8/16/32/64), else more than 32 heads with cp.async;
// - otherwise mla_decode_h16_kernel (up to 16 heads), 32-key blocks in two cp.async stages, two
//   CTAs per SM;
// - otherwise mla_decode_mma_kernel (17 to 32 heads; below), mma.sync.
// All share the split scheme and the combine kernel; none synchronizes with the host or
// allocates, so they are safe in CUDA graphs. Thread-safety: stateless launches.
//
// mla_decode_mma_kernel: one CTA per (head group of 16 * NHT heads, KV split, sequence): every key
// block is loaded once into shared memory (cp.async, two stages) and used by all heads of the
// group, so a sequence's cache is read from memory once per group instead of once per head. Warps
// are (head tile ht of 16 heads) x (slice ds of 4): for scores, warp (ht, ds) computes the 16 heads
// x 16 keys [16 ds, 16 ds + 16) of the 64-key block over all 576 dims; after a barrier each warp
// reads the 16 x 64 scores of its head tile, runs the online softmax (base 2) and accumulates
// out[16 heads, dims 128 ds .. 128 ds + 128). mma.sync m16n8k16 bf16 with f32 accumulation; the
// query and the probabilities are rounded to bf16 (as FlashMLA does), so the result is
// bf16-accurate (relative error about 3e-3), not f32-accurate: the f32 cache keeps the exact SIMT
// kernel (smxx_mla_decode.cu).
//
// Shared-memory rows are padded from 576 to 584 bf16 (1168 bytes = 73 x 16): ldmatrix's eight
// row addresses then fall on distinct bank groups.
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/sm90.cuh"
#include "ops/cuda/tma_map.h"

#include <cuda.h>

#include <algorithm>
#include <cstdlib>

namespace tandem::ops::cuda {

namespace {

constexpr int kLora = 512, kRope = 64, kWidth = kLora + kRope;
constexpr int kRowPad = kWidth + 8;          // bf16 per shared row
constexpr int kKeys = 64;                    // keys per block
constexpr int kChunks = kWidth * 2 / 16;     // 16-byte chunks per cache row (72)
constexpr int kSPad = kKeys + 4;             // f32 per score row
constexpr float kLog2e = 1.4426950408889634f;
constexpr int32_t kSlotPast = -2;            // key past the split's end
constexpr int32_t kSlotBad = -1;             // slot out of the cache: poisons the scores

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// Keys [begin, end) of this CTA's split of sequence b (every kernel here: grid y = split).
// Splits are multiples of `granule` keys (the kernels that load whole 64-key blocks of pages
// need block boundaries). A length outside [1, max_pages * page_size] is reported once and
// leaves the range empty.
__device__ __forceinline__ void split_range(const MlaDecodeParams& p, int64_t b, int split, int64_t granule,
                                            int64_t& begin, int64_t& end) {
  const int64_t len = p.seq_lens[b];
  begin = end = 0;
  if (len < 1 || len > p.max_pages * p.page_size) {
    if (threadIdx.x == 0 && split == 0 && blockIdx.x == 0)
      report_error(p.error, kErrDecodeSeqLen, len, p.max_pages * p.page_size, b);
    return;
  }
  const int64_t per_split = (len + p.num_splits * granule - 1) / (p.num_splits * granule) * granule;
  begin = min64(len, split * per_split);
  end = min64(len, begin + per_split);
}
// kRows padded key rows (kv[r], kRowPad bf16 each) from the cache by kThreads threads, 16-byte
// cp.async in one commit group; rows of invalid keys (slot < 0) are zero-filled: a zero
// probability times stale shared memory could be NaN times zero.
template <int kRows, int kThreads>
__device__ __forceinline__ void load_rows_cp_async(__nv_bfloat16 (*kv)[kRowPad], const int32_t* slot,
                                                   const __nv_bfloat16* cache) {
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    void* dst = &kv[r][c * 8];
    if (slot[r] >= 0) {
      cp_async16(dst, cache + int64_t(slot[r]) * kWidth + c * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  cp_async_commit();
}
// The cache slot of key j of sequence b, whose page-table entry is `page`: kSlotPast at or past
// `end`, kSlotBad (reported) outside the cache.
__device__ __forceinline__ int32_t key_slot(const MlaDecodeParams& p, int64_t b, int64_t j, int64_t end,
                                            int32_t page) {
  if (j >= end) return kSlotPast;
  const int64_t s = int64_t(page) * p.page_size + j % p.page_size;
  if (s < 0 || s >= p.num_slots) {
    report_error(p.error, kErrDecodeSlot, s, p.num_slots, b);
    return kSlotBad;
  }
  return int32_t(s);
}

// d[64 x 32] += A[64 x 16] (smem, K-major) * B[16 x 32] (smem, K-major); f32 accumulate.
__device__ __forceinline__ void wgmma_m64n32(float (&d)[16], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(da), "l"(db), "r"(1));
}

// d[64 x 64] += A[64 x 16] (smem, K-major) * B[16 x 64] (smem, K-major); f32 accumulate.
__device__ __forceinline__ void wgmma_m64n64(float (&d)[32], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(1));
}

// d[64 x 256] += A[64 x 16] (smem, K-major) * B[16 x 256] (smem, MN-major); f32 accumulate.
__device__ __forceinline__ void wgmma_m64n256_tb(float (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      WGMMA_D128_REGS
      "%128, %129, p, 1, 1, 0, 1;\n"
      "}\n"
      : WGMMA_D128_OUTS(d)
      : "l"(da), "l"(db), "r"(1));
}

template <int NHT>
struct Smem {
  static constexpr int kHeads = 16 * NHT;
  __nv_bfloat16 q[kHeads][kRowPad];
  __nv_bfloat16 kv[2][kKeys][kRowPad];
  float s[kHeads][kSPad];
  int32_t slot[2][kKeys];
};

template <int NHT>
__global__ void __launch_bounds__(NHT * 128) mla_decode_mma_kernel(MlaDecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem<NHT>& sm = *reinterpret_cast<Smem<NHT>*>(smem_raw);
  constexpr int kThreads = NHT * 128, kHeads = 16 * NHT;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int ht = warp >> 2, ds = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int64_t h0 = int64_t(blockIdx.x) * kHeads;
  const int split = blockIdx.y;
  const int64_t b = blockIdx.z;
  const auto* cache = static_cast<const __nv_bfloat16*>(p.cache);
  const int32_t* pages = p.page_table + b * p.max_pages;

  int64_t begin, end;
  split_range(p, b, split, 1, begin, end);
  const int nblocks = int((end - begin + kKeys - 1) / kKeys);

  // The query group as bf16 rows [q_latent | q_pe]; heads past p.heads are zero.
  for (int i = tid; i < kHeads * (kWidth / 2); i += kThreads) {
    const int r = i / (kWidth / 2), c = (i % (kWidth / 2)) * 2;
    float2 v = make_float2(0.0f, 0.0f);
    if (h0 + r < p.heads) {
      const float* src = c < kLora ? p.q_latent + b * p.ql_stride_b + (h0 + r) * p.ql_stride_h + c
                                   : p.q_pe + b * p.qp_stride_b + (h0 + r) * p.qp_stride_h + (c - kLora);
      v = make_float2(src[0], src[1]);
    }
    *reinterpret_cast<__nv_bfloat162*>(&sm.q[r][c]) = __floats2bfloat162_rn(v.x, v.y);
  }

  // The page of this thread's key of block blk (tid < kKeys), loaded one block before
  // fill_slots needs it: under full memory traffic a load takes microseconds, and fill_slots
  // runs just before a barrier.
  auto fetch_page = [&](int blk) -> int32_t {
    const int64_t j = begin + int64_t(blk) * kKeys + tid;
    return tid < kKeys && j < end ? __ldg(&pages[j / p.page_size]) : 0;
  };
  auto fill_slots = [&](int blk, int stage, int32_t page) {
    if (tid < kKeys) {
      sm.slot[stage][tid] = key_slot(p, b, begin + int64_t(blk) * kKeys + tid, end, page);
    }
  };
  auto load_block = [&](int stage) {
    load_rows_cp_async<kKeys, kThreads>(sm.kv[stage], sm.slot[stage], cache);
  };

  if (nblocks > 0) fill_slots(0, 0, fetch_page(0));
  int32_t page_ahead = fetch_page(1);  // block blk + 1's, in iteration blk
  __syncthreads();
  if (nblocks > 0) load_block(0);

  float o[16][4];  // out[16 heads of ht][128 ds + 8 n + {2t, 2t+1}], rows g and g + 8
#pragma unroll
  for (int n = 0; n < 16; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // running max (log2 units) of rows g, g + 8
  float l_row[2] = {0.0f, 0.0f};            // this thread's part of the running sum
  const float scale_log2 = p.scale * kLog2e;

  for (int blk = 0; blk < nblocks; ++blk) {
    const int stage = blk & 1;
    if (blk + 1 < nblocks) fill_slots(blk + 1, stage ^ 1, page_ahead);
    page_ahead = fetch_page(blk + 2);
    cp_async_wait_all();
    __syncthreads();  // block blk landed; slots of blk + 1 visible; blk - 1 fully consumed
    if (blk + 1 < nblocks) load_block(stage ^ 1);

    // Scores: 16 heads x 16 keys [16 ds, 16 ds + 16) over 576 dims.
    float acc[2][4] = {};
    {
      const __nv_bfloat16* qa = &sm.q[ht * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][(lane >> 4) * 8];
      const __nv_bfloat16* kb = &sm.kv[stage][ds * 16 + (lane & 7) + (lane >> 4) * 8][((lane >> 3) & 1) * 8];
#pragma unroll 4
      for (int k = 0; k < kWidth / 16; ++k) {
        uint32_t a[4], bb[4];
        ldmatrix_x4(a, qa + k * 16);
        ldmatrix_x4(bb, kb + k * 16);
        mma_bf16(acc[0], a, bb[0], bb[1]);
        mma_bf16(acc[1], a, bb[2], bb[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int key = ds * 16 + n * 8 + 2 * t;
      float v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int32_t slot = sm.slot[stage][key + (i & 1)];
        v[i] = slot == kSlotPast ? -INFINITY
               : slot == kSlotBad ? __int_as_float(0x7fc00000)
                                  : acc[n][i] * scale_log2;
      }
      *reinterpret_cast<float2*>(&sm.s[ht * 16 + g][key]) = make_float2(v[0], v[1]);
      *reinterpret_cast<float2*>(&sm.s[ht * 16 + g + 8][key]) = make_float2(v[2], v[3]);
    }
    __syncthreads();

    // Online softmax over the block for rows g, g + 8; probabilities as A fragments.
    uint32_t pa[4][4];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float* srow = sm.s[ht * 16 + g + 8 * r];
      float sv[4][4];
      float mx = -INFINITY;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const float2 lo = *reinterpret_cast<const float2*>(srow + kk * 16 + 2 * t);
        const float2 hi = *reinterpret_cast<const float2*>(srow + kk * 16 + 8 + 2 * t);
        sv[kk][0] = lo.x; sv[kk][1] = lo.y; sv[kk][2] = hi.x; sv[kk][3] = hi.y;
        mx = fmaxf(mx, fmaxf(fmaxf(lo.x, lo.y), fmaxf(hi.x, hi.y)));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_row[r], mx);  // finite: every block holds a valid key
      const float alpha = exp2f(m_row[r] - m_new);
      m_row[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        float e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[i] = exp2f(sv[kk][i] - m_new);
          sum += e[i];
        }
        pa[kk][r] = pack_bf16(e[0], e[1]);      // a0 / a1: cols 2t, 2t + 1
        pa[kk][r + 2] = pack_bf16(e[2], e[3]);  // a2 / a3: cols 2t + 8, 2t + 9
      }
      l_row[r] = l_row[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }

    // out[16, 128 ds .. +128) += P[16, 64] @ C[64, 128 ds .. +128).
    {
      const __nv_bfloat16* vb =
          &sm.kv[stage][(lane & 7) + ((lane >> 3) & 1) * 8][ds * 128 + (lane >> 4) * 8];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int np = 0; np < 8; ++np) {
          uint32_t bb[4];
          ldmatrix_x4_trans(bb, vb + kk * 16 * kRowPad + np * 16);
          mma_bf16(o[2 * np], pa[kk], bb[0], bb[1]);
          mma_bf16(o[2 * np + 1], pa[kk], bb[2], bb[3]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_row[r] += __shfl_xor_sync(0xffffffffu, l_row[r], 1);
    l_row[r] += __shfl_xor_sync(0xffffffffu, l_row[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t h = h0 + ht * 16 + g + 8 * r;
    if (h >= p.heads) continue;
    if (p.num_splits == 1) {
      // No valid key (bad length): l = 0 and the row is NaN, as the CPU reference.
      const float inv = l_row[r] > 0.0f ? 1.0f / l_row[r] : __int_as_float(0x7fc00000);
      float* out = p.out + b * p.out_stride_b + h * p.out_stride_h + ds * 128 + 2 * t;
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<float2*>(out + n * 8) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    } else {
      float* ws = p.workspace + ((b * p.heads + h) * p.num_splits + split) * (kLora + 2);
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<float2*>(ws + ds * 128 + n * 8 + 2 * t) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
      if (ds == 0 && t == 0) {
        ws[kLora] = m_row[r];
        ws[kLora + 1] = l_row[r];
      }
    }
  }
}

// ---- Up to 16 heads (memory-bound) where the TMA kernel cannot read the cache (page sizes
// other than 8/16/32/64): one CTA of 4 warps per (split, sequence), two per SM (84 KB each, so
// the launcher makes twice the splits), streams 32-key blocks through kH16Stages cp.async
// stages, so kH16Stages - 1 blocks (37 KB each) are in flight while one is computed; with two
// CTAs per SM that kept the copy rate of the TMA kernel (84% of copy bandwidth on an H100),
// where one CTA with five stages did not (54%). Scores: warp ds holds the query's A fragments for dims [144 ds, 144 ds + 144)
// in registers (loaded once) and computes partial scores of all 16 heads x 32 keys; the four
// partials meet in shared memory. Softmax and P @ C as in mla_decode_mma_kernel (out dims
// [128 ds, 128 ds + 128) per warp).
constexpr int kH16Keys = 32;
constexpr int kH16Steps = kWidth / 16 / 4;  // k-steps of 16 dims per warp (9)

template <int kH16Stages>
struct H16Smem {
  __nv_bfloat16 kv[kH16Stages][kH16Keys][kRowPad];  // the last stage first holds the query
  float s[4][16][kH16Keys + 4];                      // partial scores per warp
  int32_t slot[kH16Stages][kH16Keys];
};
constexpr int kH16CtaStages = 2;

template <int kH16Stages>
__global__ void __launch_bounds__(128) mla_decode_h16_kernel(MlaDecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  H16Smem<kH16Stages>& sm = *reinterpret_cast<H16Smem<kH16Stages>*>(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, ds = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.y;
  const int64_t b = blockIdx.z;
  const auto* cache = static_cast<const __nv_bfloat16*>(p.cache);
  const int32_t* pages = p.page_table + b * p.max_pages;

  int64_t begin, end;
  split_range(p, b, split, 1, begin, end);
  const int nblocks = int((end - begin + kH16Keys - 1) / kH16Keys);

  // The query as bf16 rows [q_latent | q_pe] in the last stage; heads past p.heads are zero.
  __nv_bfloat16(*q)[kRowPad] = sm.kv[kH16Stages - 1];
  for (int i = tid; i < 16 * (kWidth / 2); i += 128) {
    const int r = i / (kWidth / 2), c = (i % (kWidth / 2)) * 2;
    float2 v = make_float2(0.0f, 0.0f);
    if (r < p.heads) {
      const float* src = c < kLora ? p.q_latent + b * p.ql_stride_b + r * p.ql_stride_h + c
                                   : p.q_pe + b * p.qp_stride_b + r * p.qp_stride_h + (c - kLora);
      v = make_float2(src[0], src[1]);
    }
    *reinterpret_cast<__nv_bfloat162*>(&q[r][c]) = __floats2bfloat162_rn(v.x, v.y);
  }

  // The page of this thread's key of block blk (tid < kH16Keys), loaded one block before
  // fill_slots needs it: under full memory traffic a load takes microseconds, and fill_slots
  // runs just before a barrier.
  auto fetch_page = [&](int blk) -> int32_t {
    const int64_t j = begin + int64_t(blk) * kH16Keys + tid;
    return tid < kH16Keys && j < end ? __ldg(&pages[j / p.page_size]) : 0;
  };
  auto fill_slots = [&](int blk, int stage, int32_t page) {
    if (tid < kH16Keys) {
      sm.slot[stage][tid] = key_slot(p, b, begin + int64_t(blk) * kH16Keys + tid, end, page);
    }
  };
  auto load_block = [&](int stage) {
    load_rows_cp_async<kH16Keys, 128>(sm.kv[stage], sm.slot[stage], cache);
  };
#pragma unroll
  for (int s = 0; s < kH16Stages - 1; ++s)
    if (s < nblocks) fill_slots(s, s, fetch_page(s));
  int32_t page_ahead = fetch_page(kH16Stages - 1);  // block blk + kH16Stages - 1's, in iteration blk
  __syncthreads();
  uint32_t qf[kH16Steps][4];  // A fragments of the query, dims [144 ds, 144 ds + 144)
  {
    const __nv_bfloat16* qa = &q[(lane & 7) + ((lane >> 3) & 1) * 8][(lane >> 4) * 8];
#pragma unroll
    for (int k = 0; k < kH16Steps; ++k) ldmatrix_x4(qf[k], qa + (ds * kH16Steps + k) * 16);
  }
  // Stages 0 .. kH16Stages - 2; the query's stage is first written after the loop's barrier.
#pragma unroll
  for (int s = 0; s < kH16Stages - 1; ++s) {
    if (s < nblocks) {
      load_block(s);
    } else {
      cp_async_commit();
    }
  }

  float o[16][4];  // out[16 heads][128 ds + 8 n + {2t, 2t+1}], rows g and g + 8
#pragma unroll
  for (int n = 0; n < 16; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};
  float l_row[2] = {0.0f, 0.0f};
  const float scale_log2 = p.scale * kLog2e;

  for (int blk = 0; blk < nblocks; ++blk) {
    const int stage = blk % kH16Stages;
    const int next = blk + kH16Stages - 1;
    if (next < nblocks) fill_slots(next, next % kH16Stages, page_ahead);
    page_ahead = fetch_page(next + 1);
    cp_async_wait<kH16Stages - 2>();  // one group per block: block blk has landed
    __syncthreads();  // blk visible to all; slots of next visible; blk - 1 fully consumed
    if (next < nblocks) {
      load_block(next % kH16Stages);
    } else {
      cp_async_commit();
    }

    // Partial scores: 16 heads x 32 keys over this warp's 144 dims; four independent chains.
    float acc[4][4] = {};
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      const __nv_bfloat16* kb = &sm.kv[stage][np * 16 + (lane & 7) + (lane >> 4) * 8]
                                      [ds * kH16Steps * 16 + ((lane >> 3) & 1) * 8];
#pragma unroll
      for (int k = 0; k < kH16Steps; ++k) {
        uint32_t bb[4];
        ldmatrix_x4(bb, kb + k * 16);
        mma_bf16(acc[2 * np], qf[k], bb[0], bb[1]);
        mma_bf16(acc[2 * np + 1], qf[k], bb[2], bb[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      *reinterpret_cast<float2*>(&sm.s[ds][g][n * 8 + 2 * t]) = make_float2(acc[n][0], acc[n][1]);
      *reinterpret_cast<float2*>(&sm.s[ds][g + 8][n * 8 + 2 * t]) = make_float2(acc[n][2], acc[n][3]);
    }
    __syncthreads();

    // Online softmax over the block for rows g, g + 8; probabilities as A fragments.
    uint32_t pa[2][4];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sv[2][4];
      float mx = -INFINITY;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          const int key = kk * 16 + hi * 8 + 2 * t;
          float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            const float2 v = *reinterpret_cast<const float2*>(&sm.s[w][g + 8 * r][key]);
            sum.x += v.x;
            sum.y += v.y;
          }
          const float part[2] = {sum.x, sum.y};
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int32_t slot = sm.slot[stage][key + c];
            const float v = slot == kSlotPast ? -INFINITY
                            : slot == kSlotBad ? __int_as_float(0x7fc00000)
                                               : part[c] * scale_log2;
            sv[kk][hi * 2 + c] = v;
            mx = fmaxf(mx, v);
          }
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_row[r], mx);  // finite: every block holds a valid key
      const float alpha = exp2f(m_row[r] - m_new);
      m_row[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        float e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[i] = exp2f(sv[kk][i] - m_new);
          sum += e[i];
        }
        pa[kk][r] = pack_bf16(e[0], e[1]);      // a0 / a1: cols 2t, 2t + 1
        pa[kk][r + 2] = pack_bf16(e[2], e[3]);  // a2 / a3: cols 2t + 8, 2t + 9
      }
      l_row[r] = l_row[r] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }

    // out[16, 128 ds .. +128) += P[16, 32] @ C[32, 128 ds .. +128).
    {
      const __nv_bfloat16* vb =
          &sm.kv[stage][(lane & 7) + ((lane >> 3) & 1) * 8][ds * 128 + (lane >> 4) * 8];
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int np = 0; np < 8; ++np) {
          uint32_t bb[4];
          ldmatrix_x4_trans(bb, vb + kk * 16 * kRowPad + np * 16);
          mma_bf16(o[2 * np], pa[kk], bb[0], bb[1]);
          mma_bf16(o[2 * np + 1], pa[kk], bb[2], bb[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy outlives the CTA

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_row[r] += __shfl_xor_sync(0xffffffffu, l_row[r], 1);
    l_row[r] += __shfl_xor_sync(0xffffffffu, l_row[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t h = g + 8 * r;
    if (h >= p.heads) continue;
    if (p.num_splits == 1) {
      const float inv = l_row[r] > 0.0f ? 1.0f / l_row[r] : __int_as_float(0x7fc00000);
      float* out = p.out + b * p.out_stride_b + h * p.out_stride_h + ds * 128 + 2 * t;
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<float2*>(out + n * 8) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    } else {
      float* ws = p.workspace + ((b * p.heads + h) * p.num_splits + split) * (kLora + 2);
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<float2*>(ws + ds * 128 + n * 8 + 2 * t) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
      if (ds == 0 && t == 0) {
        ws[kLora] = m_row[r];
        ws[kLora + 1] = l_row[r];
      }
    }
  }
}

// ---- wgmma, 64 heads per CTA: more than 32 heads, or any head count when the cache can be
// read by the TMA engine (kTma) ----
// Two warpgroups share each 64-key block (two stages, swizzled regions). kTma: the block's pages
// arrive as 2-D boxes of a tensor map over the cache ([num_slots, 576] bf16, box 64 columns x
// page_size rows, 128-byte swizzle, so each box lands as rows of a region) issued by warp 0 and
// completing on the stage's mbarrier: 9 copies per page instead of 72 cp.async of 16 bytes per
// key row by all threads, and no per-thread limit on the bytes in flight. That needs
// page_size in {8, 16, 32, 64} (whole pages per block, boxes 1024-byte aligned in a region), and
// splits that start on a block boundary (multiples of 64 keys, for every kernel here). With 16
// heads three quarters of the tile are zero rows: the tensor cores have the time, the memory
// does not. Otherwise 16-byte cp.async by all threads. Scores:
// warpgroup wg computes S[64 heads, keys 32 wg .. 32 wg + 32) = Q K^T with the query tile read
// by the tensor cores from shared memory (36 wgmma m64n32k16); the two halves' row maxima meet
// in shared memory, so both warpgroups keep the same running max; each writes its half of
// P (bf16) into one shared region. P @ C: warpgroup wg owns out dims [256 wg, 256 wg + 256)
// (128 f32 accumulators per thread) and runs 4 wgmma m64n256k16 over the full block, the
// cache block read N-major as B. Row sums stay per warpgroup (same max) and are added at the
// end. Accumulator layout (per warpgroup, as mma.sync's per warp): warp w4, lane (g, t) holds
// rows 16 w4 + g (+ 8) and columns 8 j + 2 t (+ 1).
constexpr int kWgHeads = 64, kWgKeys = 64;
constexpr int kRegion = 64 * 64;        // bf16 per region (64 rows x 128 bytes)
constexpr int kRegions = kWidth / 64;   // 9 regions per 576-wide row

// The CTA of the 64-heads-per-CTA kernels: first head h0, KV split, sequence b.
struct WgCta {
  int64_t h0;
  int split;
  int64_t b;
};
__device__ __forceinline__ WgCta wg_cta() {
  return {int64_t(blockIdx.x) * kWgHeads, int(blockIdx.y), int64_t(blockIdx.z)};
}

// The query tile of heads [h0, h0 + 64) as bf16 [q_latent | q_pe] in swizzled regions, 8
// values per 16-byte chunk, by the CTA's 256 threads; heads past p.heads are zero.
__device__ __forceinline__ void load_query_tile(const MlaDecodeParams& p, int64_t b, int64_t h0,
                                                __nv_bfloat16 (&q)[kRegions][kRegion]) {
  for (int i = threadIdx.x; i < kWgHeads * kChunks; i += 256) {
    const int r = i / kChunks, c = i % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h0 + r < p.heads) {
      const float* src = c < kLora / 8
                             ? p.q_latent + b * p.ql_stride_b + (h0 + r) * p.ql_stride_h + c * 8
                             : p.q_pe + b * p.qp_stride_b + (h0 + r) * p.qp_stride_h + (c * 8 - kLora);
      const float2 x0 = reinterpret_cast<const float2*>(src)[0];
      const float2 x1 = reinterpret_cast<const float2*>(src)[1];
      const float2 x2 = reinterpret_cast<const float2*>(src)[2];
      const float2 x3 = reinterpret_cast<const float2*>(src)[3];
      v = make_uint4(pack_bf16(x0.x, x0.y), pack_bf16(x1.x, x1.y), pack_bf16(x2.x, x2.y),
                     pack_bf16(x3.x, x3.y));
    }
    *reinterpret_cast<uint4*>(&q[c >> 3][swizzled(r, c & 7)]) = v;
  }
}

// The end of a two-warpgroup kernel: each warpgroup holds out dims [256 wg, 256 wg + 256) of
// rows row0 and row0 + 8 (o, the m16n8 accumulator layout) and its part of their row sums
// (l_row, per thread); the parts meet in `lsum` and the rows go to the output (one split) or
// the workspace (with max and sum). No valid key (bad length): l = 0 and the row is NaN, as the
// CPU reference; `lost` (a copy never landed) poisons it too.
__device__ __forceinline__ void store_rows(const MlaDecodeParams& p, int64_t b, int64_t h0, int split, int wg,
                                           int row0, int t, const float (&o)[128], const float (&m_row)[2],
                                           float (&l_row)[2], bool lost, float (&lsum)[2][kWgHeads]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_row[i] += __shfl_xor_sync(0xffffffffu, l_row[i], 1);
    l_row[i] += __shfl_xor_sync(0xffffffffu, l_row[i], 2);
  }
  __syncthreads();  // lsum's earlier contents (the kernel's last row maxima) are read
  if (t == 0) {
    lsum[wg][row0] = l_row[0];
    lsum[wg][row0 + 8] = l_row[1];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + 8 * i;
    const int64_t h = h0 + row;
    if (h >= p.heads) continue;
    const float l = lost ? __int_as_float(0x7fc00000) : lsum[0][row] + lsum[1][row];
    if (p.num_splits == 1) {
      const float inv = l > 0.0f ? 1.0f / l : __int_as_float(0x7fc00000);
      float* out = p.out + b * p.out_stride_b + h * p.out_stride_h + 256 * wg + 2 * t;
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<float2*>(out + 8 * j) =
            make_float2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv);
    } else {
      float* ws = p.workspace + ((b * p.heads + h) * p.num_splits + split) * (kLora + 2);
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<float2*>(ws + 256 * wg + 8 * j + 2 * t) =
            make_float2(o[4 * j + 2 * i], o[4 * j + 2 * i + 1]);
      if (wg == 0 && t == 0) {
        ws[kLora] = m_row[i];
        ws[kLora + 1] = l;
      }
    }
  }
}

// Score-tile helpers of the wgmma kernels, in the m64nN accumulator layout (thread (g, t) of
// warp w4 holds rows 16 w4 + g + 8 i and columns 8 j + 2 t + c at s[4 j + 2 i + c], j < NJ).
// Scales the scores to base 2 and masks them by the slots of their keys (slot[8 j + 2 t + c]):
// -inf past the end, NaN for a slot outside the cache (poisons the row); mx[i] takes the max
// of this thread's row i.
template <int NJ>
__device__ __forceinline__ void mask_scores(float (&s)[4 * NJ], const int32_t* slot, int t, float scale_log2,
                                            float (&mx)[2]) {
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int32_t sl = slot[8 * j + 2 * t + c];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float& v = s[4 * j + 2 * i + c];
        v = sl == kSlotPast ? -INFINITY : sl == kSlotBad ? __int_as_float(0x7fc00000) : v * scale_log2;
        mx[i] = fmaxf(mx[i], v);
      }
    }
  }
}
// The max over the four threads (t) that share a row.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
// s <- 2^(s - m) for row i; returns this thread's part of the row sum.
template <int NJ>
__device__ __forceinline__ float exp_row(float (&s)[4 * NJ], int i, float m) {
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const float e = exp2f(s[4 * j + 2 * i + c] - m);
      s[4 * j + 2 * i + c] = e;
      sum += e;
    }
  }
  return sum;
}
// Row i of a warpgroup's 64 x 256 output accumulator times f.
__device__ __forceinline__ void rescale_row(float (&o)[128], int i, float f) {
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    o[4 * j + 2 * i] *= f;
    o[4 * j + 2 * i + 1] *= f;
  }
}

// One warp (`lane`) issues the TMA boxes of a block of kKeys keys whose key slots are `slot`
// (regions of kKeys rows): lane i < kKeys / box_rows copies rows [i box_rows, (i + 1) box_rows)
// of every region of `kv` (a page, or part of one; the tensor map's box height), completing on
// `bar` (armed here with the bytes to expect). A box whose first key is past the end or
// outside the cache is not copied (its rows: zeroed after the wait, or a bad slot, whose NaN
// score poisons the row anyway).
template <int kKeys>
__device__ __forceinline__ void issue_page_boxes(const CUtensorMap* map, const int32_t* slot,
                                                 __nv_bfloat16 (&kv)[kRegions][kKeys * 64], uint64_t* bar,
                                                 int lane, int box_rows) {
  const int32_t slot0 = lane < kKeys / box_rows ? slot[lane * box_rows] : -1;
  const unsigned copied = __ballot_sync(0xffffffffu, slot0 >= 0);
  fence_proxy_async();  // earlier generic accesses of the stage come before the copies
  if (lane == 0) mbar_arrive_expect(bar, uint32_t(__popc(copied) * box_rows) * kWidth * 2);
  __syncwarp();
  if (slot0 >= 0) {
#pragma unroll
    for (int c = 0; c < kRegions; ++c) tma_load_2d(&kv[c][lane * box_rows * 64], map, c * 64, slot0, bar);
  }
}
struct WgSmem {
  __nv_bfloat16 q[kRegions][kRegion];       // [64 heads x 576], K-major
  __nv_bfloat16 kv[2][kRegions][kRegion];   // [64 keys x 576] per stage
  __nv_bfloat16 pr[kRegion];                // P [64 heads x 64 keys], K-major
  float red[2][kWgHeads];                   // per warpgroup: row max of its keys, then row sum
  int32_t slot[2][kWgKeys];
  uint64_t bar[2];                          // kTma: the stage's copies landed
};
// Timing-only variants of the TMA kernel (TANDEM_MLA_DECODE_DIAG, wrong results): each leaves
// one stage out so the differences say where a block's time goes.
enum WgDiag { kDiagNone = 0, kDiagNoPv = 1, kDiagNoScores = 2, kDiagNoLoads = 3 };
constexpr size_t kWgSmemBytes = sizeof(WgSmem) + 1024;  // + alignment of the base

template <bool kTma, int kDiag = kDiagNone, bool kOneWg = false>
__global__ void __launch_bounds__(256, 1)
    mla_decode_wgmma_kernel(MlaDecodeParams p, const __grid_constant__ CUtensorMap cache_map) {
  extern __shared__ __align__(16) unsigned char smem_wg[];
  WgSmem& sm = align_1024<WgSmem>(smem_wg);
  const auto [tid, wg, lane, w4, g, t, row0] = wg_thread();
  const auto [h0, split, b] = wg_cta();
  const auto* cache = static_cast<const __nv_bfloat16*>(p.cache);
  const int32_t* pages = p.page_table + b * p.max_pages;

  int64_t begin, end;
  split_range(p, b, split, kWgKeys, begin, end);  // whole blocks (the TMA path loads whole pages)
  const int nblocks = int((end - begin + kWgKeys - 1) / kWgKeys);

  load_query_tile(p, b, h0, sm.q);

  // The page of this thread's key of block blk (tid < kWgKeys), loaded one block before
  // fill_slots needs it: under full memory traffic a load takes microseconds, and fill_slots
  // runs just before a barrier.
  auto fetch_page = [&](int blk) -> int32_t {
    const int64_t j = begin + int64_t(blk) * kWgKeys + tid;
    return tid < kWgKeys && j < end ? __ldg(&pages[j / p.page_size]) : 0;
  };
  auto fill_slots = [&](int blk, int stage, int32_t page) {
    if (tid < kWgKeys) {
      sm.slot[stage][tid] = key_slot(p, b, begin + int64_t(blk) * kWgKeys + tid, end, page);
    }
  };
  auto load_block = [&](int stage) {
    if constexpr (kTma) {
      if (tid < 32)
        issue_page_boxes<kWgKeys>(&cache_map, sm.slot[stage], sm.kv[stage], &sm.bar[stage], tid, int(p.page_size));
    } else {
      for (int i = tid; i < kWgKeys * kChunks; i += 256) {
        const int r = i / kChunks, c = i % kChunks;
        const int32_t slot = sm.slot[stage][r];
        void* dst = &sm.kv[stage][c >> 3][swizzled(r, c & 7)];
        if (slot >= 0) {
          cp_async16(dst, cache + int64_t(slot) * kWidth + c * 8);
        } else {
          *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        }
      }
      cp_async_commit();
    }
  };
  bool lost = false;  // kTma: a copy never landed
  // Block blk is in its stage: kTma, the stage's (blk / 2)-th phase, then the rows past the end
  // of the last block are zeroed (a zero probability times stale data could be NaN times zero).
  auto wait_block = [&](int blk, int stage) {
    if constexpr (kTma) {
      if (kDiag == kDiagNoLoads && blk >= 2) return;
      mbar_wait_bounded(&sm.bar[stage], uint32_t(blk >> 1) & 1, lost);
      const int valid = int(min64(kWgKeys, end - begin - int64_t(blk) * kWgKeys));
      for (int i = tid; i < (kWgKeys - valid) * kChunks; i += 256) {
        const int r = valid + i / kChunks, c = i % kChunks;
        *reinterpret_cast<uint4*>(&sm.kv[stage][c >> 3][swizzled(r, c & 7)]) = make_uint4(0, 0, 0, 0);
      }
    } else {
      cp_async_wait<0>();
    }
  };

  if constexpr (kTma) {
    if (tid == 0) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&cache_map)) : "memory");
      mbar_init(&sm.bar[0], 1);
      mbar_init(&sm.bar[1], 1);
      mbar_init_fence();
    }
  }
  if (nblocks > 0) fill_slots(0, 0, fetch_page(0));
  int32_t page_ahead = fetch_page(1);  // block blk + 1's, in iteration blk
  __syncthreads();
  if (nblocks > 0) load_block(0);

  float o[128];  // out[rows row0, row0 + 8][256 wg + 8 j + 2 t + {0, 1}] at o[4 j + 2 i + c]
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // running max (log2 units), same in both warpgroups
  float l_row[2] = {0.0f, 0.0f};            // this thread's part of the sum over its keys
  const float scale_log2 = p.scale * kLog2e;

  for (int blk = 0; blk < nblocks; ++blk) {
    const int stage = blk & 1;
    if (blk + 1 < nblocks) fill_slots(blk + 1, stage ^ 1, page_ahead);
    page_ahead = fetch_page(blk + 2);
    wait_block(blk, stage);
    fence_proxy_async();  // the copies (and the query) become visible to the tensor cores
    __syncthreads();      // block blk landed; slots of blk + 1 visible; blk - 1 fully consumed
    if (blk + 1 < nblocks && (kDiag != kDiagNoLoads || blk < 1)) load_block(stage ^ 1);

    if constexpr (kOneWg) {
      // Warpgroup 0 computes all 64 x 64 scores (36 wgmma m64n64k16: the query tile is read
      // once per block, not once per warpgroup), the softmax and P, and hands warpgroup 1 the
      // rescale factor of each row.
      if (wg == 0) {
        float s[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) s[i] = 0.0f;
        fence_regs(s);
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < kWidth / 16; ++k)
          wgmma_m64n64(s, desc_k_major(&sm.q[k >> 2][(k & 3) * 16]),
                       desc_k_major(&sm.kv[stage][k >> 2][(k & 3) * 16]));
        wgmma_commit();
        wgmma_wait_all();
        fence_regs(s);
        float mx[2] = {-INFINITY, -INFINITY};
        mask_scores<8>(s, sm.slot[stage], t, scale_log2, mx);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float m_new = fmaxf(m_row[i], quad_max(mx[i]));  // finite: every block holds a valid key
          const float alpha = exp2f(m_row[i] - m_new);
          m_row[i] = m_new;
          l_row[i] = l_row[i] * alpha + exp_row<8>(s, i, m_new);
          if (t == 0) sm.red[0][row0 + 8 * i] = alpha;
          rescale_row(o, i, alpha);
        }
        // P[row][8 j + 2 t + c]: chunk j of the row, bytes 4 t.
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int i = 0; i < 2; ++i)
            *reinterpret_cast<uint32_t*>(&sm.pr[swizzled(row0 + 8 * i, j) + 2 * t]) =
                pack_bf16(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]);
        }
      }
      fence_proxy_async();
      __syncthreads();  // P and the rescale factors complete
      if (wg == 1) {
#pragma unroll
        for (int i = 0; i < 2; ++i) rescale_row(o, i, sm.red[0][row0 + 8 * i]);
      }
    } else {
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kWidth / 16; ++k) {
      if (kDiag == kDiagNoScores) break;
      wgmma_m64n32(s, desc_k_major(&sm.q[k >> 2][(k & 3) * 16]),
                   desc_k_major(&sm.kv[stage][k >> 2][32 * wg * 64 + (k & 3) * 16]));
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_regs(s);

    float mx[2] = {-INFINITY, -INFINITY};
    mask_scores<4>(s, &sm.slot[stage][32 * wg], t, scale_log2, mx);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = quad_max(mx[i]);
      if (t == 0) sm.red[wg][row0 + 8 * i] = mx[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // Finite: every block holds a valid key (in one of the two halves).
      const float m_new = fmaxf(m_row[i], fmaxf(mx[i], sm.red[wg ^ 1][row0 + 8 * i]));
      const float alpha = exp2f(m_row[i] - m_new);
      m_row[i] = m_new;
      l_row[i] = l_row[i] * alpha + exp_row<4>(s, i, m_new);
      rescale_row(o, i, alpha);
    }
    // P[row][32 wg + 8 j + 2 t + c]: chunk 4 wg + j of the row, bytes 4 t.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = row0 + 8 * i;
        *reinterpret_cast<uint32_t*>(&sm.pr[swizzled(row, 4 * wg + j) + 2 * t]) =
            pack_bf16(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]);
      }
    }
    fence_proxy_async();
    __syncthreads();  // P complete (both halves)
    }

    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kWgKeys / 16; ++kk)
      if (kDiag != kDiagNoPv) wgmma_m64n256_tb(o, desc_k_major(&sm.pr[kk * 16]),
                       desc_n_major(&sm.kv[stage][4 * wg][kk * 16 * 64]));
    wgmma_commit();
    wgmma_wait_all();
    fence_regs(o);
  }

  store_rows(p, b, h0, split, wg, row0, t, o, m_row, l_row, lost, sm.red);
}

// ---- Seesaw schedule (opt-in, TANDEM_MLA_DECODE_SEESAW=1; TMA page sizes) ----
// The schedule FlashMLA describes for 64 heads per CTA (docs/cuda.md): blocks go in pairs, block
// 2i in stage 0 and 2i + 1 in stage 1. Warpgroup 0 owns out dims [0, 256) (O_L), warpgroup 1
// dims [256, 512) (O_R); each computes the full 64 x 64 scores of its own block (36 wgmma
// m64n64k16), so the two score GEMMs run side by side and one warpgroup's softmax overlaps the
// other's tensor work. With m the running max, per pair:
//   WG0: S0, m0 = max(m, rowmax S0), sc0 = 2^(m - m0); P0 = 2^(S0 - m0) (registers, the A
//        operand of its own O_L = O_L sc0 + P0 V0L); after WG1's sc1: P0 sc1 into stage 0's
//        rope region (free once S0 is done) for WG1; O_L = O_L sc1 + P1 V1L.
//   WG1: S1, m1 = max(m0, rowmax S1), sc1 = 2^(m0 - m1); P1 = 2^(S1 - m1) into stage 1's rope
//        region for WG0 and (registers) O_R = O_R sc0 sc1 + P1 V1R; then O_R += (P0 sc1) V0R.
// The row sums follow the same factors (l = l0 + l1 at the end). Hand-offs between the
// warpgroups are named barriers (one producer arrives, the consumer syncs); each stage has a
// "full" mbarrier (its TMA copies) and a "free" one (all 8 warps done reading it), and warp 0
// (stage 0) and warp 4 (stage 1) fill the slots and issue the next pair's copies once it is free.
struct SeesawSmem {
  __nv_bfloat16 q[kRegions][kRegion];      // [64 heads x 576], K-major
  __nv_bfloat16 kv[2][kRegions][kRegion];  // [64 keys x 576] per stage; region 8 later holds P
  float m0[kWgHeads], sc0[kWgHeads];  // WG0 -> WG1, per row: max after block 2i, its factor
  float m1[kWgHeads], sc1[kWgHeads];  // WG1 -> WG0: max after block 2i + 1, its factor
  float lsum[2][kWgHeads];
  int32_t slot[2][kWgKeys];
  uint64_t full[2], free[2];
};
constexpr size_t kSeesawSmemBytes = sizeof(SeesawSmem) + 1024;

// d[64 x 256] += A[64 x 16] (registers, the m16n8k16 A fragment of each warp's 16 rows) *
// B[16 x 256] (smem, MN-major); f32 accumulate.
__device__ __forceinline__ void wgmma_m64n256_ra(float (&d)[128], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      WGMMA_D128_REGS
      "{%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"
      "}\n"
      : WGMMA_D128_OUTS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// Named barriers of the seesaw kernel (0 is __syncthreads).
enum SeesawBar { kBarM0 = 1, kBarSc1 = 2, kBarP0 = 3, kBarP1 = 4, kBarWg0 = 5, kBarWg1 = 6 };

__global__ void __launch_bounds__(256, 1)
    mla_decode_seesaw_kernel(MlaDecodeParams p, const __grid_constant__ CUtensorMap cache_map) {
  extern __shared__ __align__(16) unsigned char smem_ss[];
  SeesawSmem& sm = align_1024<SeesawSmem>(smem_ss);
  const auto [tid, wg, lane, w4, g, t, row0] = wg_thread();
  const auto [h0, split, b] = wg_cta();
  const int32_t* pages = p.page_table + b * p.max_pages;

  int64_t begin, end;
  split_range(p, b, split, kWgKeys, begin, end);  // whole blocks (the TMA path loads whole pages)
  const int nblocks = int((end - begin + kWgKeys - 1) / kWgKeys);

  load_query_tile(p, b, h0, sm.q);
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&cache_map)) : "memory");
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      mbar_init(&sm.full[s], 1);
      mbar_init(&sm.free[s], 8);  // lane 0 of every warp
    }
    mbar_init_fence();
  }
  fence_proxy_async();
  __syncthreads();

  bool lost = false;
  // Warp 0 (stage 0) or warp 4 (stage 1): the slots of block blk, then its pages' boxes.
  auto produce = [&](int blk, int s) {
    for (int key = lane; key < kWgKeys; key += 32) {
      const int64_t j = begin + int64_t(blk) * kWgKeys + key;
      sm.slot[s][key] = key_slot(p, b, j, end, j < end ? __ldg(&pages[j / p.page_size]) : 0);
    }
    __syncwarp();
    issue_page_boxes<kWgKeys>(&cache_map, sm.slot[s], sm.kv[s], &sm.full[s], lane, int(p.page_size));
  };
  const bool producer = (tid & 127) < 32;  // warp 0 of each warpgroup: stage wg
  if (producer && wg < nblocks) produce(wg, wg);

  // Rows past the end of the (last, partial) block blk in stage s, in the four regions
  // [4 half, 4 half + 4) this warpgroup reads as C, are zeroed (0 x stale data could be NaN).
  auto zero_tail = [&](int blk, int s, int half) {
    const int valid = int(min64(kWgKeys, end - begin - int64_t(blk) * kWgKeys));
    if (valid == kWgKeys) return;
    for (int i = tid & 127; i < (kWgKeys - valid) * 32; i += 128) {
      const int r = valid + i / 32, c = 32 * half + i % 32;
      *reinterpret_cast<uint4*>(&sm.kv[s][c >> 3][swizzled(r, c & 7)]) = make_uint4(0, 0, 0, 0);
    }
    fence_proxy_async();
    named_sync(kBarWg0 + wg, 128);
  };
  // The scores of the block in stage s: S = Q K^T (64 heads x 64 keys), masked, base 2; mx
  // gets the row maxima.
  auto scores = [&](int s, float (&sc)[32], float (&mx)[2]) {
#pragma unroll
    for (int i = 0; i < 32; ++i) sc[i] = 0.0f;
    fence_regs(sc);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kWidth / 16; ++k)
      wgmma_m64n64(sc, desc_k_major(&sm.q[k >> 2][(k & 3) * 16]), desc_k_major(&sm.kv[s][k >> 2][(k & 3) * 16]));
    wgmma_commit();
    wgmma_wait_all();
    fence_regs(sc);
    mx[0] = mx[1] = -INFINITY;
    mask_scores<8>(sc, sm.slot[s], t, p.scale * kLog2e, mx);
    mx[0] = quad_max(mx[0]);
    mx[1] = quad_max(mx[1]);
  };
  // P (scaled by f per row) into stage s's rope region as a K-major 64 x 64 tile.
  auto store_p = [&](const float (&sc)[32], int s, const float (&f)[2]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
        *reinterpret_cast<uint32_t*>(&sm.kv[s][kRegions - 1][swizzled(row0 + 8 * i, j) + 2 * t]) =
            pack_bf16(sc[4 * j + 2 * i] * f[i], sc[4 * j + 2 * i + 1] * f[i]);
    }
    fence_proxy_async();
  };
  // P as the A fragments of 4 k-steps of 16 keys: k-step kk is accumulator columns
  // [16 kk, 16 kk + 16), i.e. s[8 kk .. 8 kk + 8) in the order a0..a3 of mma.sync's A.
  auto pack_p = [&](const float (&sc)[32], uint32_t (&pa)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) pa[kk][r] = pack_bf16(sc[8 * kk + 2 * r], sc[8 * kk + 2 * r + 1]);
    }
  };
  // o += P V_half of stage s, P from registers. The wgmma reads pa asynchronously: pa stays
  // untouched (and live, through keep_live) until the wait.
  auto pv_registers = [&](float (&o)[128], const uint32_t (&pa)[4][4], int s, int half) {
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kWgKeys / 16; ++kk)
      wgmma_m64n256_ra(o, pa[kk], desc_n_major(&sm.kv[s][4 * half][kk * 16 * 64]));
    wgmma_commit();
  };
  auto keep_live = [&](uint32_t (&pa)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(pa[kk][r])::"memory");
    }
  };
  // o += P V_half of stage s, P from stage s's rope region.
  auto pv_shared = [&](float (&o)[128], int s, int half) {
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kWgKeys / 16; ++kk)
      wgmma_m64n256_tb(o, desc_k_major(&sm.kv[s][kRegions - 1][kk * 16]),
                       desc_n_major(&sm.kv[s][4 * half][kk * 16 * 64]));
    wgmma_commit();
  };
  auto release = [&](int s) {
    __syncwarp();
    if (lane == 0) mbar_arrive(&sm.free[s]);
  };

  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // the same in both warpgroups after every pair
  float l_row[2] = {0.0f, 0.0f};            // this warpgroup's part (l = l0 + l1)
  float s[32];
  uint32_t pa[4][4];

  const int npairs = (nblocks + 1) / 2;
  for (int pair = 0; pair < npairs; ++pair) {
    const int b0 = 2 * pair, b1 = b0 + 1;
    const bool has_b1 = b1 < nblocks;
    const uint32_t phase = uint32_t(pair) & 1;
    if (wg == 0) {
      mbar_wait_bounded(&sm.full[0], phase, lost);
      if (b0 == nblocks - 1) zero_tail(b0, 0, 0);
      float mx[2];
      scores(0, s, mx);
      float sc0[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float m_new = fmaxf(m_row[i], mx[i]);  // finite: the block holds a valid key
        sc0[i] = exp2f(m_row[i] - m_new);
        m_row[i] = m_new;
        if (t == 0) {
          sm.m0[row0 + 8 * i] = m_new;
          sm.sc0[row0 + 8 * i] = sc0[i];
        }
      }
      named_arrive(kBarM0, 256);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        l_row[i] = l_row[i] * sc0[i] + exp_row<8>(s, i, m_row[i]);
        rescale_row(o, i, sc0[i]);
      }
      pack_p(s, pa);
      pv_registers(o, pa, 0, 0);  // O_L += P0 V0L
      named_sync(kBarSc1, 256);
      float sc1[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        sc1[i] = sm.sc1[row0 + 8 * i];
        m_row[i] = sm.m1[row0 + 8 * i];
        l_row[i] *= sc1[i];
      }
      store_p(s, 0, sc1);  // P0 sc1 for WG1 (stage 0's rope region: S0 is done with it)
      named_arrive(kBarP0, 256);
      named_sync(kBarP1, 256);
      wgmma_wait_all();  // O_L += P0 V0L landed
      fence_regs(o);
      keep_live(pa);
      release(0);
#pragma unroll
      for (int i = 0; i < 2; ++i) rescale_row(o, i, sc1[i]);
      if (has_b1) {
        mbar_wait_bounded(&sm.full[1], phase, lost);
        if (b1 == nblocks - 1) zero_tail(b1, 1, 0);
        pv_shared(o, 1, 0);  // O_L += P1 V1L
        wgmma_wait_all();
        fence_regs(o);
      }
      release(1);
    } else {
      float sc0[2], sc1[2], m0[2];
      float mx[2] = {-INFINITY, -INFINITY};
      if (has_b1) {
        mbar_wait_bounded(&sm.full[1], phase, lost);
        if (b1 == nblocks - 1) zero_tail(b1, 1, 1);
        scores(1, s, mx);
      }
      named_sync(kBarM0, 256);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        m0[i] = sm.m0[row0 + 8 * i];
        sc0[i] = sm.sc0[row0 + 8 * i];
        const float m_new = fmaxf(m0[i], mx[i]);
        sc1[i] = exp2f(m0[i] - m_new);
        m_row[i] = m_new;
        if (t == 0) {
          sm.m1[row0 + 8 * i] = m_new;
          sm.sc1[row0 + 8 * i] = sc1[i];
        }
      }
      named_arrive(kBarSc1, 256);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        l_row[i] *= sc0[i] * sc1[i];
        rescale_row(o, i, sc0[i] * sc1[i]);
      }
      if (has_b1) {
#pragma unroll
        for (int i = 0; i < 2; ++i) l_row[i] += exp_row<8>(s, i, m_row[i]);
        const float one[2] = {1.0f, 1.0f};
        store_p(s, 1, one);  // P1 for WG0 (stage 1's rope region: S1 is done with it)
        named_arrive(kBarP1, 256);
        pack_p(s, pa);
        pv_registers(o, pa, 1, 1);  // O_R += P1 V1R
      } else {
        named_arrive(kBarP1, 256);
      }
      named_sync(kBarP0, 256);
      mbar_wait_bounded(&sm.full[0], phase, lost);
      if (b0 == nblocks - 1) zero_tail(b0, 0, 1);
      pv_shared(o, 0, 1);  // O_R += (P0 sc1) V0R
      wgmma_wait_all();
      fence_regs(o);
      keep_live(pa);
      release(0);
      release(1);
    }
    // The next pair's copies, once every warp is done with the stage.
    if (producer) {
      const int next = 2 * (pair + 1) + wg;
      if (next < nblocks) {
        mbar_wait_bounded(&sm.free[wg], phase, lost);
        produce(next, wg);
      }
    }
  }

  store_rows(p, b, h0, split, wg, row0, t, o, m_row, l_row, lost, sm.lsum);  // l = l0 + l1
}

// ---- Pipelined schedule (opt-in, TANDEM_MLA_DECODE_PIPE=1; TMA page sizes) ----
// 32-key blocks in four TMA stages (so two loads are in flight while two blocks are worked on),
// and the next block's scores overlap this block's P @ C (FlashAttention-3's intra-warpgroup
// pipelining): warpgroup 0 computes all 64 x 32 scores of a block (36 wgmma m64n32k16, Q and K
// from shared memory) and its softmax; both warpgroups run P @ C on their half of the out dims
// (2 wgmma m64n256k16). Per block n, warpgroup 0: issue S(n + 1), issue P(n) @ C(n) on its
// half, wait for S(n + 1), softmax(n + 1) while the tensor cores run P(n) @ C(n), wait for its
// P @ C and (named barrier) warpgroup 1's, refill the freed stage with block n + 4, rescale its
// half by alpha(n + 1), write P(n + 1) and alpha(n + 1), and hand them over (named barrier).
// Warpgroup 1: take P(n) and alpha(n), rescale, P(n) @ C(n) on its half, hand back. Row sums
// and maxima stay in warpgroup 0. Shared memory: Q 72 KB, 4 stages of 36 KB, P 8 KB (a 64 x 64
// region of which 32 columns are used): 226 KB of the 227.
constexpr int kPipeKeys = 32, kPipeStages = 4;
constexpr int kPipeRegion = kPipeKeys * 64;  // bf16 per 32-row region (4 KB)
struct PipeSmem {
  __nv_bfloat16 q[kRegions][kRegion];                        // [64 heads x 576], K-major
  __nv_bfloat16 kv[kPipeStages][kRegions][kPipeRegion];      // [32 keys x 576] per stage
  __nv_bfloat16 pr[kRegion];                                 // P [64 heads x 32 keys], K-major
  float alpha[kWgHeads];                                     // WG0 -> WG1: rescale of the block
  float lsum[2][kWgHeads];
  int32_t slot[kPipeStages][kPipeKeys];
  uint64_t full[kPipeStages];
};
constexpr size_t kPipeSmemBytes = sizeof(PipeSmem) + 1024;
static_assert(kPipeSmemBytes <= 227 * 1024, "the pipelined kernel's shared memory");

enum PipeBar { kBarPReady = 7, kBarPvDone = 8, kBarWg0Zero = 9 };

__global__ void __launch_bounds__(256, 1)
    mla_decode_pipe_kernel(MlaDecodeParams p, const __grid_constant__ CUtensorMap cache_map) {
  extern __shared__ __align__(16) unsigned char smem_pp[];
  PipeSmem& sm = align_1024<PipeSmem>(smem_pp);
  const auto [tid, wg, lane, w4, g, t, row0] = wg_thread();
  const auto [h0, split, b] = wg_cta();
  const int32_t* pages = p.page_table + b * p.max_pages;
  const int ps = int(p.page_size);
  const int box_rows = ps < kPipeKeys ? ps : kPipeKeys;  // the tensor map's box height

  int64_t begin, end;
  split_range(p, b, split, kPipeKeys, begin, end);
  const int nblocks = int((end - begin + kPipeKeys - 1) / kPipeKeys);

  load_query_tile(p, b, h0, sm.q);
  if (tid == 0) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&cache_map)) : "memory");
#pragma unroll
    for (int s = 0; s < kPipeStages; ++s) mbar_init(&sm.full[s], 1);
    mbar_init_fence();
  }
  fence_proxy_async();
  __syncthreads();

  // Warp 0: the slots of block blk into its stage, then one box per box_rows keys whose first
  // slot is in the cache (past-end boxes are skipped; their rows are zeroed or masked).
  auto produce = [&](int blk) {
    const int st = blk % kPipeStages;
    const int64_t j = begin + int64_t(blk) * kPipeKeys + lane;  // 32 keys, one per lane
    sm.slot[st][lane] = key_slot(p, b, j, end, j < end ? __ldg(&pages[j / p.page_size]) : 0);
    __syncwarp();
    issue_page_boxes<kPipeKeys>(&cache_map, sm.slot[st], sm.kv[st], &sm.full[st], lane, box_rows);
  };
  if (tid < 32) {
    for (int blk = 0; blk < nblocks && blk < kPipeStages; ++blk) produce(blk);
  }

  bool lost = false;
  // Block blk has landed (its phase of its stage); warpgroup 0 zeroes the V rows past the end of
  // the last block (a zero probability times stale data could be NaN times zero).
  auto landed = [&](int blk) {
    const int st = blk % kPipeStages;
    mbar_wait_bounded(&sm.full[st], uint32_t(blk / kPipeStages) & 1, lost);
    if (wg != 0) return;
    const int valid = int(min64(kPipeKeys, end - begin - int64_t(blk) * kPipeKeys));
    if (valid == kPipeKeys) return;
    for (int i = tid; i < (kPipeKeys - valid) * 64; i += 128) {  // 8 regions x 8 chunks per row
      const int r = valid + i / 64, c = i % 64;
      *reinterpret_cast<uint4*>(&sm.kv[st][c >> 3][swizzled(r, c & 7)]) = make_uint4(0, 0, 0, 0);
    }
    fence_proxy_async();
    named_sync(kBarWg0Zero, 128);
  };
  auto issue_scores = [&](int blk, float (&sc)[16]) {
    const int st = blk % kPipeStages;
#pragma unroll
    for (int i = 0; i < 16; ++i) sc[i] = 0.0f;
    fence_regs(sc);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kWidth / 16; ++k)
      wgmma_m64n32(sc, desc_k_major(&sm.q[k >> 2][(k & 3) * 16]), desc_k_major(&sm.kv[st][k >> 2][(k & 3) * 16]));
    wgmma_commit();
  };
  auto issue_pv = [&](float (&o)[128], int blk) {
    const int st = blk % kPipeStages;
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPipeKeys / 16; ++kk)
      wgmma_m64n256_tb(o, desc_k_major(&sm.pr[kk * 16]), desc_n_major(&sm.kv[st][4 * wg][kk * 16 * 64], 4096));
    wgmma_commit();
  };

  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  float m_row[2] = {-INFINITY, -INFINITY};  // warpgroup 0's running max (log2 units)
  float l_row[2] = {0.0f, 0.0f};            // warpgroup 0's part of the row sums
  const float scale_log2 = p.scale * kLog2e;
  float s[16];
  float alpha[2];

  // Softmax of block blk's scores (in s): new max, alpha, row sums, P in s.
  auto softmax = [&](int blk) {
    float mx[2] = {-INFINITY, -INFINITY};
    mask_scores<4>(s, sm.slot[blk % kPipeStages], t, scale_log2, mx);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float m_new = fmaxf(m_row[i], quad_max(mx[i]));  // finite: the block holds a valid key
      alpha[i] = exp2f(m_row[i] - m_new);
      m_row[i] = m_new;
      l_row[i] = l_row[i] * alpha[i] + exp_row<4>(s, i, m_new);
    }
  };
  // P (bf16) and alpha into shared memory for both warpgroups' P @ C, then the hand-over.
  auto publish = [&]() {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
        *reinterpret_cast<uint32_t*>(&sm.pr[swizzled(row0 + 8 * i, j) + 2 * t]) =
            pack_bf16(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]);
    }
    if (t == 0) {
      sm.alpha[row0] = alpha[0];
      sm.alpha[row0 + 8] = alpha[1];
    }
    fence_proxy_async();
    named_arrive(kBarPReady, 256);
  };

  if (wg == 0) {
    if (nblocks > 0) {
      landed(0);
      issue_scores(0, s);
      wgmma_wait<0>();
      fence_regs(s);
      softmax(0);  // alpha = 0 on the zero accumulators
      publish();
    }
    // Straight-line steady state (no issue or wait under a condition), then the last block.
    for (int n = 0; n + 1 < nblocks; ++n) {
      landed(n + 1);
      issue_scores(n + 1, s);
      issue_pv(o, n);  // P(n) @ C(n), left half
      wgmma_wait<1>();  // S(n + 1) landed; P(n) @ C(n) may still run
      fence_regs(s);
      softmax(n + 1);
      wgmma_wait<0>();
      fence_regs(o);
      named_sync(kBarPvDone, 256);  // warpgroup 1's P(n) @ C(n) is done too: P and stage n free
      if (tid < 32 && n + kPipeStages < nblocks) produce(n + kPipeStages);
#pragma unroll
      for (int i = 0; i < 2; ++i) rescale_row(o, i, alpha[i]);
      publish();
    }
    if (nblocks > 0) {
      issue_pv(o, nblocks - 1);
      wgmma_wait<0>();
      fence_regs(o);
      named_sync(kBarPvDone, 256);
    }
  } else {
    for (int n = 0; n < nblocks; ++n) {
      named_sync(kBarPReady, 256);  // P(n) and alpha(n)
      mbar_wait_bounded(&sm.full[n % kPipeStages], uint32_t(n / kPipeStages) & 1, lost);
#pragma unroll
      for (int i = 0; i < 2; ++i) rescale_row(o, i, sm.alpha[row0 + 8 * i]);
      issue_pv(o, n);  // right half
      wgmma_wait<0>();
      fence_regs(o);
      named_arrive(kBarPvDone, 256);
    }
  }

  store_rows(p, b, h0, split, wg, row0, t, o, m_row, l_row, lost, sm.lsum);
}

// Merges the splits of one (sequence, head): partial outs with their max (log2 units) and sum.
__global__ void __launch_bounds__(128) mla_decode_mma_combine_kernel(MlaDecodeParams p) {
  const int64_t b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const float* ws = p.workspace + int64_t(blockIdx.x) * p.num_splits * (kLora + 2);
  float m = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, ws[s * (kLora + 2) + kLora]);
  float l = 0.0f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float ms = ws[s * (kLora + 2) + kLora];
    if (ms != -INFINITY) l += ws[s * (kLora + 2) + kLora + 1] * exp2f(ms - m);
  }
  const float inv = l > 0.0f ? 1.0f / l : __int_as_float(0x7fc00000);
  float* out = p.out + b * p.out_stride_b + h * p.out_stride_h;
  for (int d = threadIdx.x * 4; d < kLora; d += blockDim.x * 4) {
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s = 0; s < p.num_splits; ++s) {
      const float ms = ws[s * (kLora + 2) + kLora];
      if (ms == -INFINITY) continue;
      const float w = exp2f(ms - m);
      const float* src = ws + s * (kLora + 2) + d;
      a.x = fmaf(src[0], w, a.x); a.y = fmaf(src[1], w, a.y);
      a.z = fmaf(src[2], w, a.z); a.w = fmaf(src[3], w, a.w);
    }
    out[d] = a.x * inv; out[d + 1] = a.y * inv; out[d + 2] = a.z * inv; out[d + 3] = a.w * inv;
  }
}

template <int NHT>
void launch_nht(const MlaDecodeParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(Smem<NHT>);
  // Per device and cheap: set on every launch rather than tracking devices.
  cudaFuncSetAttribute(mla_decode_mma_kernel<NHT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(smem));
  const dim3 grid(unsigned((p.heads + 16 * NHT - 1) / (16 * NHT)), unsigned(p.num_splits),
                  unsigned(p.batch));
  mla_decode_mma_kernel<NHT><<<grid, NHT * 128, smem, stream>>>(p);
}

void launch_h16(const MlaDecodeParams& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = sizeof(H16Smem<kH16CtaStages>);
  cudaFuncSetAttribute(mla_decode_h16_kernel<kH16CtaStages>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(smem));
  mla_decode_h16_kernel<kH16CtaStages><<<grid, 128, smem, stream>>>(p);
}

// Kernel choice, for comparisons (and a way around a kernel should one misbehave on a device),
// read at every launch so a test can switch: TANDEM_MLA_DECODE_TMA=0 keeps the cache off the
// TMA engine (the kernels below then pick by head count); TANDEM_MLA_DECODE_DIAG=1|2|3 times
// the TMA kernel without P @ C, without the scores, or without loads after the first blocks
// (wrong results: for timing only); TANDEM_MLA_DECODE_SEESAW=1 runs mla_decode_seesaw_kernel
// and TANDEM_MLA_DECODE_PIPE=1 mla_decode_pipe_kernel instead of the TMA wgmma kernel (opt-in
// until they have been timed); TANDEM_MLA_DECODE_WGMMA=0 sends more
// than 32 heads to the mma.sync kernel (32 heads per CTA) instead of the wgmma kernel;
// without TMA, up to 16 heads take mla_decode_h16_kernel (two CTAs per SM).
int env_digit(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e && e[0] >= '0' && e[0] <= '9' ? e[0] - '0' : fallback;
}
bool wgmma_enabled() { return env_digit("TANDEM_MLA_DECODE_WGMMA", 1) != 0; }

bool tma_page_size(int64_t page_size) {
  return page_size == 8 || page_size == 16 || page_size == 32 || page_size == 64;
}
bool use_tma(const MlaDecodeParams& p) {
  return tma_page_size(p.page_size) && env_digit("TANDEM_MLA_DECODE_TMA", 1) != 0 &&
         tma_available();
}

// The cache as a [num_slots, 576] bf16 tensor, boxes of 64 columns x box_rows rows (a page,
// or 32 keys of one for the pipelined kernel) in the 128-byte swizzle (the kernels' regions).
// False if the driver refuses it.
bool encode_cache_map(const MlaDecodeParams& p, CUtensorMap* map, int64_t box_rows) {
  return encode_bf16_map(map, p.cache, kWidth, uint64_t(p.num_slots), uint64_t(kWidth) * 2, 64,
                         uint32_t(box_rows));
}

template <bool kTma, int kDiag = kDiagNone, bool kOneWg = false>
void launch_wgmma(const MlaDecodeParams& p, dim3 grid, const CUtensorMap& map, cudaStream_t stream) {
  cudaFuncSetAttribute(mla_decode_wgmma_kernel<kTma, kDiag, kOneWg>,
                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmemBytes));
  mla_decode_wgmma_kernel<kTma, kDiag, kOneWg><<<grid, 256, kWgSmemBytes, stream>>>(p, map);
}

}  // namespace

int mla_decode_mma_heads_per_cta(const MlaDecodeParams& p) {
  if (use_tma(p)) return kWgHeads;
  return p.heads <= 16 ? 16 : p.heads <= 32 || !wgmma_enabled() ? 32 : kWgHeads;
}

int mla_decode_mma_ctas_per_sm(const MlaDecodeParams& p) {
  return p.heads <= 16 && !use_tma(p) ? 2 : 1;
}

bool mla_decode_mma_supported(const MlaDecodeParams& p) {
  return p.cache_dtype == DType::kBF16 && p.lora == kLora && p.rope == kRope &&
         reinterpret_cast<uintptr_t>(p.cache) % 16 == 0 && p.ql_stride_b % 2 == 0 &&
         p.ql_stride_h % 2 == 0 && p.qp_stride_b % 2 == 0 && p.qp_stride_h % 2 == 0 &&
         reinterpret_cast<uintptr_t>(p.q_latent) % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p.q_pe) % 8 == 0 && p.out_stride_b % 2 == 0 &&
         p.out_stride_h % 2 == 0 && reinterpret_cast<uintptr_t>(p.out) % 8 == 0 &&
         p.num_slots < (int64_t(1) << 31);
}

void launch_mla_decode_mma(const MlaDecodeParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.heads == 0) return;
  const int per_cta = mla_decode_mma_heads_per_cta(p);
  const dim3 grid(unsigned((p.heads + per_cta - 1) / per_cta), unsigned(p.num_splits), unsigned(p.batch));
  CUtensorMap map{};
  const bool pipe = env_digit("TANDEM_MLA_DECODE_PIPE", 0) == 1;
  const int64_t box_rows = pipe ? std::min<int64_t>(p.page_size, kPipeKeys) : p.page_size;
  const bool tma = use_tma(p), mapped = tma && encode_cache_map(p, &map, box_rows);
  if (mapped && pipe) {
    cudaFuncSetAttribute(mla_decode_pipe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         int(kPipeSmemBytes));
    mla_decode_pipe_kernel<<<grid, 256, kPipeSmemBytes, stream>>>(p, map);
  } else if (mapped && env_digit("TANDEM_MLA_DECODE_SEESAW", 0) == 1) {
    cudaFuncSetAttribute(mla_decode_seesaw_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         int(kSeesawSmemBytes));
    mla_decode_seesaw_kernel<<<grid, 256, kSeesawSmemBytes, stream>>>(p, map);
  } else if (mapped) {
    switch (env_digit("TANDEM_MLA_DECODE_DIAG", 0)) {
      case kDiagNoPv: launch_wgmma<true, kDiagNoPv>(p, grid, map, stream); break;
      case kDiagNoScores: launch_wgmma<true, kDiagNoScores>(p, grid, map, stream); break;
      case kDiagNoLoads: launch_wgmma<true, kDiagNoLoads>(p, grid, map, stream); break;
      default:
        if (env_digit("TANDEM_MLA_DECODE_ONEWG", 0) == 1) {
          launch_wgmma<true, kDiagNone, true>(p, grid, map, stream);
        } else {
          launch_wgmma<true>(p, grid, map, stream);
        }
    }
  } else if (tma) {
    // The driver refused the map: the cp.async kernel over the same grid (64 heads per CTA).
    launch_wgmma<false>(p, grid, map, stream);
  } else if (p.heads <= 16) {
    launch_h16(p, grid, stream);
  } else if (p.heads <= 32 || !wgmma_enabled()) {
    launch_nht<2>(p, stream);
  } else {
    launch_wgmma<false>(p, grid, map, stream);
  }
  if (p.num_splits > 1)
    mla_decode_mma_combine_kernel<<<unsigned(p.batch * p.heads), 128, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
