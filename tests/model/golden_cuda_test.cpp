// The golden comparisons of golden_test.cpp with the model on the GPU (Device::cuda(0)):
// weights, KV cache, batch tensors and every op on CUDA, logits copied back and compared with
// Hugging Face transformers' outputs. f32 activations and accumulation, so the CPU test's
// tolerance holds (1e-4 on logits of std ~1). Skips where no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "model/loader.h"
#include "ops/cuda/cuda_ops.h"

namespace tandem {
namespace {

constexpr float kLogitTolerance = 1e-4f;
const std::string kGoldenDir = std::string(TANDEM_SOURCE_DIR) + "/tests/data/golden/";
const Device kGpu = Device::cuda(0);

struct Golden {
  LoadedModel model;
  std::shared_ptr<Checkpoint> ref;
  std::vector<int32_t> ids(int i) const {
    Tensor t = ref->get("input_ids_" + std::to_string(i));
    return {t.data<int32_t>(), t.data<int32_t>() + t.numel()};
  }
  Tensor logits(int i) const { return ref->get("logits_" + std::to_string(i)); }
};

Golden load_golden(const std::string& variant) {
  Golden g{load_model(kGoldenDir + variant, kGpu), nullptr};
  g.ref = std::make_shared<Checkpoint>(Checkpoint::open(kGoldenDir + variant + "/golden.safetensors"));
  return g;
}

// Max |a[r] - ref[ref_row0 + r]| over rows of a (a on any device).
float max_abs_diff(const Tensor& a_any, const Tensor& ref, int64_t ref_row0) {
  const Tensor a = a_any.to(Device::cpu()).contiguous();
  float worst = 0.0f;
  const int64_t cols = a.size(1);
  for (int64_t r = 0; r < a.size(0); ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      const float x = a.data<float>()[r * cols + j];
      const float y = ref.data<float>()[(ref_row0 + r) * cols + j];
      if (std::isnan(x) || std::isnan(y)) return INFINITY;
      worst = std::max(worst, std::fabs(x - y));
    }
  }
  return worst;
}

std::vector<int32_t> pages_for(int64_t tokens, int64_t page_size, int32_t first_page) {
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < (tokens + page_size - 1) / page_size; ++p) pages.push_back(first_page + 2 * int32_t(p));
  return pages;
}

class GoldenCudaTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!ops::cuda::available()) GTEST_SKIP() << "no CUDA device: the GPU golden test needs a GPU";
  }
};

TEST_P(GoldenCudaTest, PrefillLogitsMatchReference) {
  Golden g = load_golden(GetParam());
  const int64_t page_size = 4;
  KvCache cache = KvCache::create(g.model.config, 32, page_size, DType::kF32, kGpu);
  std::vector<SequenceStep> seqs(2);
  for (int i = 0; i < 2; ++i) {
    seqs[i].new_tokens = g.ids(i);
    seqs[i].pages = pages_for(int64_t(seqs[i].new_tokens.size()), page_size, i);
    seqs[i].need_all_logits = true;
  }
  Tensor logits = g.model.model->forward(
      ForwardBatch::build(ForwardMode::kExtend, seqs, page_size, kGpu), cache).to(Device::cpu());
  const int64_t n0 = int64_t(seqs[0].new_tokens.size());
  ASSERT_EQ(logits.size(0), n0 + int64_t(seqs[1].new_tokens.size()));
  const float d0 = max_abs_diff(logits.slice(0, 0, n0), g.logits(0), 0);
  const float d1 = max_abs_diff(logits.slice(0, n0, logits.size(0)), g.logits(1), 0);
  std::printf("GOLDEN %s prefill: max |logit diff| prompt0 %.3g, prompt1 %.3g\n",
              GetParam().c_str(), d0, d1);
  EXPECT_LE(d0, kLogitTolerance);
  EXPECT_LE(d1, kLogitTolerance);
}

TEST_P(GoldenCudaTest, ChunkedPrefillAndDecodeMatchFullPrefill) {
  Golden g = load_golden(GetParam());
  const std::vector<int32_t> ids = g.ids(0);
  const Tensor ref = g.logits(0);
  const int64_t page_size = 3, n = int64_t(ids.size());
  KvCache cache = KvCache::create(g.model.config, 64, page_size, DType::kF32, kGpu);
  SequenceStep seq;
  seq.pages = pages_for(n, page_size, 1);
  seq.need_all_logits = true;
  const int64_t first = 5, second = 11;
  seq.new_tokens.assign(ids.begin(), ids.begin() + first);
  float worst = 0.0f;
  Tensor l0 = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size, kGpu), cache);
  worst = std::max(worst, max_abs_diff(l0, ref, 0));
  EXPECT_LE(max_abs_diff(l0, ref, 0), kLogitTolerance);
  seq.cached_len = first;
  seq.new_tokens.assign(ids.begin() + first, ids.begin() + second);
  Tensor l1 = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size, kGpu), cache);
  worst = std::max(worst, max_abs_diff(l1, ref, first));
  EXPECT_LE(max_abs_diff(l1, ref, first), kLogitTolerance);
  for (int64_t pos = second; pos < n; ++pos) {
    seq.cached_len = pos;
    seq.new_tokens = {ids[pos]};
    Tensor l = g.model.model->forward(ForwardBatch::build(ForwardMode::kDecode, {seq}, page_size, kGpu), cache);
    const float d = max_abs_diff(l, ref, pos);
    worst = std::max(worst, d);
    EXPECT_LE(d, kLogitTolerance) << "decode at position " << pos;
  }
  std::printf("GOLDEN %s chunked+decode: max |logit diff| %.3g\n", GetParam().c_str(), worst);
}

TEST_P(GoldenCudaTest, GreedyTokensMatchReference) {
  Golden g = load_golden(GetParam());
  const int64_t page_size = 16;
  KvCache cache = KvCache::create(g.model.config, 4, page_size, DType::kF32, kGpu);
  SequenceStep seq;
  seq.new_tokens = g.ids(1);
  seq.pages = {2, 0, 3};
  Tensor expected = g.ref->get("greedy_1");
  std::vector<int32_t> got;
  auto argmax = [](const Tensor& l_any) {
    const Tensor l = l_any.to(Device::cpu());
    const float* p = l.data<float>();
    return int32_t(std::max_element(p, p + l.size(1)) - p);
  };
  Tensor logits = g.model.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, page_size, kGpu), cache);
  got.push_back(argmax(logits));
  seq.cached_len = int64_t(seq.new_tokens.size());
  while (int64_t(got.size()) < expected.numel()) {
    seq.new_tokens = {got.back()};
    logits = g.model.model->forward(ForwardBatch::build(ForwardMode::kDecode, {seq}, page_size, kGpu), cache);
    ++seq.cached_len;
    got.push_back(argmax(logits));
  }
  EXPECT_EQ(got, std::vector<int32_t>(expected.data<int32_t>(),
                                      expected.data<int32_t>() + expected.numel()));
}

INSTANTIATE_TEST_SUITE_P(Variants, GoldenCudaTest,
                         ::testing::Values("v3", "v2lite", "v3_fp8", "v2lite_group"));

}  // namespace
}  // namespace tandem
