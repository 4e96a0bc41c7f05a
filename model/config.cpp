#include "model/config.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace tandem {

namespace {

using json = nlohmann::json;

// Reads fields of one JSON object and names the source and field in every error.
class FieldReader {
 public:
  FieldReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    const json& v = required(key);
    TANDEM_CHECK(v.is_number_integer(), "{}: field '{}' must be an integer, got {}", source_, key,
                 v.dump());
    return v.get<int64_t>();
  }
  int64_t integer_or(const char* key, int64_t fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number(const char* key) const {
    const json& v = required(key);
    TANDEM_CHECK(v.is_number(), "{}: field '{}' must be a number, got {}", source_, key, v.dump());
    return v.get<double>();
  }
  double number_or(const char* key, double fallback) const {
    return has(key) ? number(key) : fallback;
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TANDEM_CHECK(v.is_boolean(), "{}: field '{}' must be true or false, got {}", source_, key,
                 v.dump());
    return v.get<bool>();
  }
  std::string string(const char* key) const {
    const json& v = required(key);
    TANDEM_CHECK(v.is_string(), "{}: field '{}' must be a string, got {}", source_, key, v.dump());
    return v.get<std::string>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    return has(key) ? string(key) : fallback;
  }
  const json& required(const char* key) const {
    TANDEM_CHECK(has(key), "{}: missing field '{}'", source_, key);
    return j_.at(key);
  }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

void check_positive(const FieldReader& r, const char* name, int64_t v) {
  TANDEM_CHECK(v > 0, "{}: field '{}' must be positive, got {}", r.source(), name, v);
}

void parse_rope_scaling(const json& j, const std::string& source, ModelConfig& c) {
  if (j.is_null()) return;
  TANDEM_CHECK(j.is_object(), "{}: field 'rope_scaling' must be an object or null", source);
  FieldReader r(j, source + ": rope_scaling");
  const std::string type = r.has("type") ? r.string("type") : r.string_or("rope_type", "");
  TANDEM_CHECK(type == "yarn", "{}: rope_scaling type '{}' is not supported (only 'yarn')", source,
               type);
  YarnScaling& y = c.rope_scaling;
  y.enabled = true;
  y.factor = r.number("factor");
  y.original_max_position_embeddings = r.integer("original_max_position_embeddings");
  y.beta_fast = r.number_or("beta_fast", 32.0);
  y.beta_slow = r.number_or("beta_slow", 1.0);
  y.mscale = r.number_or("mscale", 0.0);
  y.mscale_all_dim = r.number_or("mscale_all_dim", 0.0);
  y.attention_factor = r.number_or("attention_factor", 0.0);
  TANDEM_CHECK(y.factor >= 1.0, "{}: rope_scaling.factor must be >= 1, got {}", source, y.factor);
  TANDEM_CHECK(y.original_max_position_embeddings > 0,
               "{}: rope_scaling.original_max_position_embeddings must be positive", source);
  TANDEM_CHECK(y.beta_fast > y.beta_slow && y.beta_slow > 0,
               "{}: rope_scaling needs beta_fast > beta_slow > 0, got {} and {}", source,
               y.beta_fast, y.beta_slow);
}

void parse_quantization(const json& j, const std::string& source, ModelConfig& c) {
  if (j.is_null()) return;
  TANDEM_CHECK(j.is_object(), "{}: field 'quantization_config' must be an object", source);
  FieldReader r(j, source + ": quantization_config");
  const std::string method = r.string("quant_method");
  TANDEM_CHECK(method == "fp8", "{}: quantization_config.quant_method '{}' is not supported (fp8)",
               source, method);
  const std::string fmt_name = r.string_or("fmt", "e4m3");
  TANDEM_CHECK(fmt_name == "e4m3", "{}: quantization_config.fmt '{}' is not supported (e4m3)",
               source, fmt_name);
  const std::string scheme = r.string_or("activation_scheme", "dynamic");
  TANDEM_CHECK(scheme == "dynamic",
               "{}: quantization_config.activation_scheme '{}' is not supported (dynamic)", source,
               scheme);
  const json& block = r.required("weight_block_size");
  TANDEM_CHECK(block.is_array() && block.size() == 2 && block[0].is_number_integer() &&
                   block[1].is_number_integer(),
               "{}: quantization_config.weight_block_size must be [n, k], got {}", source,
               block.dump());
  c.quantization.enabled = true;
  c.quantization.block_n = block[0].get<int>();
  c.quantization.block_k = block[1].get<int>();
  TANDEM_CHECK(c.quantization.block_n == 128 && c.quantization.block_k == 128,
               "{}: quantization_config.weight_block_size {} is not supported (only [128, 128])",
               source, block.dump());
}

void validate(const ModelConfig& c, const FieldReader& r) {
  const std::string& s = r.source();
  check_positive(r, "vocab_size", c.vocab_size);
  check_positive(r, "hidden_size", c.hidden_size);
  check_positive(r, "num_hidden_layers", c.num_hidden_layers);
  check_positive(r, "num_attention_heads", c.num_attention_heads);
  check_positive(r, "kv_lora_rank", c.kv_lora_rank);
  check_positive(r, "qk_nope_head_dim", c.qk_nope_head_dim);
  check_positive(r, "qk_rope_head_dim", c.qk_rope_head_dim);
  check_positive(r, "v_head_dim", c.v_head_dim);
  check_positive(r, "max_position_embeddings", c.max_position_embeddings);
  TANDEM_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: field 'qk_rope_head_dim' must be even, got {}", s,
               c.qk_rope_head_dim);
  TANDEM_CHECK(c.q_lora_rank >= 0, "{}: field 'q_lora_rank' must be positive or null", s);
  TANDEM_CHECK(c.rms_norm_eps > 0, "{}: field 'rms_norm_eps' must be positive", s);
  TANDEM_CHECK(c.rope_theta > 0, "{}: field 'rope_theta' must be positive", s);
  TANDEM_CHECK(c.first_k_dense_replace >= 0 && c.first_k_dense_replace <= c.num_hidden_layers,
               "{}: field 'first_k_dense_replace' ({}) must be in [0, num_hidden_layers={}]", s,
               c.first_k_dense_replace, c.num_hidden_layers);
  if (c.first_k_dense_replace > 0 || c.n_routed_experts == 0) {
    check_positive(r, "intermediate_size", c.intermediate_size);
  }
  if (c.n_routed_experts == 0) return;
  check_positive(r, "moe_intermediate_size", c.moe_intermediate_size);
  check_positive(r, "num_experts_per_tok", c.num_experts_per_tok);
  check_positive(r, "n_group", c.n_group);
  check_positive(r, "topk_group", c.topk_group);
  TANDEM_CHECK(c.n_shared_experts >= 0, "{}: field 'n_shared_experts' must be >= 0", s);
  TANDEM_CHECK(c.num_experts_per_tok <= c.n_routed_experts,
               "{}: num_experts_per_tok ({}) exceeds n_routed_experts ({})", s,
               c.num_experts_per_tok, c.n_routed_experts);
  TANDEM_CHECK(c.n_routed_experts % c.n_group == 0,
               "{}: n_routed_experts ({}) is not divisible by n_group ({})", s, c.n_routed_experts,
               c.n_group);
  TANDEM_CHECK(c.topk_group <= c.n_group, "{}: topk_group ({}) exceeds n_group ({})", s,
               c.topk_group, c.n_group);
  if (c.topk_method != TopkMethod::kGreedy) {
    TANDEM_CHECK(c.num_experts_per_tok <= c.topk_group * c.experts_per_group(),
                 "{}: num_experts_per_tok ({}) exceeds the experts in topk_group ({}) groups of {}",
                 s, c.num_experts_per_tok, c.topk_group, c.experts_per_group());
  }
  if (c.topk_method == TopkMethod::kNoauxTc) {
    TANDEM_CHECK(c.experts_per_group() >= 2,
                 "{}: topk_method noaux_tc ranks groups by their top-2 scores and needs at least 2 "
                 "experts per group (n_routed_experts / n_group = {})",
                 s, c.experts_per_group());
  }
  if (c.quantization.enabled) {
    TANDEM_CHECK(c.hidden_size % c.quantization.block_k == 0,
                 "{}: hidden_size ({}) must be a multiple of the fp8 block size {}", s,
                 c.hidden_size, c.quantization.block_k);
  }
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

ModelConfig ModelConfig::from_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  TANDEM_CHECK(in.good(), "cannot read model config {}", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_string(ss.str(), path.string());
}

ModelConfig ModelConfig::from_json_string(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    TANDEM_FAIL("{}: not valid JSON: {}", source, e.what());
  }
  TANDEM_CHECK(j.is_object(), "{}: expected a JSON object", source);
  FieldReader r(j, source);
  ModelConfig c;

  const json& archs = r.required("architectures");
  TANDEM_CHECK(archs.is_array() && archs.size() == 1 && archs[0].is_string(),
               "{}: field 'architectures' must be a list of one name, got {}", source,
               archs.dump());
  c.architecture_name = archs[0].get<std::string>();
  if (c.architecture_name == "DeepseekV3ForCausalLM") {
    c.architecture = Architecture::kDeepseekV3;
  } else if (c.architecture_name == "DeepseekV2ForCausalLM") {
    c.architecture = Architecture::kDeepseekV2;
  } else {
    TANDEM_FAIL("{}: architecture '{}' is not supported (DeepseekV3ForCausalLM, "
                "DeepseekV2ForCausalLM)",
                source, c.architecture_name);
  }
  const bool v3 = c.architecture == Architecture::kDeepseekV3;

  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  const int64_t kv_heads = r.integer_or("num_key_value_heads", c.num_attention_heads);
  TANDEM_CHECK(kv_heads == c.num_attention_heads,
               "{}: num_key_value_heads ({}) must equal num_attention_heads ({}) for MLA", source,
               kv_heads, c.num_attention_heads);

  c.q_lora_rank = r.integer_or("q_lora_rank", 0);
  c.kv_lora_rank = r.integer("kv_lora_rank");
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim");
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim");
  c.v_head_dim = r.integer("v_head_dim");

  c.n_routed_experts = r.integer_or("n_routed_experts", 0);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = r.integer("moe_intermediate_size");
    c.num_experts_per_tok = r.integer("num_experts_per_tok");
    c.n_shared_experts = r.integer_or("n_shared_experts", 0);
    c.n_group = r.integer_or("n_group", 1);
    c.topk_group = r.integer_or("topk_group", 1);
    c.norm_topk_prob = r.boolean_or("norm_topk_prob", v3);
    c.routed_scaling_factor = r.number_or("routed_scaling_factor", 1.0);
    const int64_t freq = r.integer_or("moe_layer_freq", 1);
    TANDEM_CHECK(freq == 1, "{}: moe_layer_freq {} is not supported (1)", source, freq);
  }
  c.first_k_dense_replace = r.integer_or("first_k_dense_replace", 0);

