#include "model/deepseek_v3.h"

#include <cmath>
#include <map>

#include "ops/ops.h"

namespace tandem {

namespace {

Tensor empty_f32(const Shape& shape, Device device) {
  return Tensor::empty(shape, DType::kF32, device);
}

// `t` in dtype `dtype`: itself when it already is, else a converted copy (ops::convert).
Tensor as_dtype(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  Tensor out = Tensor::empty(t.shape(), dtype, t.device());
  ops::convert(t, out);
  return out;
}

}  // namespace

Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim, half = dim / 2;
  const float base = float(c.rope_theta);
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = 1.0f / std::pow(base, float(2 * i) / float(dim));
  const YarnScaling& y = c.rope_scaling;
  if (y.enabled) {
    // Dimensions rotating fewer than beta_slow times over the original context are
    // interpolated (divided by factor), those rotating more than beta_fast times keep their
    // frequency, with a linear ramp between.
    auto correction_dim = [&](double rotations) {
      return (double(dim) * std::log(double(y.original_max_position_embeddings) /
                                     (rotations * 2.0 * M_PI))) /
             (2.0 * std::log(c.rope_theta));
    };
    const double low = std::max(0.0, std::floor(correction_dim(y.beta_fast)));
    double high = std::min(double(dim - 1), std::ceil(correction_dim(y.beta_slow)));
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const float ramp = std::clamp((float(i) - float(low)) / float(high - low), 0.0f, 1.0f);
      const float extrapolation = 1.0f - ramp;
      const float interpolated = inv_freq[i] / float(y.factor);
      inv_freq[i] = interpolated * (1.0f - extrapolation) + inv_freq[i] * extrapolation;
    }
  }
  return Tensor::from_vector(inv_freq, {half});
}

DeepseekV3Model::DeepseekV3Model(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  // On the weights' device, like every other tensor the ops read.
  inv_freq_ = rope_inv_freq(config_).to(weights_.embed_tokens.device());
  rope_factor_ = float(config_.rope_attention_factor());
  softmax_scale_ = float(config_.softmax_scale());
  route_.top_k = config_.num_experts_per_tok;
  route_.n_group = config_.n_group;
  route_.topk_group = config_.topk_group;
  route_.sigmoid = config_.scoring_func == ScoringFunc::kSigmoid;
  route_.grouped = config_.topk_method != TopkMethod::kGreedy;
  route_.group_by_top2 = config_.topk_method == TopkMethod::kNoauxTc;
  route_.norm_topk_prob = config_.norm_topk_prob;
  route_.routed_scaling_factor = config_.routed_scaling_factor;
  act_dtype_ = weights_.embed_tokens.device().is_cpu() ? DType::kF32 : DType::kBF16;
}

void DeepseekV3Model::set_activation_dtype(DType dtype) {
  TANDEM_CHECK(dtype == DType::kF32 || dtype == DType::kBF16,
               "activation dtype must be f32 or bf16, got {}", dtype_name(dtype));
  act_dtype_ = dtype;
}

Tensor DeepseekV3Model::forward(const ForwardBatch& batch, KvCache& cache) {
  const ModelConfig& c = config_;
  const Device dev = batch.input_ids.device();
  const int64_t tokens = batch.num_tokens, hidden = c.hidden_size;
  TANDEM_CHECK(int64_t(cache.layers.size()) == c.num_hidden_layers,
               "KV cache has {} layers, the model {}", cache.layers.size(), c.num_hidden_layers);
  TANDEM_CHECK(cache.page_size == batch.page_size, "KV cache page size {} != batch page size {}",
               cache.page_size, batch.page_size);

  const DType act = act_dtype_;
  Tensor residual = empty_f32({tokens, hidden}, dev);  // [T, H], f32 throughout
  ops::embedding(batch.input_ids, weights_.embed_tokens, residual);
  name("embed", residual);

  Tensor x = Tensor::empty({tokens, hidden}, act, dev);  // normed input of each sub-block
  Tensor delta;  // output of the previous sub-block (act, or f32 after a MoE)
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    const std::string tag = "layer" + std::to_string(l);
    if (l == 0) {
      ops::rms_norm(residual, lw.input_layernorm, c.rms_norm_eps, x);
    } else {
      ops::add_rms_norm(residual, delta, lw.input_layernorm, c.rms_norm_eps, x);
    }
    Tensor attn_out = attention(l, x, batch, cache);  // [T, H]
    name(tag + ".attn_out", attn_out);
    ops::add_rms_norm(residual, attn_out, lw.post_attention_layernorm, c.rms_norm_eps, x);
    delta = lw.is_moe ? moe(lw.moe, x, tag) : mlp(lw.mlp, x, c.intermediate_size, act);  // [T, H]
    name(tag + (lw.is_moe ? ".moe_out" : ".mlp_out"), delta);
    if (on_intermediate) {  // the layer's output hidden state, residual + delta (a copy)
      Tensor hidden = residual.clone(), scratch = x.clone();
      ops::add_rms_norm(hidden, delta, weights_.norm, c.rms_norm_eps, scratch);
      name(tag + ".hidden", hidden);
    }
  }
  ops::add_rms_norm(residual, delta, weights_.norm, c.rms_norm_eps, x);
  name("final_norm", x);

  // Logits only for the rows asked for (usually each sequence's last token).
  const int64_t rows = batch.logit_rows.size(0);
  Tensor selected = Tensor::empty({rows, hidden}, act, dev);
  ops::gather_rows(x, batch.logit_rows, selected);
  Tensor logits = empty_f32({rows, c.vocab_size}, dev);
  ops::linear(selected, weights_.lm_head, logits);
  name("logits", logits);
  return logits;
}

