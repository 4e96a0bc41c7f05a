// ProcessGroup: the collectives expert parallelism needs (DESIGN.md "Expert parallelism"),
// behind one interface so the same dispatch/combine code runs over in-process CPU ranks
// (in_process_group.h, the tests and CI) and, later, over NCCL between GPUs (nccl_group.h).
//
// Every call is collective: all ranks of the group make the same calls in the same order.
// Buffers live on device() (CPU memory for the in-process group; the rank's GPU for NCCL).
// A group object belongs to one rank and is used by one thread at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace tandem {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;

  virtual void barrier() = 0;

  // Every rank passes n values (the same n on all ranks); returns size() * n values, rank r's
  // at [r * n, (r + 1) * n). Used for the per-expert / per-rank counts that size the buffers
  // of a variable all-to-all.
  virtual std::vector<int64_t> all_gather(const std::vector<int64_t>& values) = 0;

  // Variable-size all-to-all of bytes. `send` holds size() consecutive blocks, block r
  // (send_bytes[r] bytes) for rank r; block r of `recv` (recv_bytes[r] bytes, at the sum of the
  // earlier ones) receives what rank r sent to this rank. Receivers must know the sizes up front
  // (NCCL's send/recv needs them, and the buffers are allocated before the transfer): callers
  // exchange counts first. A size that disagrees with what the peer sends is an error.
  virtual void all_to_all_v(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                            const std::vector<int64_t>& recv_bytes) = 0;
};

// all_to_all_v over tensor rows: send [N, ...] in blocks of send_rows[r] rows for rank r,
// recv [M, ...] in blocks of recv_rows[r] rows from rank r. Both contiguous, the same dtype and
// row shape, on the group's device; N = sum(send_rows), M = sum(recv_rows).
void all_to_all_rows(ProcessGroup& group, const Tensor& send, const std::vector<int64_t>& send_rows,
                     Tensor& recv, const std::vector<int64_t>& recv_rows);

}  // namespace tandem