  const std::string scoring = r.string_or("scoring_func", v3 ? "sigmoid" : "softmax");
  const std::string topk = r.string_or("topk_method", v3 ? "noaux_tc" : "greedy");
  if (scoring == "sigmoid") {
    c.scoring_func = ScoringFunc::kSigmoid;
  } else if (scoring == "softmax") {
    c.scoring_func = ScoringFunc::kSoftmax;
  } else {
    TANDEM_FAIL("{}: scoring_func '{}' is not supported (sigmoid, softmax)", source, scoring);
  }
  if (topk == "noaux_tc") {
    c.topk_method = TopkMethod::kNoauxTc;
  } else if (topk == "greedy") {
    c.topk_method = TopkMethod::kGreedy;
  } else if (topk == "group_limited_greedy") {
    c.topk_method = TopkMethod::kGroupLimitedGreedy;
  } else {
    TANDEM_FAIL("{}: topk_method '{}' is not supported (noaux_tc, greedy, group_limited_greedy)",
                source, topk);
  }
  // The reference implementations tie these together; a mismatch would route silently wrong.
  if (v3) {
    TANDEM_CHECK(c.scoring_func == ScoringFunc::kSigmoid && c.topk_method == TopkMethod::kNoauxTc,
                 "{}: DeepseekV3ForCausalLM routes with scoring_func 'sigmoid' and topk_method "
                 "'noaux_tc', got '{}' and '{}'",
                 source, scoring, topk);
  } else {
    TANDEM_CHECK(c.scoring_func == ScoringFunc::kSoftmax && c.topk_method != TopkMethod::kNoauxTc,
                 "{}: DeepseekV2ForCausalLM routes with scoring_func 'softmax' and topk_method "
                 "'greedy' or 'group_limited_greedy', got '{}' and '{}'",
                 source, scoring, topk);
  }

