// make-model writes what the loader reads; a checkpoint that does not fit its config is a
// clear error naming the file and the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "model/loader.h"
#include "model/presets.h"
#include "model/random_weights.h"
#include "model/safetensors_writer.h"
#include "model/weights.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json small_config(bool fp8) {
  json c = preset_config_json("tiny");
  c["vocab_size"] = 512;
  c["num_hidden_layers"] = 2;
  if (fp8) {
    c["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                {"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  }
  return c;
}

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("tandem_weights_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes config.json and a single-file checkpoint of `config` after `edit` changed the list.
  void write_edited(const json& config,
                    const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
    fs::create_directories(dir_);
    std::ofstream(dir_ / "config.json") << config.dump();
    const ModelConfig c = ModelConfig::from_json_string(config.dump(), "test");
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const WeightSpec& s : weight_specs(c)) {
      RandomWeight w = random_weight(s, c.quantization.enabled, 1);
      tensors.emplace_back(s.name, w.weight);
      if (w.scale_inv.defined()) tensors.emplace_back(s.name + "_scale_inv", w.scale_inv);
    }
    edit(tensors);
    SafetensorsWriter writer;
    for (auto& [name, t] : tensors) writer.add(name, t);
    writer.write(dir_ / "model.safetensors");
  }

  std::string load_error() {
    try {
      load_model(dir_);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

Tensor run_prefill(LoadedModel& m, const std::vector<int32_t>& ids) {
  KvCache cache = KvCache::create(m.config, 4, 16, DType::kF32);
  SequenceStep seq;
  seq.new_tokens = ids;
  seq.pages = {0, 1, 2, 3};
  return m.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, 16), cache);
}

TEST_F(WeightsTest, MakeModelRoundTripsAndIsDeterministic) {
  for (bool fp8 : {false, true}) {
    make_random_checkpoint(small_config(fp8), {dir_ / "a", 7, 1u << 20});  // 1 MB shards
    make_random_checkpoint(small_config(fp8), {dir_ / "b", 7, 1u << 30});
    LoadedModel a = load_model(dir_ / "a");
    LoadedModel b = load_model(dir_ / "b");
    EXPECT_GT(a.checkpoint->files().size(), 1u);
    EXPECT_EQ(b.checkpoint->files().size(), 1u);
    const Tensor la = run_prefill(a, {5, 17, 300, 2});
    const Tensor lb = run_prefill(b, {5, 17, 300, 2});
    float spread = 0.0f;
    for (int64_t i = 0; i < la.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(la.data<float>()[i]));
      ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]) << "same seed, same weights";
      spread = std::max(spread, std::fabs(la.data<float>()[i]));
    }
    EXPECT_GT(spread, 0.1f) << "logits should not be degenerate";
    make_random_checkpoint(small_config(fp8), {dir_ / "c", 8, 1u << 30});
    LoadedModel c = load_model(dir_ / "c");
    EXPECT_NE(run_prefill(c, {5, 17, 300, 2}).data<float>()[0], la.data<float>()[0]);
    fs::remove_all(dir_);
  }
}

// ops::fill_random, the dummy-weight generator: deterministic in (key, index), and a bad out
// (an integer dtype, a strided view, a non-finite amplitude) is an error naming the problem.
TEST(FillRandom, SameKeySameBitsAndBadOutputsAreRefused) {
  Tensor a = Tensor::empty({7, 33}, DType::kBF16), b = Tensor::empty({7, 33}, DType::kBF16);
  ops::fill_random(a, 42, 0.5f, 1.0f);
  ops::fill_random(b, 42, 0.5f, 1.0f);
  EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0);
  ops::fill_random(b, 43, 0.5f, 1.0f);
  EXPECT_NE(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0);
  for (int64_t i = 0; i < a.numel(); ++i) {  // offset +- amplitude
    const float v = bf16_to_f32(a.data<bf16>()[i]);
    EXPECT_GE(v, 0.5f);
    EXPECT_LE(v, 1.5f);
  }
  Tensor ints = Tensor::empty({8}, DType::kI32);
  EXPECT_THROW(ops::fill_random(ints, 1, 1.0f, 0.0f), Error);
  Tensor strided = Tensor::empty({8, 8}, DType::kF32).slice(1, 0, 4);
  try {
    ops::fill_random(strided, 1, 1.0f, 0.0f);
    ADD_FAILURE() << "a strided out was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("contiguous"), std::string::npos) << e.what();
  }
  Tensor f = Tensor::empty({8}, DType::kF32);
  EXPECT_THROW(ops::fill_random(f, 1, INFINITY, 0.0f), Error);
}

