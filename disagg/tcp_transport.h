// The tcp transport: one listener per engine; a connection per peer endpoint that presents
// the job token, then carries batches as framed segments
//   segment header (magic, kind, batch, region, offset, length) | payload
// and a batch-end frame that the receiver acknowledges. The receiver checks every segment
// against its registered regions before writing a byte, so a peer can never make it write
// outside one; a violation fails the batch and closes the connection.
#pragma once

#include <memory>

#include "disagg/transfer_engine.h"

namespace tandem::disagg {

std::unique_ptr<TransferEngine> make_tcp_transfer_engine(const TransferConfig& config,
                                                         Status* status);

}  // namespace tandem::disagg
