// Helpers of the host launchers (smxx_*.cpp): the device, stream and error word of an op.
#pragma once

#include "core/tensor.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device.h"

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

template <class T>
inline const T* cptr(const Tensor& t) { return static_cast<const T*>(t.raw_data()); }
template <class T>
inline T* mptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

}  // namespace tandem::ops::cuda
