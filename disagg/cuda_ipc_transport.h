// The cuda_ipc transport: same-host GPU to GPU. A registered device region's handle carries
// its cudaIpcMemHandle_t and its offset in the allocation; the writer opens the handle once
// (cached) and issues cudaMemcpyAsync per write on its own stream, one event per batch.
// Handles travel over the token-checked bootstrap connection; there is no listener.
// CUDA IPC cannot open a handle made in the same process, so this runs between processes.
#pragma once

#include <memory>

#include "disagg/transfer_engine.h"

namespace tandem::disagg {

// nullptr with *status set when CUDA is not built in.
std::unique_ptr<TransferEngine> make_cuda_ipc_transfer_engine(const TransferConfig& config,
                                                              Status* status);

}  // namespace tandem::disagg
