#include "model/weights.h"

#include <fmt/format.h>

#include <memory>
#include <unordered_map>

#include "core/log.h"
#include "core/progress.h"
#include "model/random_weights.h"

namespace tandem {

namespace {

std::string layer_prefix(int64_t l) { return fmt::format("model.layers.{}.", l); }

void add_mlp_specs(std::vector<WeightSpec>& specs, const std::string& prefix, int64_t hidden,
                   int64_t inter) {
  specs.push_back({prefix + "gate_proj.weight", {inter, hidden}, WeightKind::kLinear});
  specs.push_back({prefix + "up_proj.weight", {inter, hidden}, WeightKind::kLinear});
  specs.push_back({prefix + "down_proj.weight", {hidden, inter}, WeightKind::kLinear});
}

// Reads checked tensors from a checkpoint, or (dummy) makes them with random_weight from
// their spec: on the target device directly, so a dummy model never passes through the host.
class Loader {
 public:
  Loader(const ModelConfig& c, const Checkpoint& ckpt, Device device)
      : c_(c), ckpt_(&ckpt), device_(device) {}
  Loader(const ModelConfig& c, uint64_t dummy_seed, Device device)
      : c_(c), ckpt_(nullptr), dummy_seed_(dummy_seed), device_(device) {
    for (WeightSpec& spec : weight_specs(c)) {
      int64_t n = 1;
      for (int64_t d : spec.shape) n *= d;
      dummy_bytes_ += uint64_t(n) * dtype_size_bytes(random_weight_dtype(spec, c.quantization.enabled));
      specs_.emplace(spec.name, std::move(spec));
    }
    progress_ = std::make_unique<ProgressBar>("dummy weights", dummy_bytes_);
  }

  bool has(const std::string& name) const { return ckpt_ ? ckpt_->has(name) : specs_.count(name) > 0; }
  std::string source() const { return ckpt_ ? ckpt_->path().string() : "dummy weights"; }
  void finish() {
    if (progress_) progress_->finish();
  }

  Tensor get(const std::string& name, const Shape& shape, std::initializer_list<DType> dtypes) {
    if (!ckpt_) return dummy(name, shape, device_).weight;
    return get_host(name, shape, dtypes).to(device_);
  }

  // The checked tensor as a view of the mapped file (CPU).
  Tensor get_host(const std::string& name, const Shape& shape,
                  std::initializer_list<DType> dtypes) {
    if (!ckpt_) return dummy(name, shape, Device::cpu()).weight;
    const TensorInfo& info = ckpt_->info(name);
    TANDEM_CHECK(info.shape == shape, "{}: tensor '{}' has shape {}, expected {}", info.file, name,
                 shape_str(info.shape), shape_str(shape));
    bool ok = false;
    std::string allowed;
    for (DType d : dtypes) {
      ok |= info.dtype == d;
      allowed += (allowed.empty() ? "" : " or ") + std::string(dtype_name(d));
    }
    TANDEM_CHECK(ok, "{}: tensor '{}' has dtype {}, expected {}", info.file, name,
                 dtype_name(info.dtype), allowed);
    return ckpt_->get(name);
  }

  LinearWeight linear(const std::string& name, int64_t out, int64_t in) {
    if (!ckpt_) {
      RandomWeight r = dummy(name, {out, in}, device_);
      return {std::move(r.weight), std::move(r.scale_inv)};
    }
    return to_device(linear_host(name, out, in));
  }

  LinearWeight to_device(LinearWeight w) const {
    w.weight = w.weight.to(device_);
    if (w.scale_inv.defined()) w.scale_inv = w.scale_inv.to(device_);
    return w;
  }

  LinearWeight linear_host(const std::string& name, int64_t out, int64_t in) {
    if (!ckpt_) {
      RandomWeight r = dummy(name, {out, in}, Device::cpu());
      return {std::move(r.weight), std::move(r.scale_inv)};
    }
    LinearWeight w;
    if (c_.quantization.enabled) {
      w.weight = get_host(name, {out, in}, {DType::kF8E4M3});
      const int64_t b = LinearWeight::kBlock;
      w.scale_inv =
          get_host(name + "_scale_inv", {(out + b - 1) / b, (in + b - 1) / b}, {DType::kF32});
    } else {
      w.weight = get_host(name, {out, in}, {DType::kBF16, DType::kF32});
    }
    return w;
  }

