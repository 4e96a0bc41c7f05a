// Helpers of the host launchers (smxx_*.cpp): the device, stream and error word of an op.
#pragma once

#include "core/tensor.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device.h"
#include "ops/cuda/launch.h"

namespace tandem::ops::cuda {

// Sets the op's device for the scope and looks up its stream and error word.
struct OpContext {
  explicit OpContext(const Tensor& any)
      : device(any.device().index), guard(device), stream(current_stream(device)),
        error(error_word(device)) {}
  int device;
  DeviceGuard guard;
  cudaStream_t stream;
  KernelErrorWord* error;
};

// Sets g.splits for an fp8_act grouped GEMM (g.n, g.k, g.gate_up set; smxx_moe_grouped.cpp)
// whose rows fall in at most `groups` groups: enough CTAs for two per multiprocessor, whole
// 128-blocks per split, none empty, at most 32. With more than one split, `partial` becomes the
// scratch of their sums (g.partial, g.partial_rows = rows); the caller keeps it until the
// kernels have run.
void plan_fp8_splits(MoeGroupedGemmParams& g, int64_t groups, int64_t rows, int device, Tensor& partial);

template <class T>
inline const T* cptr(const Tensor& t) { return static_cast<const T*>(t.raw_data()); }
template <class T>
inline T* mptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

}  // namespace tandem::ops::cuda
