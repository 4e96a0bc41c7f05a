// MLA decode attention, absorbed form over the paged latent cache (DeepSeek-V2 paper, 2.1.3):
// score_j = (q_latent . c_j + q_pe . k_pe_j) * scale, out = softmax(score) @ c.
// Split over the KV length (flash-decoding): grid (batch * heads, splits); each block runs an
// online softmax over its key range and writes (unnormalized out, max, sum) to the workspace;
// a combine kernel merges the splits. Each block re-reads its keys for its own head (through
// L2): the correct baseline; sharing one key load across heads (FlashMLA) is the fast path.
#include "ops/cuda/smxx_attention.cuh"

namespace tandem::ops::cuda {

namespace {

constexpr int64_t kKeysPerSplit = 256;
constexpr int kMaxSplits = 32;

template <class C>
__global__ void __launch_bounds__(kAttnThreads) mla_decode_split_kernel(MlaDecodeParams p) {
  extern __shared__ float smem[];
  const int64_t width = p.lora + p.rope;
  float* q = smem;                       // [lora + rope]
  float* scores = q + width;             // [kAttnChunk]
  float* scratch = scores + kAttnChunk;  // [32]
  __shared__ int64_t slots[kAttnChunk];
  const int64_t b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int split = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const C* cache = static_cast<const C*>(p.cache);
  float* ws = p.workspace + (blockIdx.x * int64_t(p.num_splits) + split) * (p.lora + 2);

  const int64_t len = p.seq_lens[b];
  int64_t begin = 0, end = 0;
  if (len < 1 || len > p.max_pages * p.page_size) {
    if (threadIdx.x == 0 && split == 0 && h == 0)
      report_error(p.error, kErrDecodeSeqLen, len, p.max_pages * p.page_size, b);
  } else {
    const int64_t per_split = (len + p.num_splits - 1) / p.num_splits;
    begin = min64(len, split * per_split);
    end = min64(len, begin + per_split);
  }

  const float* ql = p.q_latent + b * p.ql_stride_b + h * p.ql_stride_h;
  const float* qp = p.q_pe + b * p.qp_stride_b + h * p.qp_stride_h;
  for (int64_t d = threadIdx.x; d < width; d += blockDim.x) q[d] = d < p.lora ? ql[d] : qp[d - p.lora];
  __syncthreads();

  OnlineSoftmax state;
  const int32_t* pages = p.page_table + b * p.max_pages;
  for (int64_t j0 = begin; j0 < end; j0 += kAttnChunk) {
    const int n = int(min64(kAttnChunk, end - j0));
    if (threadIdx.x < n) {
      const int64_t j = j0 + threadIdx.x;
      int64_t slot = int64_t(pages[j / p.page_size]) * p.page_size + j % p.page_size;
      if (slot < 0 || slot >= p.num_slots) {
        report_error(p.error, kErrDecodeSlot, slot, p.num_slots, b);
        slot = -1;
      }
      slots[threadIdx.x] = slot;
    }
    __syncthreads();
    for (int jj = warp; jj < n; jj += kAttnWarps) {
      const int64_t slot = slots[jj];
      float s = __int_as_float(0x7fc00000);  // a bad slot poisons the row
      if (slot >= 0) {
        const C* row = cache + slot * width;
        s = 0.0f;
        for (int64_t d = lane; d < width; d += 32) s = fmaf(q[d], to_f32(row[d]), s);
        s = warp_sum(s);
      }
      if (lane == 0) scores[jj] = s * p.scale;
    }
    __syncthreads();
    online_softmax_round(state, scores, n, p.lora, scratch, [&](int j, int64_t d) {
      const int64_t slot = slots[j];
      return slot >= 0 ? to_f32(cache[slot * width + d]) : 0.0f;
    });
  }
#pragma unroll
  for (int i = 0; i < kAttnMaxVPerThread; ++i) {
    const int64_t d = threadIdx.x + int64_t(i) * kAttnThreads;
    if (d < p.lora) ws[d] = state.acc[i];
  }
  if (threadIdx.x == 0) {
    ws[p.lora] = state.m;
    ws[p.lora + 1] = state.l;
  }
}

__global__ void __launch_bounds__(kAttnThreads) mla_decode_combine_kernel(MlaDecodeParams p) {
  const int64_t b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const float* ws = p.workspace + blockIdx.x * int64_t(p.num_splits) * (p.lora + 2);
  float m = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, ws[s * (p.lora + 2) + p.lora]);
  float l = 0.0f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float ms = ws[s * (p.lora + 2) + p.lora];
    if (ms != -INFINITY) l += ws[s * (p.lora + 2) + p.lora + 1] * expf(ms - m);
  }
  const float inv = __fdiv_rn(1.0f, l);  // inf when no key was valid: the output is NaN
  float* out = p.out + b * p.out_stride_b + h * p.out_stride_h;
  for (int64_t d = threadIdx.x; d < p.lora; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < p.num_splits; ++s) {
      const float ms = ws[s * (p.lora + 2) + p.lora];
      if (ms != -INFINITY) a = fmaf(ws[s * (p.lora + 2) + d], expf(ms - m), a);
    }
    out[d] = l > 0.0f ? a * inv : __int_as_float(0x7fc00000);
  }
}

}  // namespace

int mla_decode_num_splits(int64_t max_len) {
  const int64_t s = (max_len + kKeysPerSplit - 1) / kKeysPerSplit;
  return int(std::max<int64_t>(1, std::min<int64_t>(s, kMaxSplits)));
}

void launch_mla_decode(const MlaDecodeParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.heads == 0) return;
  const size_t smem = size_t(p.lora + p.rope + kAttnChunk + 32) * sizeof(float);
  const dim3 grid(unsigned(p.batch * p.heads), unsigned(p.num_splits));
  if (p.cache_dtype == DType::kBF16) {
    mla_decode_split_kernel<__nv_bfloat16><<<grid, kAttnThreads, smem, stream>>>(p);
  } else {
    mla_decode_split_kernel<float><<<grid, kAttnThreads, smem, stream>>>(p);
  }
  mla_decode_combine_kernel<<<unsigned(p.batch * p.heads), kAttnThreads, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