  Tensor norm(const std::string& name, int64_t n) {
    return get(name, {n}, {DType::kBF16, DType::kF32});
  }

  MlpWeights mlp(const std::string& prefix, int64_t inter) {
    const int64_t h = c_.hidden_size;
    return {linear(prefix + "gate_proj.weight", inter, h), linear(prefix + "up_proj.weight", inter, h),
            linear(prefix + "down_proj.weight", h, inter)};
  }

  AttentionWeights attention(const std::string& p) {
    const int64_t h = c_.hidden_size, heads = c_.num_attention_heads;
    AttentionWeights a;
    if (c_.q_lora_rank > 0) {
      a.q_a_proj = linear(p + "q_a_proj.weight", c_.q_lora_rank, h);
      a.q_a_layernorm = norm(p + "q_a_layernorm.weight", c_.q_lora_rank);
      a.q_b_proj = linear(p + "q_b_proj.weight", heads * c_.qk_head_dim(), c_.q_lora_rank);
    } else {
      a.q_proj = linear(p + "q_proj.weight", heads * c_.qk_head_dim(), h);
    }
    a.kv_a_proj_with_mqa = linear(p + "kv_a_proj_with_mqa.weight", c_.kv_cache_dim(), h);
    a.kv_a_layernorm = norm(p + "kv_a_layernorm.weight", c_.kv_lora_rank);
    const LinearWeight kv_b = linear_host(
        p + "kv_b_proj.weight", heads * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank);
    split_kv_b(kv_b, a);
    a.kv_b_proj = to_device(kv_b);  // read (or made) once, for the split and the projection
    a.o_proj = linear(p + "o_proj.weight", h, heads * c_.v_head_dim);
    return a;
  }