  const std::string act = r.string_or("hidden_act", "silu");
  TANDEM_CHECK(act == "silu", "{}: hidden_act '{}' is not supported (silu)", source, act);
  TANDEM_CHECK(!r.boolean_or("attention_bias", false),
               "{}: attention_bias true is not supported by DeepSeek checkpoints", source);

  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.max_position_embeddings = r.integer("max_position_embeddings");
  if (j.contains("rope_scaling")) parse_rope_scaling(j.at("rope_scaling"), source, c);
  c.rope_interleave = r.boolean_or("rope_interleave", true);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.bos_token_id = r.integer_or("bos_token_id", -1);
  if (r.has("eos_token_id")) {
    const json& eos = j.at("eos_token_id");
    if (eos.is_array()) {
      for (const json& e : eos) {
        TANDEM_CHECK(e.is_number_integer(), "{}: eos_token_id entries must be integers", source);
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(r.integer("eos_token_id"));
    }
  }
  if (j.contains("quantization_config")) parse_quantization(j.at("quantization_config"), source, c);
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", "bfloat16"));
  c.num_nextn_predict_layers = r.integer_or("num_nextn_predict_layers", 0);

  validate(c, r);
  return c;
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.enabled && rope_scaling.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

double ModelConfig::rope_attention_factor() const {
  const YarnScaling& y = rope_scaling;
  if (!y.enabled) return 1.0;
  if (y.attention_factor != 0.0) return y.attention_factor;
  if (y.mscale != 0.0 && y.mscale_all_dim != 0.0) {
    return yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim);
  }
  return yarn_get_mscale(y.factor, 1.0);
}

uint64_t ModelConfig::parameter_count() const {
  const uint64_t h = hidden_size, heads = num_attention_heads;
  uint64_t attn = h * kv_cache_dim() + kv_lora_rank * heads * (qk_nope_head_dim + v_head_dim) +
                  heads * v_head_dim * h + kv_lora_rank + 2 * h;
  attn += q_lora_rank ? h * q_lora_rank + q_lora_rank * heads * qk_head_dim() + q_lora_rank
                      : h * heads * qk_head_dim();
  uint64_t total = 2 * uint64_t(vocab_size) * h + h;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    total += attn;
    if (is_moe_layer(l)) {
      total += uint64_t(n_routed_experts) * 3 * h * moe_intermediate_size +
               3 * h * shared_intermediate_size() + uint64_t(n_routed_experts) * (h + 1);
    } else {
      total += 3 * h * intermediate_size;
    }
  }
  return total;
}

std::string ModelConfig::summary() const {
  return fmt::format(
      "{}: {} layers ({} dense), hidden {}, {} heads, q_lora {}, kv_lora {}, {} experts top-{} "
      "(+{} shared), vocab {}, {}{:.2f}B parameters",
      architecture_name, num_hidden_layers, std::min(first_k_dense_replace, num_hidden_layers),
      hidden_size, num_attention_heads, q_lora_rank, kv_lora_rank, n_routed_experts,
      num_experts_per_tok, n_shared_experts, vocab_size, quantization.enabled ? "fp8, " : "",
      double(parameter_count()) / 1e9);
}

}  // namespace tandem
