// `--load-format dummy` on the GPU (needs one; skips without): ops::fill_random's CUDA twin
// gives the CPU's bits for every dtype, and load_dummy_weights on CUDA makes, on the device,
// exactly the weights it makes on the CPU (which equal make-model's, weights_test).
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>

#include "core/log.h"
#include "model/presets.h"
#include "model/weights.h"
#include "ops/cuda/cuda_ops.h"

namespace tandem {
namespace {

const Device kGpu = Device::cuda(0);

// Byte-wise equality of a GPU tensor with a CPU one; reports the first differing byte.
void expect_same_bytes(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  ASSERT_EQ(gpu.defined(), cpu.defined()) << what;
  if (!cpu.defined()) return;
  ASSERT_EQ(gpu.device(), kGpu) << what << ": made on " << gpu.device().name();
  ASSERT_EQ(gpu.shape(), cpu.shape()) << what;
  ASSERT_EQ(gpu.dtype(), cpu.dtype()) << what;
  const Tensor back = gpu.to(Device::cpu());
  const auto* a = static_cast<const uint8_t*>(back.raw_data());
  const auto* b = static_cast<const uint8_t*>(cpu.raw_data());
  for (size_t i = 0; i < cpu.nbytes(); ++i) {
    ASSERT_EQ(a[i], b[i]) << what << ": byte " << i << " of " << cpu.nbytes();
  }
}

void expect_same(const LinearWeight& g, const LinearWeight& c, const std::string& what) {
  expect_same_bytes(g.weight, c.weight, what);
  expect_same_bytes(g.scale_inv, c.scale_inv, what + " scale_inv");
}

class DummyCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(DummyCuda, FillRandomMatchesCpuBitwise) {
  struct Case {
    DType dtype;
    float amplitude, offset;
  };
  // Full-range fp8 codes (the CPU's table path), fp8 through the generic conversion (with
  // saturation: amplitude 600 > 448), bf16 and f32 with an offset (norms).
  const Case cases[] = {{DType::kF8E4M3, kFp8E4M3Max, 0.0f},
                        {DType::kF8E4M3, 600.0f, 3.0f},
                        {DType::kBF16, 0.0216f, 0.0f},
                        {DType::kBF16, 0.17f, 1.0f},
                        {DType::kF32, 0.1f, -0.5f}};
  uint64_t key = std::chrono::steady_clock::now().time_since_epoch().count();  // fresh keys
  for (const Case& c : cases) {
    for (const Shape& shape : {Shape{1}, Shape{3}, Shape{7, 129}, Shape{1000, 517}, Shape{0, 4}}) {
      ++key;
      Tensor cpu = Tensor::empty(shape, c.dtype);
      ops::fill_random(cpu, key, c.amplitude, c.offset);
      Tensor gpu = Tensor::empty(shape, c.dtype, kGpu);
      ops::fill_random(gpu, key, c.amplitude, c.offset);
      expect_same_bytes(gpu, cpu,
                        std::string(dtype_name(c.dtype)) + " " + shape_str(shape) + " key " +
                            std::to_string(key));
    }
  }
  Tensor strided = Tensor::empty({8, 8}, DType::kBF16, kGpu).slice(1, 0, 4);
  EXPECT_THROW(ops::fill_random(strided, 1, 1.0f, 0.0f), Error);
  Tensor ints = Tensor::empty({8}, DType::kI32, kGpu);
  EXPECT_THROW(ops::fill_random(ints, 1, 1.0f, 0.0f), Error);
}

// Every weight of a small fp8 and bf16 model: generated on the GPU, equal to the CPU's.
TEST_F(DummyCuda, DummyWeightsOnGpuEqualCpu) {
  for (bool fp8 : {false, true}) {
    nlohmann::json j = preset_config_json("tiny");
    j["vocab_size"] = 512;
    j["num_hidden_layers"] = 2;
    if (fp8) {
      j["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                  {"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
    }
    const ModelConfig config = ModelConfig::from_json_string(j.dump(), "tiny");
    const ModelWeights c = load_dummy_weights(config, 5, Device::cpu());
    const ModelWeights g = load_dummy_weights(config, 5, kGpu);
    const std::string tag = fp8 ? "fp8 " : "bf16 ";
    expect_same_bytes(g.embed_tokens, c.embed_tokens, tag + "embed_tokens");
    expect_same_bytes(g.norm, c.norm, tag + "norm");
    expect_same(g.lm_head, c.lm_head, tag + "lm_head");
    ASSERT_EQ(g.layers.size(), c.layers.size());
    for (size_t l = 0; l < c.layers.size(); ++l) {
      const LayerWeights &gl = g.layers[l], &cl = c.layers[l];
      const std::string p = tag + "layer " + std::to_string(l) + " ";
      expect_same_bytes(gl.input_layernorm, cl.input_layernorm, p + "input_layernorm");
      expect_same(gl.attn.q_a_proj, cl.attn.q_a_proj, p + "q_a_proj");
      expect_same(gl.attn.q_b_proj, cl.attn.q_b_proj, p + "q_b_proj");
      expect_same(gl.attn.q_proj, cl.attn.q_proj, p + "q_proj");
      expect_same(gl.attn.kv_a_proj_with_mqa, cl.attn.kv_a_proj_with_mqa, p + "kv_a");
      expect_same(gl.attn.kv_b_proj, cl.attn.kv_b_proj, p + "kv_b");
      expect_same(gl.attn.o_proj, cl.attn.o_proj, p + "o_proj");
      expect_same_bytes(gl.attn.w_uk_t.weight, cl.attn.w_uk_t.weight, p + "w_uk_t");
      expect_same_bytes(gl.attn.w_uv.weight, cl.attn.w_uv.weight, p + "w_uv");
      ASSERT_EQ(gl.attn.w_uk_t.scale_inv.defined(), cl.attn.w_uk_t.scale_inv.defined()) << p;
      if (cl.attn.w_uk_t.scale_inv.defined()) {
        expect_same_bytes(gl.attn.w_uk_t.scale_inv, cl.attn.w_uk_t.scale_inv, p + "w_uk_t scales");
        expect_same_bytes(gl.attn.w_uv.scale_inv, cl.attn.w_uv.scale_inv, p + "w_uv scales");
      }
      if (!cl.is_moe) {
        expect_same(gl.mlp.gate_proj, cl.mlp.gate_proj, p + "mlp.gate");
        expect_same(gl.mlp.down_proj, cl.mlp.down_proj, p + "mlp.down");
        continue;
      }
      expect_same(gl.moe.gate, cl.moe.gate, p + "router");
      expect_same_bytes(gl.moe.e_score_correction_bias, cl.moe.e_score_correction_bias,
                        p + "correction bias");
      ASSERT_EQ(gl.moe.experts.size(), cl.moe.experts.size());
      for (size_t e = 0; e < cl.moe.experts.size(); ++e) {
        const std::string pe = p + "expert " + std::to_string(e) + " ";
        expect_same(gl.moe.experts[e].gate_proj, cl.moe.experts[e].gate_proj, pe + "gate");
        expect_same(gl.moe.experts[e].up_proj, cl.moe.experts[e].up_proj, pe + "up");
        expect_same(gl.moe.experts[e].down_proj, cl.moe.experts[e].down_proj, pe + "down");
      }
      expect_same(gl.moe.shared.up_proj, cl.moe.shared.up_proj, p + "shared up");
    }
  }
}

}  // namespace
}  // namespace tandem
