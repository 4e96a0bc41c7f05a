// The forward pass against Hugging Face transformers' own outputs (tests/data/golden, made by
// tools/golden/make_golden.py): fp32 reference over the stored bf16 (or dequantized fp8)
// weights, so the only differences are fp32 summation order.
//
// Tolerance: max |logit - reference| <= 1e-4 with logits of std ~1 (measured: about 5e-6).
// fp32 summation order explains that; any wrong op (RoPE layout, YaRN, a routing choice, a scale)
// moves logits by 0.05 or more, so the bound separates the two with a wide margin.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "model/loader.h"
#include "tests/model/golden_util.h"

namespace tandem {
namespace {

constexpr float kLogitTolerance = 1e-4f;
using golden::Golden;
using golden::max_abs_diff;
using golden::pages_for;
using golden::load_golden;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

// Both prompts prefilled in one batch; every position's logits compared.
TEST_P(GoldenTest, PrefillLogitsMatchReference) {
  Golden g = load_golden(GetParam());
  const int64_t page_size = 4;
  KvCache cache = KvCache::create(g.model.config, 32, page_size, DType::kF32);
  std::vector<SequenceStep> seqs(2);
  for (int i = 0; i < 2; ++i) {
    seqs[i].new_tokens = g.ids(i);
    seqs[i].pages = pages_for(int64_t(seqs[i].new_tokens.size()), page_size, i);
    seqs[i].need_all_logits = true;
  }
  Tensor logits = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, seqs, page_size), cache);
  const int64_t n0 = int64_t(seqs[0].new_tokens.size());
  ASSERT_EQ(logits.size(0), n0 + int64_t(seqs[1].new_tokens.size()));
  const float d0 = max_abs_diff(logits.slice(0, 0, n0).contiguous(), g.logits(0), 0);
  const float d1 = max_abs_diff(logits.slice(0, n0, logits.size(0)).contiguous(), g.logits(1), 0);
  std::printf("%s: max |logit diff| prompt0 %.3g, prompt1 %.3g\n", GetParam().c_str(), d0, d1);
  EXPECT_LE(d0, kLogitTolerance);
  EXPECT_LE(d1, kLogitTolerance);
}

// Prefill a few tokens, then a chunked-prefill step, then decode one token at a time (absorbed
// MLA over the paged cache): each step's logits equal the reference's at that position.
TEST_P(GoldenTest, ChunkedPrefillAndDecodeMatchFullPrefill) {
  Golden g = load_golden(GetParam());
  const std::vector<int32_t> ids = g.ids(0);
  const Tensor ref = g.logits(0);
  const int64_t page_size = 3, n = int64_t(ids.size());
  KvCache cache = KvCache::create(g.model.config, 64, page_size, DType::kF32);
  SequenceStep seq;
  seq.pages = pages_for(n, page_size, 1);
  seq.need_all_logits = true;
  const int64_t first = 5, second = 11;  // prefill [0,5), chunk [5,11), then decode
  seq.new_tokens.assign(ids.begin(), ids.begin() + first);
  Tensor l0 = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size), cache);
  EXPECT_LE(max_abs_diff(l0, ref, 0), kLogitTolerance);
  seq.cached_len = first;
  seq.new_tokens.assign(ids.begin() + first, ids.begin() + second);
  Tensor l1 = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size), cache);
  EXPECT_LE(max_abs_diff(l1, ref, first), kLogitTolerance);
  for (int64_t pos = second; pos < n; ++pos) {
    seq.cached_len = pos;
    seq.new_tokens = {ids[pos]};
    Tensor l = g.model.model->forward(ForwardBatch::build(ForwardMode::kDecode, {seq}, page_size), cache);
    EXPECT_LE(max_abs_diff(l, ref, pos), kLogitTolerance) << "decode at position " << pos;
  }
}

// Greedy decoding of prompt 1 gives the reference's 8 tokens.
TEST_P(GoldenTest, GreedyTokensMatchReference) {
  Golden g = load_golden(GetParam());
  const int64_t page_size = 16;
  KvCache cache = KvCache::create(g.model.config, 4, page_size, DType::kF32);
  SequenceStep seq;
  seq.new_tokens = g.ids(1);
  seq.pages = {2, 0, 3};
  Tensor expected = g.ref->get("greedy_1");
  std::vector<int32_t> got;
  auto argmax = [](const Tensor& l) {
    const float* p = l.data<float>();
    return int32_t(std::max_element(p, p + l.size(1)) - p);
  };
  Tensor logits = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size), cache);
  got.push_back(argmax(logits));
  seq.cached_len = int64_t(seq.new_tokens.size());
  while (int64_t(got.size()) < expected.numel()) {
    seq.new_tokens = {got.back()};
    logits = g.model.model->forward(ForwardBatch::build(ForwardMode::kDecode, {seq}, page_size), cache);
    ++seq.cached_len;
    got.push_back(argmax(logits));
  }
  EXPECT_EQ(got, std::vector<int32_t>(expected.data<int32_t>(),
                                      expected.data<int32_t>() + expected.numel()));
}

