// MoE dispatch/combine across EP ranks (DESIGN.md "Expert parallelism"): dispatch sends each
// token's hidden state to the ranks that own its top-k experts and lays the received rows out
// per local expert for the grouped GEMM; combine sends the experts' outputs back and sums them
// per token with the routing weights. Two implementations behind this one interface:
//
//  normal (prefill, throughput): per-expert counts are exchanged first, then each token goes
//    once per destination rank (not once per expert) with its (local expert ids, weights) for
//    that rank. Received rows are laid out contiguously, grouped by local expert:
//    x [sum(counts), H], expert e at rows [offsets[e], offsets[e + 1]). Variable sizes.
//    Combine: the expert rank sums its local experts' weighted outputs per received token,
//    then one row per (token, rank) goes back and the source adds them up.
//  low_latency (decode, latency): fixed receive slots per (local expert, source rank) of
//    max_dispatch_tokens_per_rank rows, so no count exchange and static shapes (CUDA-graph
//    capturable on the GPU). A token goes once per expert. Output is the masked layout
//    x [L, ranks * max_tokens, H]: expert e's rows are x[e, 0:counts[e]) (source rank order),
//    the rest of each row block is unspecified. Combine returns each (token, expert) output to
//    the token's rank, which adds them with its routing weights in ascending expert order (the
//    order of the single-rank model, so a decode step's sum is the same to the bit).
//
// Both order an expert's rows by (source rank, token index), so layouts are deterministic.
// Dispatch and combine are collectives: every rank calls them, in the same order, including
// ranks with no tokens (T = 0). One dispatch, then its combine; the dispatcher keeps the state
// in between (two in flight, as two-batch overlap will need, is not supported yet).
// Not thread-safe; one per rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "parallel/expert_placement.h"
#include "parallel/process_group.h"

namespace tandem {

enum class DispatchMode { kNormal, kLowLatency };
std::string_view dispatch_mode_name(DispatchMode mode);  // "normal", "low_latency"

// What this rank's experts receive.
struct ExpertInput {
  DispatchMode mode = DispatchMode::kNormal;
  Tensor x;                      // normal: [sum(counts), H]; low_latency: [L, ranks * max, H]
  std::vector<int64_t> counts;   // [L]: valid rows of each local expert; -1: on the device only
  std::vector<int64_t> offsets;  // normal: [L + 1] row offsets into x; low_latency: empty
  // low_latency on a GPU: i32 [L] counts on the device, written by the dispatch kernel (the
  // host `counts` hold -1, since reading them would need a synchronization); else undefined.
  Tensor counts_device;

  int64_t num_local_experts() const { return int64_t(counts.size()); }
  // The valid rows of local expert e in `t`, which has x's layout (x itself or the experts'
  // output): [counts[e], H], a view.
  Tensor expert_rows(const Tensor& t, int64_t e) const;
};

struct DispatchOptions {
  int64_t hidden = 0;
  int64_t top_k = 0;
  // low_latency: the most tokens any rank dispatches in one call, and the activation dtype
  // its fixed buffers are allocated for.
  int64_t max_dispatch_tokens_per_rank = 0;
  DType dtype = DType::kF32;
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual DispatchMode mode() const = 0;

  // x: [T, H] f32 | bf16 (T may be 0); topk_ids: i32 [T, k] global expert ids;
  // topk_weights: f32 [T, k]. The result stays valid until the next dispatch.
  virtual const ExpertInput& dispatch(const Tensor& x, const Tensor& topk_ids,
                                      const Tensor& topk_weights) = 0;

  // expert_out: f32 in the layout of the last dispatch's x, the experts' outputs on the valid
  // rows. Adds the routed sum into out, f32 [T, H] (e.g. holding the shared experts' output):
  // out[t] += sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]).
  virtual void combine(const Tensor& expert_out, Tensor& out) = 0;
};

// On a group whose device is a GPU (NCCL), normal runs over the group's all_to_all_v with
// device tensors, low_latency is cuda_low_latency.cpp (peer writes, no host sync).
// Allocates the low_latency buffers at construction: an impossible size (max tokens < 1,
// experts not evenly placed) is an error there, and a batch of more than
// max_dispatch_tokens_per_rank tokens is an error at dispatch, never a silent truncation.
std::unique_ptr<Dispatcher> make_dispatcher(DispatchMode mode, ProcessGroup& group,
                                            const ExpertPlacement& placement,
                                            const DispatchOptions& options);

}  // namespace tandem
