// The GPU low_latency dispatch/combine kernels (cuda_low_latency.cu) and their parameter
// structs: the boundary between the Dispatcher (cuda_low_latency.cpp) and nvcc-compiled code,
// which includes no fmt/tensor headers.
//
// Every rank allocates one receive region (RankBuffers, the same layout on every rank) once.
// Peers write into it directly through peer pointers: in one process the plain device pointers
// after cudaDeviceEnablePeerAccess; across processes the same pointers would come from
// cudaIpcOpenMemHandle (or NVSHMEM's symmetric heap) — only how `peers` is filled changes.
//
// A step: dispatch_send (this rank's tokens into slot (expert, me) of each owner's buffer, a
// count per (expert, me), then one release flag per destination rank holding the step's
// sequence number), dispatch_recv (acquire-waits on every source's flag, packs the masked
// layout, counts on the device), the experts, combine_send (each output row into slot
// (expert, token) of the token's rank, then flags), combine_recv (waits, weighted sum in
// ascending expert order), step_advance. Sequence numbers live on the device (`step`, read by
// each kernel), so flags never need a reset and a captured CUDA graph replays correctly; no
// kernel synchronizes with the host. Spin waits give up after a timeout and report it in
// `error` (mapped host memory the host reads at the next dispatch) instead of hanging.
//
// Buffer reuse needs no double buffering: a rank writes a peer's dispatch slots of step n+1
// only after its own combine_recv of step n saw that peer's combine flag, which the peer sets
// after it has finished reading those slots (and the same backwards for the combine slots).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tandem::parallel_cuda {

constexpr int kMaxRanks = 8;  // one node's GPUs

// What a kernel reports through the error word.
enum LlError : int32_t { kLlOk = 0, kLlTimeout = 1, kLlBadExpert = 2 };
struct LlErrorWord {
  int32_t code;
  int32_t rank;    // the source rank whose flag did not come (timeout)
  int64_t value;   // the bad expert id
  int64_t where;   // token index
};

// One rank's receive region. R ranks, L local experts per rank, M = max tokens per rank.
struct RankBuffers {
  char* recv_x;              // [L, R, M, row_bytes]: slot (local expert, source rank, i)
  int32_t* recv_src;         // [L, R, M]: the source token of each slot
  int32_t* recv_count;       // [L, R]: rows in each slot block
  uint64_t* dispatch_flag;   // [R]: the last step each source rank finished sending
  float* recv_y;             // [R * L, M, H]: slot (owner rank * L + local expert, token)
  uint64_t* combine_flag;    // [R]: the last step each expert rank finished returning
};

// Byte offsets of RankBuffers' arrays in one allocation (the same on every rank).
struct RankLayout {
  size_t recv_x, recv_src, recv_count, dispatch_flag, recv_y, combine_flag, total;
};
RankLayout rank_layout(int ranks, int64_t locals, int64_t max_tokens, int64_t hidden,
                       int64_t row_bytes);
RankBuffers rank_buffers(void* base, const RankLayout& layout);

// This rank's local state (device memory): the step counter and the send kernels' counters.
struct LocalState {
  uint64_t step;           // steps completed; a step's sequence number is step + 1
  uint64_t dispatch_done;  // dispatch_send blocks finished, over all steps
  uint64_t combine_done;   // combine_send blocks finished, over all steps
};

struct LlParams {
  int ranks, me;
  int64_t num_experts, locals, max_tokens, hidden, row_bytes;  // row_bytes: one x row
  RankBuffers peers[kMaxRanks];  // peers[r]: rank r's region, addressable from this GPU
  const int32_t* expert_rank;    // [E]: owner rank of each global expert
  const int32_t* expert_local;   // [E]: its index on the owner
  LocalState* state;
  LlErrorWord* error;            // mapped host memory
  int64_t timeout_ns;

  // dispatch
  const void* x;                 // [T, H] activation rows (row_bytes each), contiguous
  const int32_t* topk_ids;       // [T, k]
  const float* topk_weights;     // [T, k]
  int64_t tokens, top_k;
  void* out_x;                   // [L, R * M, row_bytes]: the masked layout
  int32_t* out_counts;           // [L]
  int32_t* packed_src;           // [L, R * M]: source rank * M + source token of each row

  // combine
  const float* expert_out;       // [L, R * M, H] f32, the layout of out_x
  float* out;                    // [T, H] f32, += the routed sum
};

void launch_ll_dispatch(const LlParams& p, cudaStream_t stream);
void launch_ll_combine(const LlParams& p, cudaStream_t stream);

}  // namespace tandem::parallel_cuda
