// NcclGroup: ProcessGroup over NCCL, one process (or thread) per GPU — the GPU part of
// issue 7, declared here so the interface is shaped for it; not built yet (no definition links).
// Plan: buffers are device pointers on the rank's GPU and calls are enqueued on `stream`;
//  - all_to_all_v: ncclGroupStart, one ncclSend + ncclRecv per peer, ncclGroupEnd;
//  - all_gather: ncclAllGather into a small device buffer, copied back to the host (the normal
//    dispatcher needs the counts on the host to size its buffers, as DeepEP's normal mode does);
//  - barrier: ncclAllReduce of one int, then a stream synchronize.
// The low_latency dispatcher will not go through all_to_all_v on GPUs: its fixed slots live in
// symmetric memory (NVSHMEM or CUDA IPC) that one kernel writes directly, so a decode step is
// one launch each way and can be captured in a CUDA graph.
#pragma once

#include <array>
#include <memory>

#include "parallel/process_group.h"

namespace tandem {

struct NcclGroupOptions {
  int rank = 0;
  int size = 1;
  int device_index = 0;
  std::array<char, 128> unique_id{};  // ncclUniqueId from rank 0, shared out of band
  void* stream = nullptr;             // cudaStream_t the collectives are enqueued on
};

// Declared only (issue 7, GPU part).
std::unique_ptr<ProcessGroup> make_nccl_group(const NcclGroupOptions& options);

}  // namespace tandem
