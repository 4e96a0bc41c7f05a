// cuBLASLt GEMM for the row-major layout of linear: out[M, N] = x[M, K] @ w[N, K]^T with bf16
// x and w, f32 accumulation (CUBLAS_COMPUTE_32F), out f32 or bf16. Leading dimensions are row
// strides in elements. The algorithm of each (shape, strides, alignment, dtype) is chosen once
// by cuBLASLt's heuristic and cached. Thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tandem::ops::cuda {

struct LtGemm {
  const void* x; int64_t ldx;     // bf16 [M, K]
  const void* w; int64_t ldw;     // bf16 [N, K]
  void* out; int64_t ldo;         // [M, N]
  DType out_dtype;                // f32 | bf16
  int64_t m, n, k;
};
void cublaslt_gemm_bf16(const LtGemm& g, int device, cudaStream_t stream);

}  // namespace tandem::ops::cuda
