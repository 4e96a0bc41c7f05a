// Many device-to-device copies in one kernel launch (the cuda_ipc transport's batched path):
// each copy is a (src, dst, bytes) triple, typically one 64-token KV page of one layer, and the
// destination may be a peer GPU's memory opened through CUDA IPC (peer access enabled). One
// cudaMemcpyAsync per 72 KiB page costs a few microseconds of launch overhead, which is longer
// than the copy itself over NVLink; one launch for hundreds of pages is not. Plain C++ header:
// no CUDA types, so callers compile without nvcc.
// Thread-safety: stateless; the launch goes on the caller's stream.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tandem::disagg {

struct PageCopy {
  const uint8_t* src;  // device memory of the current device
  uint8_t* dst;        // device memory (this GPU or a peer's)
  uint64_t bytes;
};

// How many PageCopy fit in one launch (they travel as a kernel parameter, no host buffer to
// keep alive).
inline constexpr size_t kPageCopiesPerLaunch = 1024;

// Queues copies[0, n) (n <= kPageCopiesPerLaunch) on `stream` (a cudaStream_t) as one kernel.
// Returns the launch's cudaError_t as an int (0: queued).
int launch_page_copies(const PageCopy* copies, size_t n, void* stream);

}  // namespace tandem::disagg
