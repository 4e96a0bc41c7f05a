// Per-token, per-128-column FP8 quantization of activations (DeepSeek-V3's activation scheme,
// arXiv:2412.19437 section 3.3): one warp per (row, 128 columns), each lane 4 columns (lane,
// lane + 32, ...: every load instruction of the warp is contiguous). The arithmetic is the CPU
// twin's (ops/cpu/fp8_quant.cpp) step for step, so q and scales agree bitwise.
#include <cuda_fp8.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cublaslt_fp8_gemm.h"

namespace tandem::ops::cuda {

namespace {

constexpr float kE4m3Max = 448.0f;
constexpr int kWarpsPerBlock = 8;

__global__ void __launch_bounds__(kWarpsPerBlock * 32) quantize_fp8_kernel(
    const void* x, DType x_dtype, int64_t ldx, int64_t m, int64_t k, __nv_fp8_e4m3* q,
    float* scale, bool mn_major, int64_t scale_rows) {
  const int64_t kblocks = k / 128;
  const int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (item >= m * kblocks) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const int64_t row = item / kblocks, kb = item % kblocks, col0 = kb * 128 + lane;
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[i] = load_f32(x, x_dtype, row * ldx + col0 + 32 * i);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = warp_max(amax);
  const float s = amax > 0.0f ? __fdiv_rn(amax, kE4m3Max) : 1.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[row * k + col0 + 32 * i] = __nv_fp8_e4m3(__fdiv_rn(v[i], s));  // RNE, saturating at 448
  }
  if (lane == 0) scale[mn_major ? kb * scale_rows + row : row * kblocks + kb] = s;
}

}  // namespace

void quantize_fp8_rows(const void* x, DType x_dtype, int64_t ldx, int64_t m, int64_t k, void* q,
                       float* scale, Fp8ActScaleLayout layout, cudaStream_t stream,
                       int64_t scale_rows) {
  if (m == 0 || k == 0) return;
  const int64_t items = m * (k / 128);
  quantize_fp8_kernel<<<unsigned(ceil_div(items, kWarpsPerBlock)), kWarpsPerBlock * 32, 0, stream>>>(
      x, x_dtype, ldx, m, k, static_cast<__nv_fp8_e4m3*>(q), scale,
      layout == Fp8ActScaleLayout::kMnMajor, scale_rows > 0 ? scale_rows : m);
}

}  // namespace tandem::ops::cuda