 private:
  // kv_b_proj rows are, per head, nope rows of W_UK then v rows of W_UV, each kv_lora wide. The
  // split keeps the checkpoint's values exactly: f32 and bf16 as they are; fp8 as fp8 with its
  // block scales when the 128-row blocks fall on head and nope/v boundaries (V3: nope = v = 128),
  // else as the f32 products of value and scale. bf16 halves and fp8 quarters the f32 bytes
  // every decode step reads.
  void split_kv_b(const LinearWeight& w, AttentionWeights& a) {
    const int64_t heads = c_.num_attention_heads, nope = c_.qk_nope_head_dim;
    const int64_t v = c_.v_head_dim, lora = c_.kv_lora_rank, rows = nope + v;
    const int64_t b = LinearWeight::kBlock;
    const bool fp8_blocks = w.is_fp8() && nope % b == 0 && v % b == 0;
    Tensor src = w.weight.contiguous();
    if (w.is_fp8() && !fp8_blocks) {
      src = to_f32(src);
      float* d = src.data<float>();
      const float* s = w.scale_inv.data<float>();
      for (int64_t n = 0; n < heads * rows; ++n)
        for (int64_t k = 0; k < lora; ++k) d[n * lora + k] *= s[(n / b) * w.scale_inv.stride(0) + k / b];
    }
    a.w_uk_t.weight = Tensor::empty({heads, lora, nope}, src.dtype());
    a.w_uv.weight = Tensor::empty({heads, v, lora}, src.dtype());
    auto split = [&]<class T>(T*) {
      const T* in = static_cast<const T*>(src.raw_data());
      T* uk = static_cast<T*>(a.w_uk_t.weight.raw_data());
      T* uv = static_cast<T*>(a.w_uv.weight.raw_data());
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* row = in + (h * rows + r) * lora;
          if (r < nope) {
            for (int64_t k = 0; k < lora; ++k) uk[(h * lora + k) * nope + r] = row[k];
          } else {
            std::copy(row, row + lora, uv + (h * v + r - nope) * lora);
          }
        }
      }
    };
    switch (dtype_size_bytes(src.dtype())) {
      case 4: split(static_cast<uint32_t*>(nullptr)); break;
      case 2: split(static_cast<uint16_t*>(nullptr)); break;
      default: split(static_cast<uint8_t*>(nullptr)); break;
    }
    if (fp8_blocks) {  // per head: W_UK^T [lora, nope] and W_UV [v, lora] in 128x128 blocks
      const int64_t kb = (lora + b - 1) / b, nb = nope / b, vb = v / b;
      const float* s = w.scale_inv.data<float>();
      const int64_t ss = w.scale_inv.stride(0);
      a.w_uk_t.scale_inv = Tensor::empty({heads, kb, nb}, DType::kF32);
      a.w_uv.scale_inv = Tensor::empty({heads, vb, kb}, DType::kF32);
      float* uk = a.w_uk_t.scale_inv.data<float>();
      float* uv = a.w_uv.scale_inv.data<float>();
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t first = h * rows / b;  // the head's first block row of kv_b
        for (int64_t c = 0; c < kb; ++c) {
          for (int64_t r = 0; r < nb; ++r) uk[(h * kb + c) * nb + r] = s[(first + r) * ss + c];
          for (int64_t r = 0; r < vb; ++r) uv[(h * vb + r) * kb + c] = s[(first + nb + r) * ss + c];
        }
      }
      a.w_uk_t.scale_inv = a.w_uk_t.scale_inv.to(device_);
      a.w_uv.scale_inv = a.w_uv.scale_inv.to(device_);
    }
    a.w_uk_t.weight = a.w_uk_t.weight.to(device_);
    a.w_uv.weight = a.w_uv.weight.to(device_);
  }

  // A dummy tensor as make-model writes it, counted on the progress bar.
  RandomWeight dummy(const std::string& name, const Shape& shape, Device device) {
    const auto it = specs_.find(name);
    TANDEM_CHECK(it != specs_.end(), "dummy weights: no tensor '{}' in this config", name);
    TANDEM_CHECK(it->second.shape == shape, "dummy weights: tensor '{}' is {}, expected {}", name,
                 shape_str(it->second.shape), shape_str(shape));
    RandomWeight r = random_weight(it->second, c_.quantization.enabled, dummy_seed_, device);
    progress_->advance(r.weight.nbytes());
    return r;
  }

  const ModelConfig& c_;
  const Checkpoint* ckpt_;  // null: dummy weights
  uint64_t dummy_seed_ = 0;
  std::unordered_map<std::string, WeightSpec> specs_;
  uint64_t dummy_bytes_ = 0;  // of the weights (not the fp8 block scales): the progress total
  std::unique_ptr<ProgressBar> progress_;
  Device device_;
};

}  // namespace

std::vector<WeightSpec> weight_specs(const ModelConfig& c) {
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  std::vector<WeightSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, WeightKind::kEmbedding});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l), a = p + "self_attn.";
    specs.push_back({p + "input_layernorm.weight", {h}, WeightKind::kNorm});
    if (c.q_lora_rank > 0) {
      specs.push_back({a + "q_a_proj.weight", {c.q_lora_rank, h}, WeightKind::kLinear});
      specs.push_back({a + "q_a_layernorm.weight", {c.q_lora_rank}, WeightKind::kNorm});
      specs.push_back({a + "q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank},
                       WeightKind::kLinear});
    } else {
      specs.push_back({a + "q_proj.weight", {heads * c.qk_head_dim(), h}, WeightKind::kLinear});
    }
    specs.push_back({a + "kv_a_proj_with_mqa.weight", {c.kv_cache_dim(), h}, WeightKind::kLinear});
    specs.push_back({a + "kv_a_layernorm.weight", {c.kv_lora_rank}, WeightKind::kNorm});
    specs.push_back({a + "kv_b_proj.weight",
                     {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                     WeightKind::kLinear});
    specs.push_back({a + "o_proj.weight", {h, heads * c.v_head_dim}, WeightKind::kLinear});
    specs.push_back({p + "post_attention_layernorm.weight", {h}, WeightKind::kNorm});
    if (!c.is_moe_layer(l)) {
      add_mlp_specs(specs, p + "mlp.", h, c.intermediate_size);
      continue;
    }
    specs.push_back({p + "mlp.gate.weight", {c.n_routed_experts, h}, WeightKind::kRouter});
    if (c.architecture == Architecture::kDeepseekV3) {
      specs.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts},
                       WeightKind::kRouterBias});
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      add_mlp_specs(specs, fmt::format("{}mlp.experts.{}.", p, e), h, c.moe_intermediate_size);
    }
    if (c.n_shared_experts > 0) {
      add_mlp_specs(specs, p + "mlp.shared_experts.", h, c.shared_intermediate_size());
    }
  }
  specs.push_back({"model.norm.weight", {h}, WeightKind::kNorm});
  specs.push_back({"lm_head.weight", {c.vocab_size, h}, WeightKind::kEmbedding});
  return specs;
}

