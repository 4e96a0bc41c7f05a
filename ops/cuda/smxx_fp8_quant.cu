// Per-token, per-128-column FP8 quantization of activations (DeepSeek-V3's activation scheme,
// arXiv:2412.19437 section 3.3): one block of 128 threads per (row, 128 columns).
#include <cuda_fp8.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cublaslt_fp8_gemm.h"

namespace tandem::ops::cuda {

namespace {

constexpr float kE4m3Max = 448.0f;

__global__ void __launch_bounds__(128) quantize_fp8_kernel(const void* x, DType x_dtype, int64_t ldx,
                                                           int64_t m, int64_t k, __nv_fp8_e4m3* q,
                                                           float* scale, bool mn_major) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, kb = blockIdx.y, col = kb * 128 + threadIdx.x;
  const float v = load_f32(x, x_dtype, row * ldx + col);
  const float amax = block_max(fabsf(v), scratch);
  const float s = amax > 0.0f ? amax / kE4m3Max : 1.0f;
  q[row * k + col] = __nv_fp8_e4m3(v / s);  // round to nearest even, saturating at 448
  if (threadIdx.x == 0) scale[mn_major ? kb * m + row : row * (k / 128) + kb] = s;
}

}  // namespace

void quantize_fp8_rows(const void* x, DType x_dtype, int64_t ldx, int64_t m, int64_t k, void* q,
                       float* scale, Fp8ActScaleLayout layout, cudaStream_t stream) {
  if (m == 0 || k == 0) return;
  quantize_fp8_kernel<<<dim3(unsigned(m), unsigned(k / 128)), 128, 0, stream>>>(
      x, x_dtype, ldx, m, k, static_cast<__nv_fp8_e4m3*>(q), scale,
      layout == Fp8ActScaleLayout::kMnMajor);
}

}  // namespace tandem::ops::cuda