// Multi-head latent attention (DeepSeek-V2 paper, section 2.1).
Tensor DeepseekV3Model::attention(int64_t layer, const Tensor& x, const ForwardBatch& batch,
                                  KvCache& cache) {
  const ModelConfig& c = config_;
  const AttentionWeights& w = weights_.layers[layer].attn;
  const Device dev = x.device();
  const int64_t tokens = x.size(0), heads = c.num_attention_heads;
  const int64_t nope = c.qk_nope_head_dim, rope_dim = c.qk_rope_head_dim;
  const int64_t lora = c.kv_lora_rank, v_dim = c.v_head_dim;
  const DType act = act_dtype_;

  // Queries: [T, heads, nope + rope], through the low-rank path when q_lora_rank > 0. f32 for
  // RoPE and the absorbed W_UK; prefill converts it once to the activation dtype.
  Tensor q = empty_f32({tokens, heads * c.qk_head_dim()}, dev);
  if (c.q_lora_rank > 0) {
    Tensor q_a = Tensor::empty({tokens, c.q_lora_rank}, act, dev);
    ops::linear(x, w.q_a_proj, q_a);
    ops::rms_norm(q_a, w.q_a_layernorm, c.rms_norm_eps, q_a);
    ops::linear(q_a, w.q_b_proj, q);
  } else {
    ops::linear(x, w.q_proj, q);
  }
  q = q.view({tokens, heads, c.qk_head_dim()});
  Tensor q_pe = q.slice(2, nope, nope + rope_dim);  // [T, heads, rope], strided view
  ops::rope(q_pe, batch.positions, inv_freq_, rope_factor_, c.rope_interleave);

  // Keys/values: the normed latent c_kv [T, lora] and the shared RoPE key k_pe [T, rope].
  Tensor kv_a = empty_f32({tokens, c.kv_cache_dim()}, dev);
  ops::linear(x, w.kv_a_proj_with_mqa, kv_a);
  Tensor latent = empty_f32({tokens, lora}, dev);
  ops::rms_norm(kv_a.slice(1, 0, lora), w.kv_a_layernorm, c.rms_norm_eps, latent);
  Tensor k_pe = kv_a.slice(1, lora, lora + rope_dim);  // [T, rope], strided view
  Tensor k_pe_heads = k_pe.unsqueeze(1);                 // [T, 1, rope] for the rope op
  ops::rope(k_pe_heads, batch.positions, inv_freq_, rope_factor_, c.rope_interleave);
  ops::kv_store(latent, k_pe, batch.out_slots, cache.layers[layer]);

  Tensor attn;  // [T, heads, v]
  if (batch.mode == ForwardMode::kExtend) {
    // Expand every cached position of each sequence to per-head keys and values, in the
    // activation dtype: with bf16 activations q, k, v and the output are bf16 (the tensor-core
    // prefill kernel; f32 softmax statistics inside), with f32 activations all stay f32 (the CPU
    // reference and the exact golden tests).
    const int64_t kv_len = batch.kv_slots.size(0), qk = c.qk_head_dim();
    Tensor cached = Tensor::empty({kv_len, c.kv_cache_dim()}, act, dev);  // [L, lora + rope]
    ops::gather_rows(cache.layers[layer], batch.kv_slots, cached);
    Tensor kv = Tensor::empty({kv_len, heads * (nope + v_dim)}, act, dev);
    ops::linear(cached.slice(1, 0, lora), w.kv_b_proj, kv);
    const Tensor q_act = as_dtype(q.view({tokens, heads * qk}), act).view({tokens, heads, qk});
    attn = Tensor::empty({tokens, heads, v_dim}, act, dev);
    ops::mla_prefill_attention(q_act, kv.view({kv_len, heads, nope + v_dim}),
                               cached.slice(1, lora, lora + rope_dim), batch.cu_q, batch.cu_kv,
                               softmax_scale_, attn);
  } else {
    // Absorbed: attend in latent space, then map the result to v per head. With bf16
    // activations the inputs of the two per-head matmuls are bf16 (as the reference's einsums
    // in bf16), which lets the GPU run them on tensor cores; f32 activations keep f32.
    attn = empty_f32({tokens, heads, v_dim}, dev);
    Tensor q_latent = empty_f32({tokens, heads, lora}, dev);
    const Tensor q_nope =
        act == DType::kF32 ? q.slice(2, 0, nope)
                           : as_dtype(q.view({tokens * heads, c.qk_head_dim()}).slice(1, 0, nope), act)
                                 .view({tokens, heads, nope});
    ops::head_matmul(q_nope, w.w_uk_t, q_latent);
    Tensor out_latent = empty_f32({tokens, heads, lora}, dev);
    ops::mla_decode_attention(q_latent, q_pe, cache.layers[layer], batch.page_table,
                              batch.seq_lens, batch.page_size, softmax_scale_, out_latent);
    ops::head_matmul(as_dtype(out_latent.view({tokens * heads, lora}), act).view({tokens, heads, lora}),
                     w.w_uv, attn);
  }
  Tensor out = Tensor::empty({tokens, c.hidden_size}, act, dev);
  ops::linear(as_dtype(attn.view({tokens, heads * v_dim}), act), w.o_proj, out);
  return out;
}

