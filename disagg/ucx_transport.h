// The ucx transport (builds with UCX found by pkg-config; TANDEM_DISAGG_UCX): one UCP context,
// worker and listener per engine, driven by one progress thread that also advances the
// batches (in submission order per peer, different peers side by side).
// A registered region is ucp_mem_map'ed; its handle carries the mapped address and the packed
// rkey in RegionHandle::ipc_handle (u64 address | rkey bytes). A batch is one ucp_put_nbx per
// write into the peer's memory and one ucp_ep_flush_nbx; the flush completing means every
// write landed. Before the first write to a peer the sender presents the job token in an
// active message on the new endpoint and waits for the peer's verdict (docs/disagg.md "ucx").
// Device memory goes through a pinned host mirror of the region (Debian's UCX has no CUDA
// transports): the sender copies D2H into its mirror and puts from there; the receiver is
// told the device ranges of a batch in a commit message, copies them H2D and acknowledges.
// Thread-safety: as TransferEngine (every method from any thread).
#pragma once

#include <memory>

#include "disagg/transfer_engine.h"

namespace tandem::disagg {

// nullptr with *status set when the engine cannot start (or UCX is not built in).
std::unique_ptr<TransferEngine> make_ucx_transfer_engine(const TransferConfig& config,
                                                         Status* status);

}  // namespace tandem::disagg
