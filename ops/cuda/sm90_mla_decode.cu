// MLA decode attention on tensor cores for a bf16 latent cache of DeepSeek's width
// (kv_lora_rank 512 + rope 64), absorbed form (DeepSeek-V2 paper, 2.1.3):
// score_j = (q_latent . c_j + q_pe . k_pe_j) * scale, out = softmax(score) @ c[:, :512].
//
// One CTA per (head group of 16 * NHT heads, KV split, sequence): every key block is loaded
// once into shared memory (cp.async, two stages) and used by all heads of the group, so a
// sequence's cache is read from memory once per group instead of once per head. Warps are
// (head tile ht of 16 heads) x (slice ds of 4): for scores, warp (ht, ds) computes the 16 heads
// x 16 keys [16 ds, 16 ds + 16) of the 64-key block over all 576 dims; after a barrier each warp
// reads the 16 x 64 scores of its head tile, runs the online softmax (base 2) and accumulates
// out[16 heads, dims 128 ds .. 128 ds + 128). mma.sync m16n8k16 bf16 with f32 accumulation;
// the query and the probabilities are rounded to bf16 (as FlashMLA does), so the result is
// bf16-accurate (relative error about 3e-3), not f32-accurate: the f32 cache keeps the exact
// SIMT kernel (smxx_mla_decode.cu).
//
// Shared-memory rows are padded from 576 to 584 bf16 (1168 bytes = 73 x 16): ldmatrix's eight
// row addresses then fall on distinct bank groups.
#include "ops/cuda/common.cuh"

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

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// d += a (16x16, row) * b (16x8, col); bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
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

  const int64_t len = p.seq_lens[b];
  int64_t begin = 0, end = 0;
  if (len < 1 || len > p.max_pages * p.page_size) {
    if (tid == 0 && split == 0 && blockIdx.x == 0)
      report_error(p.error, kErrDecodeSeqLen, len, p.max_pages * p.page_size, b);
  } else {
    const int64_t per_split = (len + p.num_splits - 1) / p.num_splits;
    begin = min64(len, split * per_split);
    end = min64(len, begin + per_split);
  }
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

  auto fill_slots = [&](int blk, int stage) {
    if (tid < kKeys) {
      const int64_t j = begin + int64_t(blk) * kKeys + tid;
      int32_t slot = kSlotPast;
      if (j < end) {
        const int64_t s = int64_t(pages[j / p.page_size]) * p.page_size + j % p.page_size;
        if (s < 0 || s >= p.num_slots) {
          report_error(p.error, kErrDecodeSlot, s, p.num_slots, b);
          slot = kSlotBad;
        } else {
          slot = int32_t(s);
        }
      }
      sm.slot[stage][tid] = slot;
    }
  };
  // Rows of invalid keys are zero-filled: a zero probability times stale shared memory could
  // be NaN times zero.
  auto load_block = [&](int stage) {
    for (int i = tid; i < kKeys * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int32_t slot = sm.slot[stage][r];
      void* dst = &sm.kv[stage][r][c * 8];
      if (slot >= 0) {
        cp_async16(dst, cache + int64_t(slot) * kWidth + c * 8);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_commit();
  };

  if (nblocks > 0) fill_slots(0, 0);
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
    if (blk + 1 < nblocks) fill_slots(blk + 1, stage ^ 1);
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

}  // namespace

int mla_decode_mma_heads_per_cta(int64_t heads) { return heads <= 16 ? 16 : 32; }

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
  if (p.heads <= 16) {
    launch_nht<1>(p, stream);
  } else {
    launch_nht<2>(p, stream);
  }
  if (p.num_splits > 1)
    mla_decode_mma_combine_kernel<<<unsigned(p.batch * p.heads), 128, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