namespace {

ModelWeights load_with(Loader& load, const ModelConfig& c, Device device,
                       const ExpertFilter& keep_expert) {
  ModelWeights w;
  const int64_t h = c.hidden_size;
  w.embed_tokens = load.get("model.embed_tokens.weight", {c.vocab_size, h},
                            {DType::kBF16, DType::kF32});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    LayerWeights layer;
    layer.input_layernorm = load.norm(p + "input_layernorm.weight", h);
    layer.post_attention_layernorm = load.norm(p + "post_attention_layernorm.weight", h);
    layer.attn = load.attention(p + "self_attn.");
    layer.is_moe = c.is_moe_layer(l);
    if (!layer.is_moe) {
      layer.mlp = load.mlp(p + "mlp.", c.intermediate_size);
    } else {
      MoeWeights& m = layer.moe;
      m.gate.weight = load.get(p + "mlp.gate.weight", {c.n_routed_experts, h},
                               {DType::kBF16, DType::kF32});
      if (c.architecture == Architecture::kDeepseekV3) {
        // Kept in f32 whatever the file holds: it shifts selection between close scores.
        m.e_score_correction_bias = to_f32(load.get_host(p + "mlp.gate.e_score_correction_bias",
                                                         {c.n_routed_experts},
                                                         {DType::kF32, DType::kBF16}))
                                        .to(device);
      }
      m.experts.resize(c.n_routed_experts);
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        if (keep_expert && !keep_expert(l, e)) continue;
        m.experts[e] = load.mlp(fmt::format("{}mlp.experts.{}.", p, e), c.moe_intermediate_size);
      }
      if (!keep_expert) {
        for (const MlpWeights& e : m.experts) {
          m.routed.gate.push_back(e.gate_proj);
          m.routed.up.push_back(e.up_proj);
          m.routed.down.push_back(e.down_proj);
        }
        ops::prepare_experts(m.routed);
      }
      m.has_shared = c.n_shared_experts > 0;
      if (m.has_shared) m.shared = load.mlp(p + "mlp.shared_experts.", c.shared_intermediate_size());
    }
    w.layers.push_back(std::move(layer));
  }
  w.norm = load.norm("model.norm.weight", h);
  if (c.tie_word_embeddings && !load.has("lm_head.weight")) {
    w.lm_head.weight = w.embed_tokens;
  } else {
    w.lm_head.weight = load.get("lm_head.weight", {c.vocab_size, h}, {DType::kBF16, DType::kF32});
  }
  load.finish();
  TANDEM_LOG_DEBUG("loaded {} layers from {}", c.num_hidden_layers, load.source());
  return w;
}

}  // namespace

ModelWeights load_weights(const ModelConfig& c, const Checkpoint& ckpt, Device device,
                          const ExpertFilter& keep_expert) {
  Loader load(c, ckpt, device);
  return load_with(load, c, device, keep_expert);
}

ModelWeights load_dummy_weights(const ModelConfig& c, uint64_t seed, Device device,
                                const ExpertFilter& keep_expert) {
  Loader load(c, seed, device);
  return load_with(load, c, device, keep_expert);
}

}  // namespace tandem
