// The MoE layer on expert-parallel ranks (DESIGN.md "Expert parallelism"): route (in the model,
// the router is replicated) -> dispatch -> this rank's experts -> combine, weighted. Shared
// experts are replicated and stay in the model, on each rank's own tokens.
//
// --ep N with DP attention: N ranks, each with its own DeepseekV3Model over its own requests and
// KV cache (attention, dense layers and the lm_head run data-parallel), all of whose MoE layers
// go through one EpMoe per rank. A rank without requests in a step still serves its experts to
// the others: it calls idle_step(), which joins every MoE layer's dispatch and combine with no
// tokens. All ranks run the same mode in a step (agree_dispatch_mode).
// Not thread-safe: one EpMoe per rank, used by that rank's thread.
#pragma once

#include <memory>

#include "model/deepseek_v3.h"
#include "parallel/dispatcher.h"

namespace tandem {

struct EpOptions {
  // low_latency buffers: the most tokens one rank sends in a decode step.
  int64_t max_dispatch_tokens_per_rank = 64;
  DType activation_dtype = DType::kF32;  // the model's activation_dtype()
};

// keep_expert for load_weights: the routed experts `rank` owns.
ExpertFilter expert_filter(const ExpertPlacement& placement, int rank);

// Collective. low_latency when every rank wants it (decode or idle) and every rank's batch
// fits max_dispatch_tokens_per_rank; otherwise normal, which takes any size.
DispatchMode agree_dispatch_mode(ProcessGroup& group, bool want_low_latency, int64_t tokens,
                                 int64_t max_dispatch_tokens_per_rank);

class EpMoe {
 public:
  // weights: this rank's, loaded with expert_filter(placement, group.rank()); the MoE layers'
  // tensors are shared, not copied. Allocates the low_latency buffers.
  EpMoe(ProcessGroup& group, const ModelConfig& config, const ModelWeights& weights,
        ExpertPlacement placement, const EpOptions& options);

  // Sends `model`'s MoE layers through this EpMoe (model.routed_experts); it must outlive them.
  void attach(DeepseekV3Model& model);

  // The dispatch mode of the next step's MoE layers; must be the same on every rank.
  void set_mode(DispatchMode mode) { mode_ = mode; }
  DispatchMode mode() const { return mode_; }

  // The routed part of one MoE layer (collective). x: [T, H] activations; topk_ids: i32 [T, k];
  // topk_weights: f32 [T, k]; out: f32 [T, H] += the routed experts' weighted sum.
  void routed_experts(const MoeWeights& w, const Tensor& x, const Tensor& topk_ids,
                      const Tensor& topk_weights, Tensor& out);

  // A step of a rank without requests: every MoE layer's dispatch and combine with no tokens.
  void idle_step();

  const ExpertPlacement& placement() const { return placement_; }

 private:
  ProcessGroup& group_;
  const ModelConfig config_;
  const ExpertPlacement placement_;
  const EpOptions options_;
  std::vector<MoeWeights> moe_layers_;  // this rank's MoE layers in order, for idle steps
  std::unique_ptr<Dispatcher> normal_, low_latency_;
  DispatchMode mode_ = DispatchMode::kNormal;
};

}  // namespace tandem
