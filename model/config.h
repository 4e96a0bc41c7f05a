// ModelConfig: the architecture facts of a DeepSeek-V3-family checkpoint, parsed once from its
// config.json and immutable afterwards (STYLE.md 5). Derived values are functions.
// Supported: DeepseekV3ForCausalLM (V3, R1) and DeepseekV2ForCausalLM (V2, V2-Lite).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace tandem {

enum class Architecture { kDeepseekV3, kDeepseekV2 };
enum class ScoringFunc { kSigmoid, kSoftmax };
// noaux_tc: V3's group-limited top-k on sigmoid scores + correction bias (sum of top-2 per
// group ranks groups); greedy: plain top-k; group_limited_greedy: V2's (max per group).
enum class TopkMethod { kNoauxTc, kGreedy, kGroupLimitedGreedy };

struct YarnScaling {
  bool enabled = false;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;          // 0 when absent
  double mscale_all_dim = 0.0;  // 0 when absent
  double attention_factor = 0.0;  // 0 = derived from mscale / mscale_all_dim
};

struct Fp8Quantization {
  bool enabled = false;
  int block_n = 128;  // weight_block_size[0]: output rows per scale block
  int block_k = 128;  // weight_block_size[1]: input columns per scale block
};

struct ModelConfig {
  Architecture architecture = Architecture::kDeepseekV3;
  std::string architecture_name;  // as written in config.json

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP layers
  int64_t moe_intermediate_size = 0;  // each routed / shared expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;

  // MLA
  int64_t q_lora_rank = 0;  // 0: no low-rank q path (V2-Lite uses q_proj)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // MoE
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_shared_experts = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t first_k_dense_replace = 0;
  TopkMethod topk_method = TopkMethod::kNoauxTc;
  ScoringFunc scoring_func = ScoringFunc::kSigmoid;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;

  // Positions and norms
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 0;
  YarnScaling rope_scaling;
  bool rope_interleave = true;  // rotary pairs are (x0, x1), (x2, x3), ... as DeepSeek ships

  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  Fp8Quantization quantization;
  std::string torch_dtype = "bfloat16";
  int64_t num_nextn_predict_layers = 0;  // MTP layers in the checkpoint, unused here

  // Parses and validates; throws tandem::Error naming the file and the field at fault.
  static ModelConfig from_json_file(const std::filesystem::path& path);
  static ModelConfig from_json_string(const std::string& text, const std::string& source);

  // Derived values.
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t kv_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // 576 for V3
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace;
  }
  int64_t experts_per_group() const { return n_routed_experts / n_group; }
  int64_t shared_intermediate_size() const { return moe_intermediate_size * n_shared_experts; }
  // Softmax scale of attention: qk_head_dim^-1/2, times mscale(factor, mscale_all_dim)^2
  // under YaRN (DeepSeek-V2 paper, appendix; the official modeling code).
  double softmax_scale() const;
  // YaRN's attention factor applied to cos/sin: mscale(f, mscale) / mscale(f, mscale_all_dim).
  double rope_attention_factor() const;
  uint64_t parameter_count() const;
  std::string summary() const;  // one line for logs
};

// mscale(s, m) = 0.1 * m * ln(s) + 1 for s > 1, else 1 (YaRN, arXiv:2309.00071).
double yarn_get_mscale(double scale, double mscale);

}  // namespace tandem
