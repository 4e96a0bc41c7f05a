#include "parallel/ep_moe.h"

#include <algorithm>

#include "ops/ops.h"

namespace tandem {

namespace {

// SwiGLU expert: out (f32 [n, H]) = down(silu(gate(x)) * up(x)), activations in x's dtype; the
// same steps as the model's own MLP, so a row's result does not depend on where it runs.
void expert_mlp(const MlpWeights& w, const Tensor& x, int64_t intermediate, Tensor& out) {
  const int64_t n = x.size(0);
  Tensor gate_up = Tensor::empty({n, 2 * intermediate}, x.dtype(), x.device());
  Tensor gate = gate_up.slice(1, 0, intermediate);
  Tensor up = gate_up.slice(1, intermediate, 2 * intermediate);
  ops::linear(x, w.gate_proj, gate);
  ops::linear(x, w.up_proj, up);
  Tensor h = Tensor::empty({n, intermediate}, x.dtype(), x.device());
  ops::silu_and_mul(gate_up, h);
  ops::linear(h, w.down_proj, out);
}

}  // namespace

ExpertFilter expert_filter(const ExpertPlacement& placement, int rank) {
  return [placement, rank](int64_t /*layer*/, int64_t expert) {
    return placement.is_local(rank, expert);
  };
}

DispatchMode agree_dispatch_mode(ProcessGroup& group, bool want_low_latency, int64_t tokens,
                                 int64_t max_dispatch_tokens_per_rank) {
  const std::vector<int64_t> all = group.all_gather({want_low_latency ? 1 : 0, tokens});
  for (int r = 0; r < group.size(); ++r) {
    if (all[2 * r] == 0 || all[2 * r + 1] > max_dispatch_tokens_per_rank) return DispatchMode::kNormal;
  }
  return DispatchMode::kLowLatency;
}

EpMoe::EpMoe(ProcessGroup& group, const ModelConfig& config, const ModelWeights& weights,
             ExpertPlacement placement, const EpOptions& options)
    : group_(group), config_(config), placement_(std::move(placement)), options_(options) {
  TANDEM_CHECK(placement_.num_experts() == config.n_routed_experts,
               "EpMoe: placement of {} experts for a model with {}", placement_.num_experts(),
               config.n_routed_experts);
  for (const LayerWeights& layer : weights.layers) {
    if (!layer.is_moe) continue;
    for (int64_t e = 0; e < placement_.num_local_experts(group.rank()); ++e) {
      const int64_t g = placement_.global_expert(group.rank(), e);
      TANDEM_CHECK(g < int64_t(layer.moe.experts.size()) &&
                       layer.moe.experts[g].gate_proj.weight.defined(),
                   "EpMoe: rank {} owns expert {} but its weights are not loaded", group.rank(), g);
    }
    moe_layers_.push_back(layer.moe);
  }
  DispatchOptions d;
  d.hidden = config.hidden_size;
  d.top_k = config.num_experts_per_tok;
  d.max_dispatch_tokens_per_rank = options.max_dispatch_tokens_per_rank;
  d.dtype = options.activation_dtype;
  normal_ = make_dispatcher(DispatchMode::kNormal, group, placement_, d);
  low_latency_ = make_dispatcher(DispatchMode::kLowLatency, group, placement_, d);
}

void EpMoe::attach(DeepseekV3Model& model) {
  TANDEM_CHECK(model.activation_dtype() == options_.activation_dtype,
               "EpMoe: the model's activations are {}, the EP buffers {}",
               dtype_name(model.activation_dtype()), dtype_name(options_.activation_dtype));
  model.routed_experts = [this](const MoeWeights& w, const Tensor& x, const Tensor& ids,
                                const Tensor& weights, Tensor& out) {
    routed_experts(w, x, ids, weights, out);
  };
}

void EpMoe::routed_experts(const MoeWeights& w, const Tensor& x, const Tensor& topk_ids,
                           const Tensor& topk_weights, Tensor& out) {
  Dispatcher& d = mode_ == DispatchMode::kNormal ? *normal_ : *low_latency_;
  const ExpertInput& in = d.dispatch(x, topk_ids, topk_weights);
  Tensor expert_out = Tensor::empty(in.x.shape(), DType::kF32, in.x.device());
  // The GPU low_latency counts are on the device; this per-expert loop reads them on the host
  // (one synchronization; a masked grouped GEMM over [L, ranks * M, H] would not need it).
  std::vector<int64_t> counts = in.counts;
  if (in.counts_device.defined()) {
    const Tensor c = in.counts_device.to(Device::cpu());
    for (int64_t e = 0; e < in.num_local_experts(); ++e) counts[e] = c.data<int32_t>()[e];
  }
  for (int64_t e = 0; e < in.num_local_experts(); ++e) {
    if (counts[e] == 0) continue;
    const MlpWeights& expert = w.experts[placement_.global_expert(group_.rank(), e)];
    const bool masked = in.mode == DispatchMode::kLowLatency;
    Tensor rows = masked ? expert_out.select(0, e).slice(0, 0, counts[e]) : in.expert_rows(expert_out, e);
    const Tensor x_rows = masked ? in.x.select(0, e).slice(0, 0, counts[e]) : in.expert_rows(in.x, e);
    expert_mlp(expert, x_rows, config_.moe_intermediate_size, rows);
  }
  d.combine(expert_out, out);
}

void EpMoe::idle_step() {
  const Device dev = group_.device();
  const Tensor x = Tensor::empty({0, config_.hidden_size}, options_.activation_dtype, dev);
  const Tensor ids = Tensor::empty({0, config_.num_experts_per_tok}, DType::kI32, dev);
  const Tensor weights = Tensor::empty({0, config_.num_experts_per_tok}, DType::kF32, dev);
  for (const MoeWeights& w : moe_layers_) {
    Tensor out = Tensor::zeros({0, config_.hidden_size}, DType::kF32, dev);
    routed_experts(w, x, ids, weights, out);
  }
}

}  // namespace tandem
