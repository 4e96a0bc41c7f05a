// The KV transfer engine (DESIGN.md "Request flow (PD)", step 3): register memory regions,
// hand their handles to a peer, then submit batches of one-sided writes from local regions
// into the peer's regions, and poll, wait (with a timeout) or cancel them. Transports sit
// behind this one interface and are chosen by name (--transfer-backend):
//   tcp       sockets, host memory (device memory staged through pinned buffers with CUDA)
//   cuda_ipc  same-host GPU to GPU via CUDA IPC handles and cudaMemcpyAsync (CUDA builds)
//   ucx       UCX one-sided puts (builds with libucx-dev; device memory staged through host)
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "disagg/messages.h"

namespace tandem::disagg {

struct TransferConfig {
  std::string backend = "tcp";          // --transfer-backend
  std::string token;                    // --pd-token / $TANDEM_PD_TOKEN; peers must match it
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;             // 0: any free port
  std::string advertise_host;           // host peers connect to; empty: listen_host
  int connect_timeout_ms = 5000;        // connect + token handshake
  int transfer_timeout_ms = 30000;      // a batch not acknowledged by then fails
  size_t staging_bytes = 4u << 20;      // tcp: pinned staging buffer for device memory
  int device_index = 0;                 // cuda_ipc: the GPU whose stream issues the copies

  Status validate() const;
};

// One write of a batch: bytes [src_offset, +length) of a local region into bytes
// [dst_offset, +length) of the batch's dst_regions[dst_index].
struct TransferWrite {
  uint64_t src_region = 0;        // a local region id (RegionHandle::region_id)
  uint64_t src_offset_bytes = 0;
  uint32_t dst_index = 0;         // into the dst_regions passed to submit
  uint64_t dst_offset_bytes = 0;
  uint64_t length_bytes = 0;
};

using BatchId = uint64_t;

class TransferEngine {
 public:
  virtual ~TransferEngine() = default;
  virtual std::string backend() const = 0;

  // Registers [ptr, ptr + length) as a source or destination of transfers; `out` is the
  // handle to send a peer. The memory must stay valid until unregister_region returns.
  virtual Status register_region(void* ptr, size_t length_bytes, MemoryKind kind,
                                 int device_index, RegionHandle* out) = 0;
  // Waits for transfers reading or writing the region to leave it, then forgets it.
  virtual Status unregister_region(uint64_t region_id) = 0;

  // Starts a batch; all dst_regions must belong to one peer. Bounds are checked here (and
  // again by the receiver, which trusts nothing).
  virtual Status submit(std::span<const RegionHandle> dst_regions,
                        std::span<const TransferWrite> writes, BatchId* out) = 0;
  // *done = true once every write has landed at the peer; a failed batch returns its error.
  // A finished (done or failed) batch is forgotten after poll/wait reports it.
  virtual Status poll(BatchId batch, bool* done) = 0;
  // As poll, blocking up to `timeout`; kDeadlineExceeded if still running (it keeps running).
  virtual Status wait(BatchId batch, std::chrono::milliseconds timeout) = 0;
  // Stops the batch (writes already sent may have landed) and forgets it.
  virtual void cancel(BatchId batch) = 0;
};

// Bytes [offset, offset + length) lie inside a region of region_length bytes (no overflow).
inline bool range_in_region(uint64_t offset, uint64_t length, uint64_t region_length) {
  return offset <= region_length && length <= region_length - offset;
}
// What every engine's submit checks about its writes: each source region is known
// (`src_length(id, &bytes)` returns false for an unknown id), each dst_index names one of `dst`,
// and both byte ranges lie inside their regions. The error names the first bad write's fault.
Status check_writes(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                    const std::function<bool(uint64_t, uint64_t*)>& src_length);
// The same over an engine's region table (id -> a region with a `length` in bytes).
template <class RegionMap>
Status check_writes(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                    const RegionMap& regions) {
  const std::function<bool(uint64_t, uint64_t*)> src_length = [&](uint64_t id, uint64_t* length) {
    const auto it = regions.find(id);
    if (it == regions.end()) return false;
    *length = it->second.length;
    return true;
  };
  return check_writes(dst, writes, src_length);
}
// The destinations of an engine that sends to one peer per batch (tcp, ucx): at least one,
// every one a `backend` region, all at the same endpoint.
Status check_peer_destinations(const std::string& backend, std::span<const RegionHandle> dst);

// "host:port" ("[v6]:port") a peer connects to: config.advertise_host, else listen_host, and
// 127.0.0.1 for an empty or wildcard host.
std::string advertised_endpoint(const TransferConfig& config, uint16_t port);

// Makes the engine named by config.backend; kInvalidArgument for an unknown or unbuilt one.
Status make_transfer_engine(const TransferConfig& config, std::unique_ptr<TransferEngine>* out);
// Backends built into this binary.
std::vector<std::string> transfer_backends();

}  // namespace tandem::disagg