// --load-format dummy: from config.json alone, the same weights make-model writes with seed 0.
TEST_F(WeightsTest, DummyLoadEqualsMakeModelSeedZero) {
  for (bool fp8 : {false, true}) {
    make_random_checkpoint(small_config(fp8), {dir_ / "written", 0, 1u << 30});
    fs::create_directories(dir_ / "config_only");
    fs::copy_file(dir_ / "written" / "config.json", dir_ / "config_only" / "config.json");
    LoadedModel written = load_model(dir_ / "written");
    LoadedModel dummy = load_model(dir_ / "config_only", Device::cpu(), LoadFormat::kDummy);
    EXPECT_EQ(dummy.checkpoint, nullptr);  // made tensor by tensor, no checkpoint held
    const Tensor a = run_prefill(written, {5, 17, 300, 2});
    const Tensor b = run_prefill(dummy, {5, 17, 300, 2});
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]);
    fs::remove_all(dir_);
  }
  LoadFormat f;
  EXPECT_TRUE(load_format_from_name("dummy", &f));
  EXPECT_FALSE(load_format_from_name("pt", &f));
}

// kv_b_proj's value at (row n, column k) as the checkpoint means it: the fp8 value times its
// block scale (one f32 product), else the stored value.
float kv_b_value(const LinearWeight& w, const Tensor& dense, int64_t n, int64_t k) {
  const float v = dense.data<float>()[n * w.in_features() + k];
  if (!w.is_fp8()) return v;
  return v * w.scale_inv.data<float>()[(n / 128) * w.scale_inv.stride(0) + k / 128];
}

// Row n, column k of a HeadWeight's head h, dequantized.
float head_value(const HeadWeight& w, int64_t h, int64_t n, int64_t k) {
  const int64_t rows = w.weight.size(1), cols = w.weight.size(2);
  const float v = load_as_f32(w.weight.raw_data(), w.weight.dtype(), (h * rows + n) * cols + k);
  if (!w.is_fp8()) return v;
  const Tensor& s = w.scale_inv;
  return v * s.data<float>()[(h * s.size(1) + n / 128) * s.size(2) + k / 128];
}

// The absorbed W_UK^T / W_UV are kv_b_proj's rows per head, value for value: bf16 stays bf16;
// fp8 stays fp8 with per-head block scales when nope and v are whole 128-row blocks (V3), else
// becomes the f32 products (the tiny preset, nope = v = 64).
TEST(AbsorbedWeights, SplitKeepsTheCheckpointValues) {
  struct Case { bool fp8; int64_t nope_v; DType want; };
  for (const Case& cs : {Case{false, 64, DType::kBF16}, Case{true, 64, DType::kF32},
                         Case{true, 128, DType::kF8E4M3}}) {
    json j = small_config(cs.fp8);
    j["qk_nope_head_dim"] = cs.nope_v;
    j["v_head_dim"] = cs.nope_v;
    const ModelConfig c = ModelConfig::from_json_string(j.dump(), "tiny");
    const ModelWeights w = load_dummy_weights(c, 3, Device::cpu());
    const AttentionWeights& a = w.layers[1].attn;
    const int64_t heads = c.num_attention_heads, nope = c.qk_nope_head_dim;
    const int64_t v = c.v_head_dim, lora = c.kv_lora_rank;
    const std::string tag = std::string(cs.fp8 ? "fp8" : "bf16") + " nope " + std::to_string(nope);
    ASSERT_EQ(a.w_uk_t.weight.dtype(), cs.want) << tag;
    ASSERT_EQ(a.w_uv.weight.dtype(), cs.want) << tag;
    ASSERT_EQ(a.w_uk_t.weight.shape(), (Shape{heads, lora, nope})) << tag;
    ASSERT_EQ(a.w_uv.weight.shape(), (Shape{heads, v, lora})) << tag;
    EXPECT_EQ(a.w_uk_t.scale_inv.defined(), cs.want == DType::kF8E4M3) << tag;
    const Tensor dense = to_f32(a.kv_b_proj.weight);
    int64_t nonzero = 0;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t r = 0; r < nope + v; ++r) {
        for (int64_t k = 0; k < lora; ++k) {
          const float want = kv_b_value(a.kv_b_proj, dense, h * (nope + v) + r, k);
          const float got = r < nope ? head_value(a.w_uk_t, h, k, r) : head_value(a.w_uv, h, r - nope, k);
          ASSERT_EQ(got, want) << tag << " head " << h << " row " << r << " col " << k;
          nonzero += want != 0.0f;
        }
      }
    }
    EXPECT_GT(nonzero, heads * (nope + v) * lora / 2) << tag;
  }
}

