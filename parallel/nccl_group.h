// NcclGroup: ProcessGroup over NCCL (issue 7, GPU part). One communicator per job, ranks =
// GPUs; a node's server drives its local GPUs with one thread per rank, each calling
// make_nccl_group for its own rank with the same unique id (NCCL's own bootstrap: rank 0's
// ncclGetUniqueId, then ncclCommInitRank on every rank). Buffers are device pointers on the
// rank's GPU; calls are enqueued on `stream` (default: ops::cuda::current_stream(device), the
// stream every op of that device uses, so collectives and kernels are ordered without events):
//  - all_to_all_v: ncclGroupStart, one ncclSend + ncclRecv per peer, ncclGroupEnd; async;
//  - all_gather: ncclAllGather into a small device buffer, copied back to the host (the normal
//    dispatcher needs the counts on the host to size its buffers, as DeepEP's normal mode does);
//  - barrier: ncclAllReduce of one int, then a stream synchronize.
// The low_latency dispatcher does not use all_to_all_v on GPUs: its fixed slots are written
// directly into the peers' memory (cuda_low_latency.h).
//
// libnccl.so.2 is loaded at run time (dlopen) on the first call, so binaries that never make a
// group do not need it; a missing library is an error naming it and LD_LIBRARY_PATH.
// NCCL_NVLS_ENABLE=0 is set when unset (NVLink multicast stays off; see docs/parallel.md).
//
// Multi-node (later): the unique id comes from rank 0 of the job over --dist-init-addr (a TCP
// exchange of its 128 bytes); make_nccl_group itself does not change. Only built with CUDA
// where nccl.h is found (TANDEM_WITH_NCCL).
// Thread-safety: a group belongs to one rank and is used by one thread at a time.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "core/error.h"
#include "parallel/process_group.h"

namespace tandem {

using NcclUniqueId = std::array<char, 128>;

struct NcclGroupOptions {
  int rank = 0;
  int size = 1;
  int device_index = 0;
  NcclUniqueId unique_id{};  // from make_nccl_unique_id on one rank, shared with all of them
  void* stream = nullptr;    // cudaStream_t; nullptr: ops::cuda::current_stream(device_index)
};

// ncclGetUniqueId: call once per job (rank 0) and hand the id to every rank.
NcclUniqueId make_nccl_unique_id();

// Collective over the ranks of the id: every rank calls it (from its own thread or process)
// and it returns once all have joined. Errors name the NCCL call and NCCL's message.
std::unique_ptr<ProcessGroup> make_nccl_group(const NcclGroupOptions& options);

// One process driving `size` local GPUs: GPU r is rank r, one thread per rank makes its group
// and runs fn(group) with that GPU current. Returns one status per rank (exceptions do not
// cross threads). A rank that fails aborts its communicator so that peers blocked in NCCL
// return with an error instead of waiting forever.
std::vector<Status> run_nccl_ranks(int size, const std::function<void(ProcessGroup&)>& fn);

}  // namespace tandem
