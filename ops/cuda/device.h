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
#include <unordered_map>
#include <vector>

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
// The device's multiprocessor count (looked up once per device).
int sm_count(int device);

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

// Memory for CUDA graphs. While a pool is current on this thread for its device
// (ScopedGraphPool), allocations there come from the pool and frees of its blocks go back to
// it, whenever they happen; its blocks are never handed to any other allocation, so the
// addresses a captured graph uses stay its own. Graphs replayed one at a time on one stream may
// share a pool (PyTorch's graph pools work the same way).
class GraphPool {
 public:
  explicit GraphPool(int device);
  ~GraphPool();  // synchronizes the device and returns the pool's free blocks to the driver
  GraphPool(const GraphPool&) = delete;
  GraphPool& operator=(const GraphPool&) = delete;
  int device() const { return device_; }
  size_t bytes() const;  // held by the pool, in use or free

 private:
  friend void* device_alloc(size_t, int);
  friend void device_free(void*, int);
  int device_;
  size_t bytes_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_lists_;  // guarded by the device's lock
};
class ScopedGraphPool {
 public:
  explicit ScopedGraphPool(GraphPool& pool);
  ~ScopedGraphPool();
  ScopedGraphPool(const ScopedGraphPool&) = delete;
  ScopedGraphPool& operator=(const ScopedGraphPool&) = delete;

 private:
  int device_;
  GraphPool* previous_;
};

// A CUDA graph of the work queued on a device's current stream between begin_capture and
// end_capture (relaxed capture mode: allocations may happen inside; make a GraphPool current
// around the capture). replay() queues the whole graph on the current stream again.
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void begin_capture(int device);
  void end_capture();  // throws (and leaves the stream usable) when the capture failed
  void replay();
  bool ready() const { return exec_ != nullptr; }

 private:
  int device_ = -1;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// Copies between host and device or within devices, queued on the device's current stream;
// synchronizes when a host buffer is involved (so the caller may read or free it at once), and
// then reports errors that kernels recorded in the error word.
void copy_bytes(void* dst, const void* src, size_t bytes, int dst_device, int src_device);

// GPU time between start() and stop() on a device's current stream (CUDA events).
class StreamTimer {
 public:
  explicit StreamTimer(int device);
  ~StreamTimer();
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;
  void start();
  void stop();
  double elapsed_ms();  // waits for the stop event

 private:
  int device_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Page-locked host memory (cudaHostAlloc): device-to-host copies into it run at DMA speed
// (about 4x pageable memory for large copies). Freed with pinned_host_free.
void* pinned_host_alloc(size_t bytes);
void pinned_host_free(void* ptr);

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
