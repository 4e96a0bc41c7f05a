// The EP=4 forward of a small random DeepSeek-V3 model equals the EP=1 forward. Four in-process
// ranks with DP attention: each runs its own sequences with its own KV cache (rank 3 has none
// and joins every MoE layer through idle steps); their MoE layers dispatch to the ranks owning
// the experts. The production policy runs prefill steps through the normal dispatcher and
// decode steps through low_latency; two more runs force one mode for every step.
//
// Tolerance: max |logit - EP=1 logit| <= 1e-4 with logits of std ~1. A token's expert outputs
// are the same to the bit wherever they run (row-independent kernels); only the normal
// combine's summation order differs (per-rank partial sums, then across ranks), a few fp32 ulps
// per MoE layer that later layers and the KV cache carry (measured ~1e-6, printed). The
// low_latency combine adds in the single-rank model's order, so an all-low_latency run must be
// bitwise equal, in f32 and in bf16 activations. A misrouted token, a wrong weight or a lost
// expert moves logits by 1e-2 or more.
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
#include "parallel/ep_moe.h"
#include "parallel/in_process_group.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr float kLogitTolerance = 1e-4f;
constexpr int kRanks = 4;
constexpr int64_t kPageSize = 4, kDecodeSteps = 4;

// Sequence prompts and the rank that serves each (DP attention); rank 3 serves none.
const std::vector<std::vector<int32_t>> kPrompts = {
    {5, 17, 300, 42, 8, 99, 7}, {120, 3, 64}, {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21},
    {400, 401, 2, 77, 9}, {256, 128, 64, 32, 16, 8, 4, 2, 1}};
const std::vector<int> kRankOf = {0, 0, 1, 2, 2};

class EpModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("tandem_ep_model_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    nlohmann::json c = preset_config_json("tiny");
    c["vocab_size"] = 512;
    c["num_hidden_layers"] = 3;  // one dense layer, two MoE layers
    make_random_checkpoint(c, {dir_, /*seed=*/11});
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
};
fs::path EpModelTest::dir_;

// What one sequence saw: logits of each step (prefill's last token, then each decode) and the
// greedy tokens.
struct SeqTrace {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> tokens;
};

int32_t argmax(const float* row, int64_t n) {
  return int32_t(std::max_element(row, row + n) - row);
}

// Prefill, then kDecodeSteps greedy decode steps, of `seqs` (indices into kPrompts) in one batch
// per step on `model`. `before_step(decode, tokens)` runs before every forward.
std::vector<SeqTrace> run_sequences(DeepseekV3Model& model, const std::vector<int>& seqs,
                                    const std::function<void(bool, int64_t)>& before_step) {
  const ModelConfig& c = model.config();
  KvCache cache = KvCache::create(c, 64, kPageSize, DType::kF32);
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
        ForwardBatch::build(decode ? ForwardMode::kDecode : ForwardMode::kExtend, steps, kPageSize);
    before_step(decode, batch.num_tokens);
    const Tensor logits = model.forward(batch, cache);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const float* row = logits.data<float>() + int64_t(i) * c.vocab_size;
      traces[i].logits.emplace_back(row, row + c.vocab_size);
      const int32_t next = argmax(row, c.vocab_size);
      traces[i].tokens.push_back(next);
      steps[i].cached_len += int64_t(steps[i].new_tokens.size());
      steps[i].new_tokens = {next};
    }
  }
  return traces;
}

// A rank loads only the experts the placement gives it; the rest of the model is complete.
TEST_F(EpModelTest, RankLoadsOnlyItsExperts) {
  const ModelConfig config = ModelConfig::from_json_file(dir_ / "config.json");
  const Checkpoint ckpt = Checkpoint::open(dir_);
  const ExpertPlacement placement = ExpertPlacement::contiguous(config.n_routed_experts, kRanks);
  const ModelWeights w = load_weights(config, ckpt, Device::cpu(), expert_filter(placement, 1));
  for (const LayerWeights& layer : w.layers) {
    if (!layer.is_moe) continue;
    ASSERT_EQ(int64_t(layer.moe.experts.size()), config.n_routed_experts);
    for (int64_t g = 0; g < config.n_routed_experts; ++g) {
      EXPECT_EQ(layer.moe.experts[g].down_proj.weight.defined(), g >= 4 && g < 8) << "expert " << g;
    }
    EXPECT_TRUE(layer.moe.shared.gate_proj.weight.defined());
    EXPECT_TRUE(layer.moe.gate.weight.defined());
  }
}

enum class Policy { kPrefillNormalDecodeLowLatency, kAllNormal, kAllLowLatency };

struct EpCase {
  const char* name;
  Policy policy;
  DType activations;
};

void PrintTo(const EpCase& c, std::ostream* os) { *os << c.name; }

class EpModelCaseTest : public EpModelTest, public ::testing::WithParamInterface<EpCase> {};

