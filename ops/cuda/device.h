// The CUDA device layer under ops/cuda: a caching allocator registered with core (so
// Tensor::empty(..., Device::cuda(i)) and Tensor::to work), one current stream per device, the
// cuBLASLt handle, and the kernel error word through which kernels report bad indices.
//
// Stream order: every op, copy and allocation of device i uses current_stream(i). A freed
// block goes back to a free list at once and may be handed out again before kernels queued on
// that stream that still read it have run; that is safe because the next user is queued on the
// same stream, after them. Code that uses another stream must synchronize before freeing.
//
// Thread-safety: the allocator and the handle table are thread-safe; set_current_stream is
// per thread.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "ops/cuda/launch.h"

namespace tandem::ops::cuda {

// Registers the allocator with core (idempotent; also done at static initialization).
void init();
// Number of usable CUDA devices; 0 when there is no GPU or no driver (never throws).
int device_count();

// The stream all work on `device` is queued on: this thread's override, else a per-device
// non-blocking stream created on first use.
cudaStream_t current_stream(int device);
void set_current_stream(int device, cudaStream_t stream);  // nullptr: back to the default

// Caching allocator over cudaMalloc (no managed memory). Sizes are rounded up to classes (512 B
// steps below 1 MiB, then four classes per power of two), blocks of a class are reused.
// On cudaMalloc failure the cache is released and the allocation retried; nullptr if it still
// fails. Throws for other CUDA errors (no device, driver failure).
void* device_alloc(size_t bytes, int device);
void device_free(void* ptr, int device);
void empty_cache(int device);  // returns the cached, unused blocks to the driver
struct AllocatorStats {
  size_t in_use_bytes = 0;   // handed out, rounded sizes
  size_t cached_bytes = 0;   // free blocks kept for reuse
  size_t malloc_count = 0;   // cudaMalloc calls so far
};
AllocatorStats allocator_stats(int device);

// Copies between host and device or within devices, queued on the device's current stream;
// synchronizes when a host buffer is involved (so the caller may read or free it at once), and
// then reports errors that kernels recorded in the error word.
void copy_bytes(void* dst, const void* src, size_t bytes, int dst_device, int src_device);

// The device pointer of the error word kernels write into (pinned, mapped host memory).
KernelErrorWord* error_word(int device);
// Synchronizes the device's stream and throws tandem::Error if a kernel recorded a bad index.
void synchronize(int device);

// cuBLASLt handle and a workspace for `device` (created on first use).
cublasLtHandle_t cublaslt_handle(int device);
void* cublaslt_workspace(int device, size_t* bytes);

// The device the current thread's CUDA calls go to; a guard that sets and restores it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace tandem::ops::cuda
