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

// The scale of weight (n, k) of an fp8 matrix whose block scales start at `scale`.
__device__ __forceinline__ float block_scale(const GemmParams& p, const float* scale, int64_t n,
                                             int64_t k) {
  return scale[(n / kScaleBlock) * p.scale_stride + k / kScaleBlock];
}

template <class W>
__device__ __forceinline__ float weight_at(const GemmParams& p, const W* w, const float* scale,
                                           int64_t n, int64_t k) {
  const float v = to_f32(w[n * p.w_stride + k]);
  if constexpr (sizeof(W) == 1) {
    return __fmul_rn(v, block_scale(p, scale, n, k));
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
  const float* scale = p.scale_inv + z * p.scale_batch_stride;  // fp8 only
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
      bs[kk][r] = (n < p.n && k < p.k) ? weight_at(p, w, scale, n, k) : 0.0f;
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
  const float* scale = p.scale_inv + z * p.scale_batch_stride;  // fp8 only
  float* out = p.out + z * p.out_batch_stride;
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kSkinnyWarps + (threadIdx.x >> 5);
  if (n >= p.n) return;
  for (int64_t m0 = 0; m0 < p.m; m0 += kSkinnyChunk) {
    float acc[kSkinnyChunk] = {};
    for (int64_t k = lane; k < p.k; k += 32) {
      const float wv = weight_at(p, w, scale, n, k);
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

// The decode path with vector loads: each lane takes kPack<W> consecutive k, one 16-byte load of
// bf16 weights (8) or one 4-byte load of fp8 ones (4, a single block scale), and float4s of each
// x row. Needs K, the weight strides and offsets in whole packs, 16-byte aligned x rows.
template <class W> struct VecPack;
template <> struct VecPack<__nv_bfloat16> { using Raw = uint4; static constexpr int kElems = 8; };
template <> struct VecPack<__nv_fp8_e4m3> { using Raw = uint32_t; static constexpr int kElems = 4; };

__device__ __forceinline__ void unpack(const uint4& raw, float, float* wv) {
  const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(h2[e]);
    wv[2 * e] = f.x;
    wv[2 * e + 1] = f.y;
  }
}

__device__ __forceinline__ void unpack(uint32_t raw, float scale, float* wv) {
  __nv_fp8x4_e4m3 q;
  q.__x = raw;
  const float4 f = static_cast<float4>(q);
  wv[0] = __fmul_rn(f.x, scale);  // one f32 product each, as weight_at and the CPU
  wv[1] = __fmul_rn(f.y, scale);
  wv[2] = __fmul_rn(f.z, scale);
  wv[3] = __fmul_rn(f.w, scale);
}

template <class W>
__global__ void __launch_bounds__(kSkinnyWarps * 32) gemm_skinny_vec_kernel(GemmParams p) {
  using Raw = typename VecPack<W>::Raw;
  constexpr int kV = VecPack<W>::kElems;
  const int64_t z = blockIdx.y;
  const float* x = p.x + z * p.x_batch_stride;
  const W* w = static_cast<const W*>(p.w) + z * p.w_batch_stride;
  const float* scale = p.scale_inv + z * p.scale_batch_stride;  // fp8 only
  float* out = p.out + z * p.out_batch_stride;
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kSkinnyWarps + (threadIdx.x >> 5);
  if (n >= p.n) return;
  const Raw* wrow = reinterpret_cast<const Raw*>(w + n * p.w_stride);
  const int64_t packs = p.k / kV;
  for (int64_t m0 = 0; m0 < p.m; m0 += kSkinnyChunk) {
    float acc[kSkinnyChunk] = {};
    for (int64_t c = lane; c < packs; c += 32) {
      float wv[kV];
      unpack(__ldg(wrow + c), sizeof(W) == 1 ? block_scale(p, scale, n, c * kV) : 1.0f, wv);
#pragma unroll
      for (int i = 0; i < kSkinnyChunk; ++i) {
        if (m0 + i >= p.m) break;
        const float4* xr = reinterpret_cast<const float4*>(x + (m0 + i) * p.x_stride + c * kV);
        float s = acc[i];
#pragma unroll
        for (int q = 0; q < kV / 4; ++q) {
          const float4 a = xr[q];
          s = fmaf(a.x, wv[4 * q], s);
          s = fmaf(a.y, wv[4 * q + 1], s);
          s = fmaf(a.z, wv[4 * q + 2], s);
          s = fmaf(a.w, wv[4 * q + 3], s);
        }
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

bool aligned(const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <class W>
void launch_typed(const GemmParams& p, cudaStream_t stream) {
  if (p.m <= kSkinnyRows) {
    const dim3 grid(ceil_div(p.n, kSkinnyWarps), unsigned(p.batch));
    bool vec = false;
    if constexpr (!std::is_same_v<W, float>) {
      constexpr int v = VecPack<W>::kElems;
      vec = p.k % v == 0 && p.w_stride % v == 0 && p.w_batch_stride % v == 0 &&
            p.x_stride % 4 == 0 && p.x_batch_stride % 4 == 0 &&
            aligned(p.w, sizeof(typename VecPack<W>::Raw)) && aligned(p.x, 16);
      if (vec) gemm_skinny_vec_kernel<W><<<grid, kSkinnyWarps * 32, 0, stream>>>(p);
    }
    if (!vec) {
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
