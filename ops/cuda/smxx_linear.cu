// f32-activation GEMM for linear and head_matmul: out[z] = x[z] @ W[z]^T, W in f32, bf16, or
// fp8 e4m3 with 128x128 block scales (dequantized on the fly while staging to shared memory:
// W[n][k] = fp8(W[n][k]) * scale_inv[n / 128][k / 128], the product rounded to f32 as on the
// CPU). f32 accumulation with FFMA; the correct baseline, not the fast path (that is
// tensor-core bf16/fp8 GEMM on bf16 activations).
//  - M <= kSkinnyRows (decode): one warp per output column, lanes along K, so the weight is
//    read once with coalesced loads;
//  - otherwise a 64x64x16 shared-memory tile, 4x4 outputs per thread.
#include <type_traits>

#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTileThreads = 256;
constexpr int kSkinnyRows = 16, kSkinnyChunk = 4, kSkinnyWarps = 8;
constexpr int64_t kScaleBlock = 128;

template <class W>
__device__ __forceinline__ float weight_at(const GemmParams& p, const W* w, int64_t n, int64_t k) {
  const float v = to_f32(w[n * p.w_stride + k]);
  if constexpr (sizeof(W) == 1) {
    return __fmul_rn(v, p.scale_inv[(n / kScaleBlock) * p.scale_stride + k / kScaleBlock]);
  } else {
    return v;
  }
}

template <class W>
__global__ void __launch_bounds__(kTileThreads) gemm_tile_kernel(GemmParams p) {
  __shared__ float as[kTileK][kTileM + 4];
  __shared__ float bs[kTileK][kTileN + 4];
  const int64_t z = blockIdx.z;
  const float* x = p.x + z * p.x_batch_stride;
  const W* w = static_cast<const W*>(p.w) + z * p.w_batch_stride;
  float* out = p.out + z * p.out_batch_stride;
  const int64_t m0 = int64_t(blockIdx.y) * kTileM, n0 = int64_t(blockIdx.x) * kTileN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int linear = tid + e * kTileThreads;
      const int r = linear / kTileK, kk = linear % kTileK;
      const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
      as[kk][r] = (m < p.m && k < p.k) ? x[m * p.x_stride + k] : 0.0f;
      bs[kk][r] = (n < p.n && k < p.k) ? weight_at(p, w, n, k) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < p.n) out[m * p.out_stride + n] = acc[i][j];
    }
  }
}

template <class W>
__global__ void __launch_bounds__(kSkinnyWarps * 32) gemm_skinny_kernel(GemmParams p) {
  const int64_t z = blockIdx.y;
  const float* x = p.x + z * p.x_batch_stride;
  const W* w = static_cast<const W*>(p.w) + z * p.w_batch_stride;
  float* out = p.out + z * p.out_batch_stride;
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kSkinnyWarps + (threadIdx.x >> 5);
  if (n >= p.n) return;
  for (int64_t m0 = 0; m0 < p.m; m0 += kSkinnyChunk) {
    float acc[kSkinnyChunk] = {};
    for (int64_t k = lane; k < p.k; k += 32) {
      const float wv = weight_at(p, w, n, k);
#pragma unroll
      for (int i = 0; i < kSkinnyChunk; ++i) {
        if (m0 + i < p.m) acc[i] = fmaf(x[(m0 + i) * p.x_stride + k], wv, acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < kSkinnyChunk; ++i) {
      const float s = warp_sum(acc[i]);
      if (lane == 0 && m0 + i < p.m) out[(m0 + i) * p.out_stride + n] = s;
    }
  }
}

// The decode path for bf16 weights with 16-byte loads: each lane takes 8 consecutive k (one
// uint4 of weights, two float4 of each x row). Needs K % 8 == 0 and 16-byte aligned rows.
__global__ void __launch_bounds__(kSkinnyWarps * 32) gemm_skinny_bf16x8_kernel(GemmParams p) {
  const int64_t z = blockIdx.y;
  const float* x = p.x + z * p.x_batch_stride;
  const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(p.w) + z * p.w_batch_stride;
  float* out = p.out + z * p.out_batch_stride;
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kSkinnyWarps + (threadIdx.x >> 5);
  if (n >= p.n) return;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + n * p.w_stride);
  const int64_t k8 = p.k / 8;
  for (int64_t m0 = 0; m0 < p.m; m0 += kSkinnyChunk) {
    float acc[kSkinnyChunk] = {};
    for (int64_t c = lane; c < k8; c += 32) {
      const uint4 raw = __ldg(wrow + c);
      const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
      float wv[8];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __bfloat1622float2(h2[e]);
        wv[2 * e] = f.x;
        wv[2 * e + 1] = f.y;
      }
#pragma unroll
      for (int i = 0; i < kSkinnyChunk; ++i) {
        if (m0 + i >= p.m) break;
        const float4* xr = reinterpret_cast<const float4*>(x + (m0 + i) * p.x_stride) + 2 * c;
        const float4 a = xr[0], b = xr[1];
        float s = acc[i];
        s = fmaf(a.x, wv[0], s); s = fmaf(a.y, wv[1], s); s = fmaf(a.z, wv[2], s); s = fmaf(a.w, wv[3], s);
        s = fmaf(b.x, wv[4], s); s = fmaf(b.y, wv[5], s); s = fmaf(b.z, wv[6], s); s = fmaf(b.w, wv[7], s);
        acc[i] = s;
      }
    }
#pragma unroll
    for (int i = 0; i < kSkinnyChunk; ++i) {
      const float s = warp_sum(acc[i]);
      if (lane == 0 && m0 + i < p.m) out[(m0 + i) * p.out_stride + n] = s;
    }
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

template <class W>
void launch_typed(const GemmParams& p, cudaStream_t stream) {
  if (p.m <= kSkinnyRows) {
    const dim3 grid(ceil_div(p.n, kSkinnyWarps), unsigned(p.batch));
    const bool vec = std::is_same_v<W, __nv_bfloat16> && p.k % 8 == 0 && p.w_stride % 8 == 0 &&
                     p.w_batch_stride % 8 == 0 && p.x_stride % 4 == 0 &&
                     p.x_batch_stride % 4 == 0 && aligned16(p.w) && aligned16(p.x);
    if (vec) {
      gemm_skinny_bf16x8_kernel<<<grid, kSkinnyWarps * 32, 0, stream>>>(p);
    } else {
      gemm_skinny_kernel<W><<<grid, kSkinnyWarps * 32, 0, stream>>>(p);
    }
  } else {
    const dim3 grid(ceil_div(p.n, kTileN), ceil_div(p.m, kTileM), unsigned(p.batch));
    gemm_tile_kernel<W><<<grid, kTileThreads, 0, stream>>>(p);
  }
}

}  // namespace

void launch_gemm_f32(const GemmParams& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  switch (p.w_dtype) {
    case DType::kBF16: return launch_typed<__nv_bfloat16>(p, stream);
    case DType::kF8E4M3: return launch_typed<__nv_fp8_e4m3>(p, stream);
    default: return launch_typed<float>(p, stream);
  }
}

}  // namespace tandem::ops::cuda