TEST_P(EpModelCaseTest, Ep4WithDpAttentionEqualsEp1) {
  const EpCase& param = GetParam();
  // EP=1: the plain model, every sequence in one batch.
  LoadedModel ref = load_model(dir_);
  ref.model->set_activation_dtype(param.activations);
  std::vector<int> all(kPrompts.size());
  std::iota(all.begin(), all.end(), 0);
  const std::vector<SeqTrace> expected = run_sequences(*ref.model, all, [](bool, int64_t) {});

  // EP=4: each rank loads only its experts and runs only its sequences.
  std::vector<SeqTrace> got(kPrompts.size());
  std::vector<std::vector<DispatchMode>> modes(kRanks);
  InProcessWorld world(kRanks);
  const auto status = world.run([&](ProcessGroup& group) {
    const int me = group.rank();
    const ModelConfig config = ModelConfig::from_json_file(dir_ / "config.json");
    const Checkpoint ckpt = Checkpoint::open(dir_);
    const ExpertPlacement placement = ExpertPlacement::contiguous(config.n_routed_experts, kRanks);
    ModelWeights weights = load_weights(config, ckpt, Device::cpu(), expert_filter(placement, me));
    EpOptions options;
    // Decode batches are at most 2 per rank; forcing low_latency on prefill needs room for 14.
    options.max_dispatch_tokens_per_rank = param.policy == Policy::kAllLowLatency ? 16 : 8;
    options.activation_dtype = param.activations;
    EpMoe ep(group, config, weights, placement, options);
    DeepseekV3Model model(config, std::move(weights));
    model.set_activation_dtype(param.activations);
    ep.attach(model);

    std::vector<int> mine;
    for (size_t s = 0; s < kPrompts.size(); ++s) {
      if (kRankOf[s] == me) mine.push_back(int(s));
    }
    // Every rank takes part in choosing the step's mode, idle ones included.
    auto agree = [&](bool decode, int64_t tokens) {
      const bool want_low_latency = param.policy == Policy::kAllLowLatency ||
                                    (param.policy == Policy::kPrefillNormalDecodeLowLatency && decode);
      ep.set_mode(agree_dispatch_mode(group, want_low_latency, tokens,
                                      options.max_dispatch_tokens_per_rank));
      modes[me].push_back(ep.mode());
    };
    if (mine.empty()) {  // no requests: serve the experts for every step of the others
      for (int64_t step = 0; step <= kDecodeSteps; ++step) {
        agree(/*decode=*/param.policy != Policy::kAllNormal, 0);
        ep.idle_step();
      }
      return;
    }
    const std::vector<SeqTrace> traces = run_sequences(model, mine, agree);
    for (size_t i = 0; i < mine.size(); ++i) got[mine[i]] = traces[i];
  });
  for (int r = 0; r < kRanks; ++r) ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r].message();

  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(int64_t(modes[r].size()), kDecodeSteps + 1);
    for (int64_t step = 0; step <= kDecodeSteps; ++step) {
      const DispatchMode want =
          param.policy == Policy::kAllNormal ? DispatchMode::kNormal
          : param.policy == Policy::kAllLowLatency ? DispatchMode::kLowLatency
          : step == 0 ? DispatchMode::kNormal : DispatchMode::kLowLatency;
      EXPECT_EQ(modes[r][step], want) << "rank " << r << " step " << step;
    }
  }
  float worst_prefill = 0.0f, worst_decode = 0.0f;
  bool bitwise = true;
  for (size_t s = 0; s < kPrompts.size(); ++s) {
    EXPECT_EQ(got[s].tokens, expected[s].tokens) << "sequence " << s;
    ASSERT_EQ(got[s].logits.size(), expected[s].logits.size());
    for (size_t step = 0; step < expected[s].logits.size(); ++step) {
      const std::vector<float>& a = got[s].logits[step];
      const std::vector<float>& b = expected[s].logits[step];
      ASSERT_EQ(a.size(), b.size());
      bitwise &= std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
      float& worst = step == 0 ? worst_prefill : worst_decode;
      for (size_t v = 0; v < b.size(); ++v) {
        worst = std::max(worst, std::isnan(a[v]) ? INFINITY : std::fabs(a[v] - b[v]));
      }
    }
  }
  std::printf("%s: EP=4 vs EP=1 max |logit diff| prefill %.3g, decode %.3g%s\n", param.name,
              worst_prefill, worst_decode, bitwise ? " (bitwise equal)" : "");
  EXPECT_LE(worst_prefill, kLogitTolerance);
  EXPECT_LE(worst_decode, kLogitTolerance);
  if (param.policy == Policy::kAllLowLatency) {
    EXPECT_TRUE(bitwise);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Policies, EpModelCaseTest,
    ::testing::Values(
        EpCase{"prefill_normal_decode_low_latency", Policy::kPrefillNormalDecodeLowLatency, DType::kF32},
        EpCase{"all_normal", Policy::kAllNormal, DType::kF32},
        EpCase{"all_low_latency", Policy::kAllLowLatency, DType::kF32},
        EpCase{"all_low_latency_bf16", Policy::kAllLowLatency, DType::kBF16}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tandem
