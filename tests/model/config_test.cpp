#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"
#include "model/presets.h"

namespace tandem {
namespace {

using json = nlohmann::json;

// The published configs live beside the checkout (../shared/data/configs); the presets carry
// the same values, and both must parse to the same facts.
std::filesystem::path shared_config(const std::string& name) {
  if (const char* dir = std::getenv("TANDEM_CONFIG_DIR")) return std::filesystem::path(dir) / name;
  return std::filesystem::path(TANDEM_SOURCE_DIR) / "../shared/data/configs" / name;
}

ModelConfig parse(const json& j) { return ModelConfig::from_json_string(j.dump(), "config.json"); }

std::string error_of(const json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, PublishedDeepSeekV3) {
  const auto path = shared_config("deepseek-v3.config.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "published config not found at " << path;
  const ModelConfig c = ModelConfig::from_json_file(path);
  EXPECT_EQ(c.architecture, Architecture::kDeepseekV3);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.kv_cache_dim(), 576);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.experts_per_group(), 32);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_TRUE(c.quantization.enabled);
  EXPECT_TRUE(c.rope_scaling.enabled);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_FALSE(c.is_moe_layer(2));
  // 0.1 * ln(40) + 1 squared, over sqrt(192).
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
  EXPECT_DOUBLE_EQ(c.rope_attention_factor(), 1.0);
  // About 671B parameters without the MTP layer (the published 671B excludes it too).
  EXPECT_NEAR(double(c.parameter_count()) / 1e9, 671.0, 3.0);
  EXPECT_EQ(parse(preset_config_json("v3")).summary(), c.summary());
}

TEST(ModelConfig, PublishedDeepSeekV2Lite) {
  const auto path = shared_config("deepseek-v2-lite.config.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "published config not found at " << path;
  const ModelConfig c = ModelConfig::from_json_file(path);
  EXPECT_EQ(c.architecture, Architecture::kDeepseekV2);
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_FALSE(c.quantization.enabled);
  EXPECT_NEAR(double(c.parameter_count()) / 1e9, 15.7, 0.3);
  EXPECT_EQ(parse(preset_config_json("v2-lite")).summary(), c.summary());
}

TEST(ModelConfig, MissingFieldIsNamed) {
  for (const char* field : {"hidden_size", "kv_lora_rank", "num_hidden_layers", "vocab_size",
                            "architectures", "max_position_embeddings"}) {
    json j = preset_config_json("v3");
    j.erase(field);
    EXPECT_NE(error_of(j).find(std::string("missing field '") + field + "'"), std::string::npos)
        << field << ": " << error_of(j);
  }
}

TEST(ModelConfig, WrongTypesAndContradictionsAreNamed) {
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  const Case cases[] = {
      {"hidden_size", "big", "field 'hidden_size' must be an integer"},
      {"hidden_size", -5, "field 'hidden_size' must be positive"},
      {"n_group", 7, "n_routed_experts (256) is not divisible by n_group (7)"},
      {"topk_group", 9, "topk_group (9) exceeds n_group (8)"},
      {"num_experts_per_tok", 300, "num_experts_per_tok (300) exceeds n_routed_experts"},
      {"num_key_value_heads", 1, "num_key_value_heads (1) must equal num_attention_heads"},
      {"scoring_func", "softmax", "routes with scoring_func 'sigmoid'"},
      {"topk_method", "magic", "topk_method 'magic' is not supported"},
      {"hidden_act", "gelu", "hidden_act 'gelu' is not supported"},
      {"qk_rope_head_dim", 63, "must be even"},
      {"first_k_dense_replace", 99, "first_k_dense_replace"},
      {"norm_topk_prob", 1, "field 'norm_topk_prob' must be true or false"},
      {"rope_scaling", json{{"type", "linear"}, {"factor", 2}}, "rope_scaling type 'linear'"},
      {"quantization_config", json{{"quant_method", "fp8"}, {"weight_block_size", {64, 64}}},
       "weight_block_size [64,64] is not supported"},
      {"quantization_config", json{{"quant_method", "awq"}}, "quant_method 'awq'"},
  };
  for (const Case& c : cases) {
    json j = preset_config_json("v3");
    j[c.key] = c.value;
    EXPECT_NE(error_of(j).find(c.expect), std::string::npos) << c.key << ": " << error_of(j);
  }
}

TEST(ModelConfig, UnknownArchitectureIsRefusedByName) {
  json j = preset_config_json("v3");
  j["architectures"] = {"LlamaForCausalLM"};
  EXPECT_NE(error_of(j).find("architecture 'LlamaForCausalLM' is not supported"), std::string::npos);
  EXPECT_NE(error_of(json::array()).find("expected a JSON object"), std::string::npos);
  try {
    ModelConfig::from_json_string("{not json", "dir/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dir/config.json: not valid JSON"), std::string::npos);
  }
  EXPECT_THROW(ModelConfig::from_json_file("/nonexistent/config.json"), Error);
}

TEST(ModelConfig, EosMayBeAList) {
  json j = preset_config_json("tiny");
  j["eos_token_id"] = {1, 128805};
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{1, 128805}));
}

}  // namespace
}  // namespace tandem
