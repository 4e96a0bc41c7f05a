// ops::fill_random on the GPU: the dummy-weight generator of random_bits.h, bit for bit the
// CPU twin's values (the conversions are RNE and saturating on both sides).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>

#include "ops/cuda/launch.h"
#include "ops/random_bits.h"

namespace tandem::ops::cuda {

namespace {

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __nv_fp8_e4m3 from_f32<__nv_fp8_e4m3>(float v) { return __nv_fp8_e4m3(v); }

// One thread per group of 4 elements (one 64-bit draw), grid-stride.
template <class T>
__global__ void fill_random_kernel(T* out, int64_t numel, uint64_t key, float amplitude,
                                   float offset) {
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < groups;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = 4 * g;
    const uint64_t r = splitmix64(key + uint64_t(i));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (i + j < numel) {
        out[i + j] = from_f32<T>(offset + amplitude * unit16(uint32_t(r >> (16 * j)) & 0xffffu));
      }
    }
  }
}

}  // namespace

void launch_fill_random(const FillRandomParams& p, cudaStream_t stream) {
  const int64_t groups = (p.numel + 3) / 4;
  constexpr int kThreads = 256;
  const int blocks = int(std::min<int64_t>((groups + kThreads - 1) / kThreads, 132 * 32));
  switch (p.dtype) {
    case DType::kF32:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(p.out), p.numel,
                                                          p.key, p.amplitude, p.offset);
      break;
    case DType::kBF16:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(p.out),
                                                          p.numel, p.key, p.amplitude, p.offset);
      break;
    default:
      fill_random_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_fp8_e4m3*>(p.out),
                                                          p.numel, p.key, p.amplitude, p.offset);
      break;
  }
}

}  // namespace tandem::ops::cuda