// ops::head_matmul on the CPU: bf16 and fp8 weights, and bf16 x, give bitwise the result of
// their f32 values (exact widening, one product per fp8 weight); a bad scale tensor is refused.
TEST(AbsorbedWeights, HeadMatmulDtypesAgreeBitwise) {
  const int64_t t = 3, heads = 2, n = 256, k = 384;
  Tensor x = Tensor::empty({t, heads, k + 64}, DType::kF32);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::sin(0.37f * float(i));
  const Tensor xs = x.slice(2, 0, k);  // strided rows, as q_nope in the model
  HeadWeight f8{Tensor::empty({heads, n, k}, DType::kF8E4M3), Tensor::empty({heads, 2, 3}, DType::kF32)};
  for (int64_t i = 0; i < f8.weight.numel(); ++i)
    store_from_f32(f8.weight.raw_data(), DType::kF8E4M3, i, std::cos(0.11f * float(i)) * 3.0f);
  for (int64_t i = 0; i < f8.scale_inv.numel(); ++i) f8.scale_inv.data<float>()[i] = 0.01f * float(i + 1);
  HeadWeight f32{Tensor::empty({heads, n, k}, DType::kF32), {}};
  HeadWeight b16{Tensor::empty({heads, n, k}, DType::kBF16), {}};
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const int64_t i = (h * n + r) * k + c;
        f32.weight.data<float>()[i] = head_value(f8, h, r, c);
        b16.weight.data<bf16>()[i] = f32_to_bf16(f32.weight.data<float>()[i]);
      }
  auto run = [&](const HeadWeight& w) {
    Tensor out = Tensor::empty({t, heads, n}, DType::kF32);
    ops::head_matmul(xs, w, out);
    return out;
  };
  const Tensor a = run(f8), b = run(f32);
  HeadWeight b32{cast(b16.weight, DType::kF32), {}};
  const Tensor c = run(b16), d = run(b32);
  // bf16 x (the model's bf16 activations): widened exactly, so equal to its f32 copy.
  const Tensor xb = cast(xs, DType::kBF16);
  Tensor e = Tensor::empty({t, heads, n}, DType::kF32), f = Tensor::empty({t, heads, n}, DType::kF32);
  ops::head_matmul(xb, f8, e);
  ops::head_matmul(cast(xb, DType::kF32), f8, f);
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << "fp8 vs f32 at " << i;
    ASSERT_EQ(c.data<float>()[i], d.data<float>()[i]) << "bf16 vs f32 at " << i;
    ASSERT_EQ(e.data<float>()[i], f.data<float>()[i]) << "bf16 x vs f32 x at " << i;
  }
  EXPECT_NE(a.data<float>()[0], 0.0f);
  Tensor out = Tensor::empty({t, heads, n}, DType::kF32);
  HeadWeight bad = f8;
  bad.scale_inv = Tensor::empty({heads, 2, 2}, DType::kF32);
  EXPECT_THROW(ops::head_matmul(xs, bad, out), Error);
  bad.scale_inv = Tensor();
  EXPECT_THROW(ops::head_matmul(xs, bad, out), Error);
  HeadWeight extra = f32;
  extra.scale_inv = f8.scale_inv;
  EXPECT_THROW(ops::head_matmul(xs, extra, out), Error);
}

TEST_F(WeightsTest, MissingTensorIsNamed) {
  write_edited(small_config(false), [](auto& t) {
    std::erase_if(t, [](auto& p) { return p.first == "model.layers.1.mlp.experts.3.up_proj.weight"; });
  });
  const std::string e = load_error();
  EXPECT_NE(e.find("missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight'"), std::string::npos) << e;
}

TEST_F(WeightsTest, WrongShapeIsNamedWithFile) {
  write_edited(small_config(false), [](auto& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.layers.0.self_attn.kv_b_proj.weight") tensor = Tensor::zeros({8, 8}, DType::kBF16);
    }
  });
  const std::string e = load_error();
  EXPECT_NE(e.find("model.safetensors: tensor 'model.layers.0.self_attn.kv_b_proj.weight' has shape [8, 8]"),
            std::string::npos) << e;
}

TEST_F(WeightsTest, WrongDtypeIsNamed) {
  // An fp8 config whose checkpoint holds a bf16 projection (a mixed-up conversion).
  write_edited(small_config(true), [](auto& t) {
    for (auto& [name, tensor] : t) {
      if (name == "model.layers.1.self_attn.o_proj.weight") tensor = cast(tensor, DType::kBF16);
    }
  });
  const std::string e = load_error();
  EXPECT_NE(e.find("tensor 'model.layers.1.self_attn.o_proj.weight' has dtype bf16, expected f8_e4m3"),
            std::string::npos) << e;
}

TEST_F(WeightsTest, MissingScaleIsNamed) {
  write_edited(small_config(true), [](auto& t) {
    std::erase_if(t, [](auto& p) { return p.first == "model.layers.0.mlp.down_proj.weight_scale_inv"; });
  });
  EXPECT_NE(load_error().find("missing tensor 'model.layers.0.mlp.down_proj.weight_scale_inv'"),
            std::string::npos);
}

TEST_F(WeightsTest, MissingConfigAndTruncatedFileAreClear) {
  EXPECT_NE(load_error().find("is not a directory"), std::string::npos);
  write_edited(small_config(false), [](auto&) {});
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") - 100);
  const std::string e = load_error();
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  fs::remove(dir_ / "config.json");
  EXPECT_NE(load_error().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace tandem
