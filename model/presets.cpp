#include "model/presets.h"

#include "core/error.h"

namespace tandem {

namespace {

using json = nlohmann::json;

// DeepSeek-V3 (671B) as its checkpoint publishes it.
json v3_config() {
  return json{
      {"architectures", {"DeepseekV3ForCausalLM"}},
      {"model_type", "deepseek_v3"},
      {"attention_bias", false},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"first_k_dense_replace", 3},
      {"hidden_act", "silu"},
      {"hidden_size", 7168},
      {"intermediate_size", 18432},
      {"kv_lora_rank", 512},
      {"max_position_embeddings", 163840},
      {"moe_intermediate_size", 2048},
      {"moe_layer_freq", 1},
      {"n_group", 8},
      {"n_routed_experts", 256},
      {"n_shared_experts", 1},
      {"norm_topk_prob", true},
      {"num_attention_heads", 128},
      {"num_experts_per_tok", 8},
      {"num_hidden_layers", 61},
      {"num_key_value_heads", 128},
      {"num_nextn_predict_layers", 1},
      {"q_lora_rank", 1536},
      {"qk_nope_head_dim", 128},
      {"qk_rope_head_dim", 64},
      {"quantization_config",
       {{"activation_scheme", "dynamic"},
        {"fmt", "e4m3"},
        {"quant_method", "fp8"},
        {"weight_block_size", {128, 128}}}},
      {"rms_norm_eps", 1e-06},
      {"rope_scaling",
       {{"beta_fast", 32},
        {"beta_slow", 1},
        {"factor", 40},
        {"mscale", 1.0},
        {"mscale_all_dim", 1.0},
        {"original_max_position_embeddings", 4096},
        {"type", "yarn"}}},
      {"rope_theta", 10000},
      {"routed_scaling_factor", 2.5},
      {"scoring_func", "sigmoid"},
      {"tie_word_embeddings", false},
      {"topk_group", 4},
      {"topk_method", "noaux_tc"},
      {"torch_dtype", "bfloat16"},
      {"v_head_dim", 128},
      {"vocab_size", 129280}};
}

// DeepSeek-V2-Lite (16B) as its checkpoint publishes it.
json v2_lite_config() {
  return json{
      {"architectures", {"DeepseekV2ForCausalLM"}},
      {"model_type", "deepseek_v2"},
      {"attention_bias", false},
      {"bos_token_id", 100000},
      {"eos_token_id", 100001},
      {"first_k_dense_replace", 1},
      {"hidden_act", "silu"},
      {"hidden_size", 2048},
      {"intermediate_size", 10944},
      {"kv_lora_rank", 512},
      {"max_position_embeddings", 163840},
      {"moe_intermediate_size", 1408},
      {"moe_layer_freq", 1},
      {"n_group", 1},
      {"n_routed_experts", 64},
      {"n_shared_experts", 2},
      {"norm_topk_prob", false},
      {"num_attention_heads", 16},
      {"num_experts_per_tok", 6},
      {"num_hidden_layers", 27},
      {"num_key_value_heads", 16},
      {"q_lora_rank", nullptr},
      {"qk_nope_head_dim", 128},
      {"qk_rope_head_dim", 64},
      {"rms_norm_eps", 1e-06},
      {"rope_scaling",
       {{"beta_fast", 32},
        {"beta_slow", 1},
        {"factor", 40},
        {"mscale", 0.707},
        {"mscale_all_dim", 0.707},
        {"original_max_position_embeddings", 4096},
        {"type", "yarn"}}},
      {"rope_theta", 10000},
      {"routed_scaling_factor", 1.0},
      {"scoring_func", "softmax"},
      {"tie_word_embeddings", false},
      {"topk_group", 1},
      {"topk_method", "greedy"},
      {"torch_dtype", "bfloat16"},
      {"v_head_dim", 128},
      {"vocab_size", 102400}};
}

// V3's architecture (MLA with q_lora, sigmoid group-limited routing, a first dense layer, YaRN)
// and its tokenizer's vocabulary, small enough to run on a laptop CPU. The MLA latent keeps
// V3's 512 + 64 so the cache layout is the real one.
json tiny_config() {
  json c = v3_config();
  c.erase("quantization_config");
  c["hidden_size"] = 256;
  c["intermediate_size"] = 512;
  c["moe_intermediate_size"] = 128;
  c["num_hidden_layers"] = 4;
  c["first_k_dense_replace"] = 1;
  c["num_attention_heads"] = 4;
  c["num_key_value_heads"] = 4;
  c["q_lora_rank"] = 128;
  c["qk_nope_head_dim"] = 64;
  c["qk_rope_head_dim"] = 64;
  c["v_head_dim"] = 64;
  c["n_routed_experts"] = 16;
  c["num_experts_per_tok"] = 4;
  c["n_group"] = 4;
  c["topk_group"] = 2;
  c["num_nextn_predict_layers"] = 0;
  c["max_position_embeddings"] = 16384;
  c["rope_scaling"]["factor"] = 4;
  return c;
}

// `tiny` shrunk further for unit tests: a 512-token vocabulary, hidden 128, 2 layers (one dense,
// one MoE of 8 experts, top-2 in 4 groups); a forward step takes milliseconds.
json mini_config() {
  json c = tiny_config();
  c["vocab_size"] = 512;
  c["num_hidden_layers"] = 2;
  c["hidden_size"] = 128;
  c["intermediate_size"] = 256;
  c["moe_intermediate_size"] = 64;
  c["n_routed_experts"] = 8;
  c["num_experts_per_tok"] = 2;
  c["max_position_embeddings"] = 2048;
  return c;
}

}  // namespace

std::vector<std::string> preset_names() { return {"tiny", "mini", "v2-lite", "v3"}; }

json preset_config_json(const std::string& preset) {
  if (preset == "tiny") return tiny_config();
  if (preset == "mini") return mini_config();
  if (preset == "v2-lite") return v2_lite_config();
  if (preset == "v3") return v3_config();
  TANDEM_FAIL("unknown preset '{}' (tiny, mini, v2-lite, v3)", preset);
}

}  // namespace tandem