// SwiGLU MLP: down(silu(gate(x)) * up(x)).
Tensor DeepseekV3Model::mlp(const MlpWeights& w, const Tensor& x, int64_t intermediate,
                            DType out_dtype) {
  const Device dev = x.device();
  const int64_t tokens = x.size(0);
  const DType act = act_dtype_;
  Tensor gate_up = Tensor::empty({tokens, 2 * intermediate}, act, dev);
  Tensor gate = gate_up.slice(1, 0, intermediate), up = gate_up.slice(1, intermediate, 2 * intermediate);
  ops::linear(x, w.gate_proj, gate);
  ops::linear(x, w.up_proj, up);
  Tensor h = Tensor::empty({tokens, intermediate}, act, dev);
  ops::silu_and_mul(gate_up, h);
  Tensor out = Tensor::empty({tokens, config_.hidden_size}, out_dtype, dev);
  ops::linear(h, w.down_proj, out);
  return out;
}

// DeepSeekMoE: routed experts (top-k of n_routed_experts, weighted) plus shared experts.
Tensor DeepseekV3Model::moe(const MoeWeights& w, const Tensor& x, const std::string& tag) {
  const ModelConfig& c = config_;
  const Device dev = x.device();
  const int64_t tokens = x.size(0), k = c.num_experts_per_tok;
  Tensor logits = empty_f32({tokens, c.n_routed_experts}, dev);
  ops::linear(x, w.gate, logits);
  Tensor ids = Tensor::empty({tokens, k}, DType::kI32, dev);
  Tensor weights = empty_f32({tokens, k}, dev);
  ops::moe_route(logits, w.e_score_correction_bias, route_, ids, weights);
  name(tag + ".topk_ids", ids);
  name(tag + ".topk_weights", weights);

  // The routed experts' weighted sum accumulates in f32.
  Tensor out = w.has_shared ? mlp(w.shared, x, c.shared_intermediate_size(), DType::kF32)
                            : Tensor::zeros({tokens, c.hidden_size}, DType::kF32, dev);
  if (routed_experts) {  // expert parallelism: dispatch, local experts, combine
    routed_experts(w, x, ids, weights, out);
    return out;
  }
  ops::moe_experts(x, ids, weights, w.routed, out);
  return out;
}

}  // namespace tandem
