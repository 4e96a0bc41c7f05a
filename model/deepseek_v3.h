// The DeepSeek-V3 forward pass (also V2 / V2-Lite), written once against ops/ops.h
// (DESIGN.md "The model"). Reads top to bottom like the paper: embedding, then per layer
// MLA attention and a dense MLP or a MoE with shared experts, then the final norm and lm_head.
// Not thread-safe: one thread runs steps of one model; the weights are read-only.
#pragma once

#include <functional>
#include <string>

#include "model/config.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace tandem {

// YaRN-corrected RoPE inverse frequencies, f32 [rope_dim / 2], computed in fp32 in the same
// order as the reference (arXiv:2309.00071; transformers' _compute_yarn_parameters).
Tensor rope_inv_freq(const ModelConfig& config);

class DeepseekV3Model {
 public:
  DeepseekV3Model(ModelConfig config, ModelWeights weights);

  // Runs one step; writes the new tokens' KV into `cache` and returns f32 logits
  // [batch.logit_rows.size(), vocab].
  Tensor forward(const ForwardBatch& batch, KvCache& cache);

  const ModelConfig& config() const { return config_; }

  // dtype of the activations between ops (normed hidden states, projections, MLP): f32 on the
  // CPU (the reference: matches transformers to 1e-5), bf16 on CUDA (tensor-core GEMMs through
  // cuBLASLt, half the bytes). The residual stream, attention internals (q, latent, scores),
  // router logits and the final logits stay f32 either way. Settable for tests (f32 on CUDA
  // reproduces the CPU; bf16 on the CPU is the GPU path's reference).
  DType activation_dtype() const { return act_dtype_; }
  void set_activation_dtype(DType dtype);

  // Called with a name and a tensor for every named intermediate ("layer3.attn_out", ...) so a
  // dump can be compared with the reference layer by layer (STYLE.md 9). Empty by default.
  std::function<void(const std::string&, const Tensor&)> on_intermediate;

  // Expert parallelism (parallel/ep_moe.h): when set, each MoE layer calls it after routing
  // instead of running its routed experts here. It must add the routed experts' weighted sum,
  // sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t]), into out (f32 [T, H], holding
  // the shared experts' output). Empty by default.
  std::function<void(const MoeWeights& w, const Tensor& x, const Tensor& topk_ids,
                     const Tensor& topk_weights, Tensor& out)>
      routed_experts;

 private:
  Tensor attention(int64_t layer, const Tensor& x, const ForwardBatch& batch, KvCache& cache);
  // SwiGLU over x (activation dtype); the output in out_dtype.
  Tensor mlp(const MlpWeights& w, const Tensor& x, int64_t intermediate, DType out_dtype);
  Tensor moe(const MoeWeights& w, const Tensor& x, const std::string& tag);
  void name(const std::string& label, const Tensor& t) const {
    if (on_intermediate) on_intermediate(label, t);
  }

  ModelConfig config_;
  ModelWeights weights_;
  Tensor inv_freq_;
  float rope_factor_;
  float softmax_scale_;
  RouteParams route_;
  DType act_dtype_;
};

}  // namespace tandem
