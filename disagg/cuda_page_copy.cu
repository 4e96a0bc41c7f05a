// One kernel for a batch of device copies (disagg/cuda_page_copy.h). Grid: y = the copy,
// x = blocks sharing one copy (more for long copies). 16-byte loads and stores where both
// pointers and the length allow it, bytes otherwise; four loads in flight per thread.
#include <cuda_runtime.h>

#include "disagg/cuda_page_copy.h"

namespace tandem::disagg {
namespace {

struct PageCopyParams {
  PageCopy copies[kPageCopiesPerLaunch];  // [n]
};

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

__global__ void page_copy_kernel(const __grid_constant__ PageCopyParams p) {
  const PageCopy c = p.copies[blockIdx.y];
  const bool vec = ((reinterpret_cast<uintptr_t>(c.src) | reinterpret_cast<uintptr_t>(c.dst) |
                     c.bytes) & 15) == 0;
  if (vec) {
    const uint4* s = reinterpret_cast<const uint4*>(c.src);
    uint4* d = reinterpret_cast<uint4*>(c.dst);
    const uint64_t n = c.bytes / 16;
    const uint64_t stride = uint64_t(gridDim.x) * kThreads;
    uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
    for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = s[i + u * stride];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) d[i + u * stride] = v[u];
    }
    for (; i < n; i += stride) d[i] = s[i];
  } else {
    const uint64_t stride = uint64_t(gridDim.x) * kThreads;
    for (uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x; i < c.bytes; i += stride)
      c.dst[i] = c.src[i];
  }
}

}  // namespace

int launch_page_copies(const PageCopy* copies, size_t n, void* stream) {
  if (n == 0) return 0;
  if (n > kPageCopiesPerLaunch) return int(cudaErrorInvalidValue);
  PageCopyParams p;
  uint64_t longest = 0;
  for (size_t i = 0; i < n; ++i) {
    p.copies[i] = copies[i];
    if (copies[i].bytes > longest) longest = copies[i].bytes;
  }
  // One block per 64 KiB of the longest copy, at most 64 per copy (a 19 MB coalesced layer
  // still spreads over 64 multiprocessors; a 72 KiB page takes one or two).
  uint64_t per = (longest + (64u << 10) - 1) >> 16;
  unsigned gx = unsigned(per < 1 ? 1 : (per > 64 ? 64 : per));
  page_copy_kernel<<<dim3(gx, unsigned(n)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

}  // namespace tandem::disagg
