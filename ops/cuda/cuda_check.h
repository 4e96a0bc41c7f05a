// Check macros for every CUDA runtime and cuBLAS(Lt) call (STYLE.md 7): a failure throws
// tandem::Error with file, line, the call and the library's own error name and string.
// Host code only (compiled by the C++ compiler; kernels report through launch.h's error word).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "core/error.h"

#define TANDEM_CUDA_CHECK(expr)                                                            \
  do {                                                                                     \
    const cudaError_t tandem_err_ = (expr);                                                \
    if (tandem_err_ != cudaSuccess) [[unlikely]] {                                         \
      ::tandem::throw_error(__FILE__, __LINE__,                                            \
                            ::fmt::format("CUDA error {} in {}: {}",                       \
                                          cudaGetErrorName(tandem_err_), #expr,            \
                                          cudaGetErrorString(tandem_err_)));               \
    }                                                                                      \
  } while (0)

#define TANDEM_CUBLAS_CHECK(expr)                                                          \
  do {                                                                                     \
    const cublasStatus_t tandem_st_ = (expr);                                              \
    if (tandem_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]] {                                \
      ::tandem::throw_error(__FILE__, __LINE__,                                            \
                            ::fmt::format("cuBLAS error {} in {}",                         \
                                          ::tandem::ops::cuda::cublas_status_name(tandem_st_), \
                                          #expr));                                         \
    }                                                                                      \
  } while (0)

// After a kernel launch: the launch's own error (bad configuration, no kernel image for this
// GPU). With TANDEM_CUDA_SYNC=1 in the environment also synchronizes, so an asynchronous
// fault is reported at the op that caused it (debugging; slow).
#define TANDEM_CUDA_LAUNCH_CHECK(op_name) ::tandem::ops::cuda::after_launch(op_name, __FILE__, __LINE__)

namespace tandem::ops::cuda {
// cuBLASLt has no status-name function of its own (libcublas has; it is not linked).
const char* cublas_status_name(cublasStatus_t status);
void after_launch(const char* op_name, const char* file, int line);
}  // namespace tandem::ops::cuda
