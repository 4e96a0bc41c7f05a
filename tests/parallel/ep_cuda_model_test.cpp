// EP=2 with DP attention on 2 GPUs (label cuda; skips with fewer) equals EP=1 on one GPU: a
// small random DeepSeek-V3 (vocab 512, 3 layers, 16 experts top-4, the one in ep_model_test),
// each rank a model instance on its own GPU with only its experts and its own sequences and KV
// cache, MoE layers through the NCCL group and the GPU dispatchers; prefill then 4 greedy decode
// steps. f32 activations on both sides, so the experts run the same per-expert linear kernels:
// greedy tokens identical, logits within 1e-3 (the EP=1 model's experts see all tokens at once,
// the EP=2 ones a rank's share, which can pick another GEMM tiling; measured value printed).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "model/loader.h"
#include "model/presets.h"
#include "model/random_weights.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device.h"
#include "parallel/ep_moe.h"
#include "parallel/nccl_group.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr float kLogitTolerance = 1e-3f;
constexpr int kRanks = 2;
constexpr int64_t kPageSize = 4, kDecodeSteps = 4;

const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 17, 300, 42, 8, 99, 7}, {120, 3, 64}, {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21},
    {400, 401, 2, 77, 9}, {256, 128, 64, 32, 16, 8, 4, 2, 1}};

struct SeqTrace {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> tokens;
};

std::vector<SeqTrace> run_sequences(DeepseekV3Model& model, Device dev, const std::vector<int>& seqs,
                                    const std::function<void(bool, int64_t)>& before_step) {
  const ModelConfig& c = model.config();
  KvCache cache = KvCache::create(c, 64, kPageSize, DType::kF32, dev);
  std::vector<SequenceStep> steps(seqs.size());
  int32_t next_page = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    steps[i].new_tokens = kPrompts[seqs[i]];
    const int64_t len = int64_t(kPrompts[seqs[i]].size()) + kDecodeSteps + 1;
    for (int64_t p = 0; p < (len + kPageSize - 1) / kPageSize; ++p) steps[i].pages.push_back(next_page++);
  }
  std::vector<SeqTrace> traces(seqs.size());
  for (int64_t step = 0; step <= kDecodeSteps; ++step) {
    const bool decode = step > 0;
    const ForwardBatch batch =
        ForwardBatch::build(decode ? ForwardMode::kDecode : ForwardMode::kExtend, steps, kPageSize, dev);
    before_step(decode, batch.num_tokens);
    const Tensor logits = model.forward(batch, cache).to(Device::cpu());
    for (size_t i = 0; i < seqs.size(); ++i) {
      const float* row = logits.data<float>() + int64_t(i) * c.vocab_size;
      traces[i].logits.emplace_back(row, row + c.vocab_size);
      const int32_t next = int32_t(std::max_element(row, row + c.vocab_size) - row);
      traces[i].tokens.push_back(next);
      steps[i].cached_len += int64_t(steps[i].new_tokens.size());
      steps[i].new_tokens = {next};
    }
  }
  return traces;
}

struct Case {
  const char* name;
  bool all_low_latency;       // else prefill normal, decode low_latency
  std::vector<int> rank_of;   // the rank serving each prompt
};

class EpCudaModelTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!ops::cuda::available() || ops::cuda::device_count() < kRanks) {
      GTEST_SKIP() << "needs " << kRanks << " CUDA devices";
    }
    dir_ = fs::temp_directory_path() / ("tandem_ep_cuda_model_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    nlohmann::json c = preset_config_json("tiny");
    c["vocab_size"] = 512;
    c["num_hidden_layers"] = 3;
    make_random_checkpoint(c, {dir_, /*seed=*/11});
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_P(EpCudaModelTest, Ep2OnGpusEqualsEp1OnOneGpu) {
  const Case& param = GetParam();
  LoadedModel ref = load_model(dir_, Device::cuda(0));
  ref.model->set_activation_dtype(DType::kF32);
  std::vector<int> all(kPrompts.size());
  std::iota(all.begin(), all.end(), 0);
  const std::vector<SeqTrace> expected =
      run_sequences(*ref.model, Device::cuda(0), all, [](bool, int64_t) {});
  ref.model.reset();

  std::vector<SeqTrace> got(kPrompts.size());
  const auto status = run_nccl_ranks(kRanks, [&](ProcessGroup& group) {
    const int me = group.rank();
    const Device dev = group.device();
    const ModelConfig config = ModelConfig::from_json_file(dir_ / "config.json");
    const Checkpoint ckpt = Checkpoint::open(dir_);
    const ExpertPlacement placement = ExpertPlacement::contiguous(config.n_routed_experts, kRanks);
    ModelWeights weights = load_weights(config, ckpt, dev, expert_filter(placement, me));
    EpOptions options;
    options.max_dispatch_tokens_per_rank = param.all_low_latency ? 40 : 8;
    options.activation_dtype = DType::kF32;
    EpMoe ep(group, config, weights, placement, options);
    DeepseekV3Model model(config, std::move(weights));
    model.set_activation_dtype(DType::kF32);
    ep.attach(model);
    std::vector<int> mine;
    for (size_t s = 0; s < kPrompts.size(); ++s) {
      if (param.rank_of[s] == me) mine.push_back(int(s));
    }
    auto agree = [&](bool decode, int64_t tokens) {
      ep.set_mode(agree_dispatch_mode(group, param.all_low_latency || decode, tokens,
                                      options.max_dispatch_tokens_per_rank));
    };
    if (mine.empty()) {
      for (int64_t step = 0; step <= kDecodeSteps; ++step) {
        agree(/*decode=*/true, 0);
        ep.idle_step();
      }
      return;
    }
    const std::vector<SeqTrace> traces = run_sequences(model, dev, mine, agree);
    for (size_t i = 0; i < mine.size(); ++i) got[mine[i]] = traces[i];
  });
  for (int r = 0; r < kRanks; ++r) ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r].message();

  float worst = 0.0f;
  for (size_t s = 0; s < kPrompts.size(); ++s) {
    EXPECT_EQ(got[s].tokens, expected[s].tokens) << "sequence " << s;
    ASSERT_EQ(got[s].logits.size(), expected[s].logits.size());
    for (size_t step = 0; step < expected[s].logits.size(); ++step) {
      const std::vector<float>& a = got[s].logits[step];
      const std::vector<float>& b = expected[s].logits[step];
      ASSERT_EQ(a.size(), b.size());
      for (size_t v = 0; v < b.size(); ++v) {
        worst = std::max(worst, std::isnan(a[v]) ? INFINITY : std::fabs(a[v] - b[v]));
      }
    }
  }
  std::printf("%s: EP=2 (GPUs) vs EP=1 (one GPU) max |logit diff| %.3g\n", param.name, worst);
  EXPECT_LE(worst, kLogitTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, EpCudaModelTest,
    ::testing::Values(Case{"prefill_normal_decode_low_latency", false, {0, 0, 1, 1, 0}},
                      Case{"all_low_latency", true, {0, 1, 1, 0, 1}},
                      Case{"rank1_idle", false, {0, 0, 0, 0, 0}}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tandem
