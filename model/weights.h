// The weights of a DeepSeek-V3-family model, read from a checkpoint with the official tensor
// names (model.layers.N.self_attn.q_a_proj.weight, ...; DESIGN.md "The model").
// weight_specs() lists every tensor a checkpoint of a config must hold; the loader and
// `tandem make-model` both use it, so what one writes the other reads.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "ops/ops.h"

namespace tandem {

enum class WeightKind {
  kLinear,      // [out, in]; bf16, or f8_e4m3 + "<name>_scale_inv" in fp8 checkpoints
  kNorm,        // RMSNorm weight [n]
  kEmbedding,   // [vocab, hidden] (also lm_head, which is never quantized)
  kRouter,      // MoE gate [experts, hidden], never quantized
  kRouterBias,  // e_score_correction_bias [experts], f32
};

struct WeightSpec {
  std::string name;  // full tensor name, e.g. "model.layers.0.self_attn.o_proj.weight"
  Shape shape;
  WeightKind kind;
};

// Every tensor of a checkpoint for `config`, in the order of the forward pass.
std::vector<WeightSpec> weight_specs(const ModelConfig& config);

struct MlpWeights {
  LinearWeight gate_proj, up_proj, down_proj;  // [I, H], [I, H], [H, I]
};

struct AttentionWeights {
  LinearWeight q_a_proj;            // [q_lora, H]            (q_lora_rank > 0)
  Tensor q_a_layernorm;             // [q_lora]
  LinearWeight q_b_proj;            // [heads*(nope+rope), q_lora]
  LinearWeight q_proj;              // [heads*(nope+rope), H] (q_lora_rank == 0)
  LinearWeight kv_a_proj_with_mqa;  // [kv_lora + rope, H]
  Tensor kv_a_layernorm;            // [kv_lora]
  LinearWeight kv_b_proj;           // [heads*(nope+v), kv_lora]
  LinearWeight o_proj;              // [H, heads*v]
  // kv_b_proj split per head for the absorbed decode (DeepSeek-V2 paper, 2.1.3):
  // The checkpoint's values, exactly (weights.cpp, split_kv_b, says in which dtype).
  HeadWeight w_uk_t;  // [heads, kv_lora, nope]: q_nope -> latent query
  HeadWeight w_uv;    // [heads, v, kv_lora]:    latent output -> v
};

struct MoeWeights {
  LinearWeight gate;                  // router [experts, H]
  Tensor e_score_correction_bias;     // f32 [experts]; undefined for V2
  std::vector<MlpWeights> experts;    // n_routed_experts
  ops::ExpertWeights routed;          // the same experts as one table (all loaded: not under EP)
  MlpWeights shared;                  // n_shared_experts * moe_intermediate_size wide
  bool has_shared = false;
};

struct LayerWeights {
  Tensor input_layernorm, post_attention_layernorm;  // [H]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

struct ModelWeights {
  Tensor embed_tokens;  // [vocab, H]
  std::vector<LayerWeights> layers;
  Tensor norm;          // [H]
  LinearWeight lm_head;  // [vocab, H]
};

// Reads and checks every tensor (names, shapes, dtypes: bf16/f32, or f8_e4m3 with block
// scales when the config is fp8). CPU weights are zero-copy views of the mapped checkpoint.
// Errors name the checkpoint file and the tensor. Tensors beyond num_hidden_layers (the MTP
// layer of V3) are ignored. On another device every tensor is copied there.
// keep_expert(layer, expert), when given, selects the routed experts to load (an expert-parallel
// rank's own, parallel/ep_moe.h); the others stay empty MlpWeights (undefined tensors), so only
// a model whose MoE layers run through expert parallelism can use such weights.
using ExpertFilter = std::function<bool(int64_t layer, int64_t expert)>;
ModelWeights load_weights(const ModelConfig& config, const Checkpoint& checkpoint,
                          Device device = Device::cpu(), const ExpertFilter& keep_expert = {});
// `--load-format dummy`: the weights make-model writes for `seed` (model/random_weights.h),
// made tensor by tensor on `device` (a GPU generates its own; only kv_b_proj is made on the
// host, where the absorbed W_UK/W_UV are split from it, and then copied).
ModelWeights load_dummy_weights(const ModelConfig& config, uint64_t seed,
                                Device device = Device::cpu(), const ExpertFilter& keep_expert = {});

}  // namespace tandem