// Layer by layer: each layer's output hidden state and the experts each MoE layer picks
// (ids exactly, as sets; weights to fp32 rounding) equal the reference's for prompt 1.
TEST_P(GoldenTest, IntermediatesMatchReferenceLayerByLayer) {
  Golden g = load_golden(GetParam());
  std::map<std::string, Tensor> seen;
  g.model.model->on_intermediate = [&](const std::string& n, const Tensor& t) {
    seen[n] = t.to(Device::cpu()).contiguous();
  };
  KvCache cache = KvCache::create(g.model.config, 8, 4, DType::kF32);
  SequenceStep seq;
  seq.new_tokens = g.ids(1);
  seq.pages = {0, 1, 2};
  g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, 4), cache);
  const Tensor hidden = g.ref->get("hidden_1");  // [layers + 1, T, H]: layer outputs, final norm
  const int64_t layers = g.model.config.num_hidden_layers, t = hidden.size(1), h = hidden.size(2);
  for (int64_t l = 0; l <= layers; ++l) {
    const std::string key = l < layers ? "layer" + std::to_string(l) + ".hidden" : "final_norm";
    ASSERT_TRUE(seen.count(key)) << key;
    const Tensor ref = hidden.select(0, l).contiguous();
    float worst = 0.0f, scale = 0.0f;
    for (int64_t i = 0; i < t * h; ++i) {
      worst = std::max(worst, std::fabs(seen[key].data<float>()[i] - ref.data<float>()[i]));
      scale = std::max(scale, std::fabs(ref.data<float>()[i]));
    }
    EXPECT_LE(worst, 1e-5f * std::max(1.0f, scale)) << key;
  }
  for (int64_t l = g.model.config.first_k_dense_replace; l < layers; ++l) {
    const std::string tag = "layer" + std::to_string(l);
    const Tensor ref_ids = g.ref->get("topk_ids_1_" + tag), ref_w = g.ref->get("topk_weights_1_" + tag);
    const Tensor& ids = seen[tag + ".topk_ids"];
    const Tensor& w = seen[tag + ".topk_weights"];
    const int64_t k = ids.size(1);
    for (int64_t r = 0; r < ids.size(0); ++r) {
      // Reference ids are sorted ascending with their weights; compare as sorted pairs.
      std::vector<std::pair<int32_t, float>> mine;
      for (int64_t j = 0; j < k; ++j) mine.emplace_back(ids.data<int32_t>()[r * k + j], w.data<float>()[r * k + j]);
      std::sort(mine.begin(), mine.end());
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_EQ(mine[j].first, ref_ids.data<int32_t>()[r * k + j]) << tag << " token " << r;
        EXPECT_NEAR(mine[j].second, ref_w.data<float>()[r * k + j], 1e-5f) << tag << " token " << r;
      }
    }
  }
}

// The comparison can fail: the same weights with the RoPE pairs taken as halves, or without
// the YaRN softmax correction, land far outside the tolerance.
TEST(GoldenSensitivity, WrongRopeLayoutOrScaleIsDetected) {
  Golden g = load_golden("v3");
  for (int variant = 0; variant < 2; ++variant) {
    ModelConfig wrong = g.model.config;
    if (variant == 0) wrong.rope_interleave = false;
    if (variant == 1) wrong.rope_scaling.mscale_all_dim = 0.0;
    DeepseekV3Model model(wrong, load_weights(wrong, *g.model.checkpoint));
    KvCache cache = KvCache::create(wrong, 16, 4, DType::kF32);
    SequenceStep seq;
    seq.new_tokens = g.ids(0);
    seq.pages = pages_for(int64_t(seq.new_tokens.size()), 4, 0);
    seq.need_all_logits = true;
    Tensor logits = model.forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, 4), cache);
    EXPECT_GT(max_abs_diff(logits, g.logits(0), 0), 50 * kLogitTolerance) << "variant " << variant;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GoldenTest,
                         ::testing::Values("v3", "v2lite", "v3_fp8", "v2lite_group"));

}  // namespace
}  // namespace tandem
