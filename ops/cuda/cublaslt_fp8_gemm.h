// FP8 block-scaled GEMM on cuBLASLt (CUDA >= 12.9 on sm_90): out[M, N] = x @ W^T with e4m3 x and
// W, x scaled per token per 128 columns (CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F) and W per
// 128 x 128 block (BLK128x128_32F, DeepSeek-V3's `weight_scale_inv`), f32 accumulation, out
// bf16 or f32. The scale layouts cuBLASLt reads were found on an H200 (CUDA 13) by
// OpHarness.Fp8BlockGemmProbe: activation scales [K/128][M] (kMnMajor, M unpadded: the layout
// torch's scaled_mm checks for 1x128 scales) and weight scales [N/128][K/128] (kAsStored).
// ops::linear uses it for f8_e4m3 weights (smxx_linear.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace tandem::ops::cuda {

// Where the activation scales of row m and 128-column block kb live.
enum class Fp8ActScaleLayout {
  kMnMajor,  // [K / 128][M]: M contiguous (DeepGEMM's layout)
  kKMajor,   // [M][K / 128]
};
// Where the weight scale of 128-row block nb and 128-column block kb lives.
enum class Fp8WeightScaleLayout {
  kAsStored,    // [N / 128][K / 128], the checkpoint's scale_inv
  kTransposed,  // [K / 128][N / 128]
};

struct LtFp8Gemm {
  const void* x; const float* x_scale;  // e4m3 [M, K] contiguous; scales per Fp8ActScaleLayout
  const void* w; const float* w_scale;  // e4m3 [N, K] contiguous; scales per Fp8WeightScaleLayout
  void* out; DType out_dtype;           // [M, N] rows of ldo (0: N), f32 | bf16
  int64_t m, n, k;                      // k % 128 == 0
  Fp8ActScaleLayout act_layout = Fp8ActScaleLayout::kMnMajor;
  Fp8WeightScaleLayout weight_layout = Fp8WeightScaleLayout::kAsStored;
  int64_t ldo = 0;
};
// False (with the reason in *why) when cuBLASLt offers no algorithm for the problem; throws on
// a CUDA or cuBLAS error.
bool cublaslt_gemm_fp8_block(const LtFp8Gemm& g, int device, cudaStream_t stream, std::string* why);

// x (f32 | bf16 [M, K], row stride ldx) -> e4m3 [M, K] and one f32 scale per (row, 128
// columns): scale = amax / 448 (1 for an all-zero block), q = round_to_e4m3(x / scale)
// (IEEE f32 division, round to nearest even, saturating). One kernel, one warp per (row, 128
// columns). The CPU twin (ops/cpu/fp8_quant.h) gives bitwise the same q and scales.
// scale_rows (kMnMajor only; 0: m) is the scale tensor's row length, for a GEMM over rows
// padded past m (linear pads M to a multiple of 16, see smxx_linear.cpp).
void quantize_fp8_rows(const void* x, DType x_dtype, int64_t ldx, int64_t m, int64_t k, void* q,
                       float* scale, Fp8ActScaleLayout layout, cudaStream_t stream,
                       int64_t scale_rows = 0);

}  // namespace tandem::ops::cuda
