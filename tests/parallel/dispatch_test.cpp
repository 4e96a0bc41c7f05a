// Dispatch/combine of both modes over 4 in-process ranks against a single-rank reference:
// uneven expert loads, ranks with no tokens, tokens whose top-k all land on one rank. The
// per-expert layout must match bitwise (rows of expert g: every rank's tokens routed to g, by
// source rank then token); the combined sum within fp32 rounding for normal (it adds per-rank
// partial sums) and bitwise for low_latency (same order as the model's single-rank loop).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "ops/ops.h"
#include "parallel/dispatcher.h"
#include "parallel/ep_moe.h"
#include "parallel/in_process_group.h"

namespace tandem {
namespace {

constexpr int kRanks = 4;
constexpr int64_t kExperts = 16, kTopK = 4, kHidden = 40;

enum class Routing { kSkewed, kOneRank };

struct RankInput {
  Tensor x, ids, weights;
  int64_t tokens() const { return x.size(0); }
};

std::vector<RankInput> make_inputs(const std::vector<int64_t>& tokens, Routing routing,
                                   uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  // Skewed: expert g drawn with weight 1 / (1 + g)^1.5, so the low experts (rank 0) are hot.
  std::vector<double> popularity(kExperts);
  for (int64_t g = 0; g < kExperts; ++g) popularity[g] = 1.0 / std::pow(1.0 + double(g), 1.5);
  std::vector<RankInput> inputs;
  for (int64_t t_count : tokens) {
    RankInput in{Tensor::empty({t_count, kHidden}, DType::kF32),
                 Tensor::empty({t_count, kTopK}, DType::kI32),
                 Tensor::empty({t_count, kTopK}, DType::kF32)};
    for (int64_t i = 0; i < t_count * kHidden; ++i) in.x.data<float>()[i] = normal(rng);
    for (int64_t t = 0; t < t_count; ++t) {
      std::vector<int32_t> chosen;
      if (routing == Routing::kOneRank) {  // a random rank's experts, shuffled
        const int64_t per_rank = kExperts / kRanks, r = rng() % kRanks;
        for (int64_t e = 0; e < per_rank; ++e) chosen.push_back(int32_t(r * per_rank + e));
        std::shuffle(chosen.begin(), chosen.end(), rng);
        chosen.resize(kTopK);
      } else {
        std::vector<double> p = popularity;
        while (int64_t(chosen.size()) < kTopK) {
          std::discrete_distribution<int> pick(p.begin(), p.end());
          const int g = pick(rng);
          chosen.push_back(g);
          p[g] = 0.0;
        }
      }
      for (int64_t j = 0; j < kTopK; ++j) {
        in.ids.data<int32_t>()[t * kTopK + j] = chosen[j];
        in.weights.data<float>()[t * kTopK + j] = uniform(rng);
      }
    }
    inputs.push_back(std::move(in));
  }
  return inputs;
}

// The test's "expert" g: y = x * (0.5 + 0.1 g) + 0.01 g, elementwise in f32 (same on any rank).
void fake_expert(int64_t g, const Tensor& x, Tensor y) {
  for (int64_t r = 0; r < x.size(0); ++r) {
    for (int64_t d = 0; d < kHidden; ++d) {
      y.data<float>()[r * y.stride(0) + d] =
          x.data<float>()[r * x.stride(0) + d] * (0.5f + 0.1f * float(g)) + 0.01f * float(g);
    }
  }
}

// Single-rank reference of the routed sum, in ascending expert order per token (the model's).
Tensor reference_combine(const RankInput& in) {
  Tensor out = Tensor::zeros({in.tokens(), kHidden}, DType::kF32);
  for (int64_t g = 0; g < kExperts; ++g) {
    std::vector<int32_t> rows;
    std::vector<float> ws;
    for (int64_t t = 0; t < in.tokens(); ++t) {
      for (int64_t j = 0; j < kTopK; ++j) {
        if (in.ids.data<int32_t>()[t * kTopK + j] != g) continue;
        rows.push_back(int32_t(t));
        ws.push_back(in.weights.data<float>()[t * kTopK + j]);
      }
    }
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    Tensor index = Tensor::from_vector(rows, {n});
    Tensor xe = Tensor::empty({n, kHidden}, DType::kF32), ye = Tensor::empty({n, kHidden}, DType::kF32);
    ops::gather_rows(in.x, index, xe);
    fake_expert(g, xe, ye);
    ops::scatter_add_rows(ye, index, Tensor::from_vector(ws, {n}), out);
  }
  return out;
}

// Rows expert g must receive: every rank's tokens routed to g, by source rank then token.
Tensor reference_rows(const std::vector<RankInput>& inputs, int64_t g) {
  std::vector<float> rows;
  for (const RankInput& in : inputs) {
    for (int64_t t = 0; t < in.tokens(); ++t) {
      for (int64_t j = 0; j < kTopK; ++j) {
        if (in.ids.data<int32_t>()[t * kTopK + j] != g) continue;
        const float* x = in.x.data<float>() + t * kHidden;
        rows.insert(rows.end(), x, x + kHidden);
      }
    }
  }
  return Tensor::from_vector(rows, {int64_t(rows.size()) / kHidden, kHidden});
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.raw_data(), bc.raw_data(), ac.nbytes()) == 0;
}

struct RankResult {
  std::vector<Tensor> expert_rows;  // [local experts], cloned
  std::vector<int64_t> counts;
  Tensor combined;
};

// Runs `rounds` dispatch/combine rounds (fresh inputs each) over kRanks ranks and checks every
// round against the references.
void run_and_check(DispatchMode mode, const std::vector<std::vector<int64_t>>& rounds,
                   Routing routing, int64_t max_tokens = 32) {
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  std::vector<std::vector<RankInput>> inputs;
  for (size_t i = 0; i < rounds.size(); ++i) inputs.push_back(make_inputs(rounds[i], routing, 7 + i));
  std::vector<std::vector<RankResult>> results(rounds.size(), std::vector<RankResult>(kRanks));
  InProcessWorld world(kRanks);
  const auto status = world.run([&](ProcessGroup& group) {
    const int me = group.rank();
    DispatchOptions o{kHidden, kTopK, max_tokens, DType::kF32};
    auto dispatcher = make_dispatcher(mode, group, placement, o);
    for (size_t i = 0; i < rounds.size(); ++i) {
      const RankInput& in = inputs[i][me];
      const ExpertInput& got = dispatcher->dispatch(in.x, in.ids, in.weights);
      RankResult& res = results[i][me];
      res.counts = got.counts;
      Tensor y = Tensor::empty(got.x.shape(), DType::kF32);
      std::fill(y.data<float>(), y.data<float>() + y.numel(), NAN);  // unused rows stay NaN
      for (int64_t e = 0; e < got.num_local_experts(); ++e) {
        res.expert_rows.push_back(got.expert_rows(got.x, e).clone());
        fake_expert(placement.global_expert(me, e), got.expert_rows(got.x, e),
                    got.expert_rows(y, e));
      }
      res.combined = Tensor::zeros({in.tokens(), kHidden}, DType::kF32);
      dispatcher->combine(y, res.combined);
    }
  });
  for (int r = 0; r < kRanks; ++r) ASSERT_TRUE(status[r].ok()) << status[r].message();

  for (size_t i = 0; i < rounds.size(); ++i) {
    for (int r = 0; r < kRanks; ++r) {
      const RankResult& res = results[i][r];
      ASSERT_EQ(int64_t(res.counts.size()), kExperts / kRanks);
      for (int64_t e = 0; e < kExperts / kRanks; ++e) {
        const Tensor expected = reference_rows(inputs[i], placement.global_expert(r, e));
        EXPECT_EQ(res.counts[e], expected.size(0)) << "round " << i << " rank " << r << " expert " << e;
        EXPECT_TRUE(bitwise_equal(res.expert_rows[e], expected))
            << "round " << i << " rank " << r << " local expert " << e;
      }
      const Tensor ref = reference_combine(inputs[i][r]);
      ASSERT_EQ(res.combined.shape(), ref.shape());
      float worst = 0.0f;
      for (int64_t k = 0; k < ref.numel(); ++k) {
        const float a = res.combined.data<float>()[k], b = ref.data<float>()[k];
        worst = std::isnan(a) ? INFINITY : std::max(worst, std::fabs(a - b) / (1.0f + std::fabs(b)));
      }
      if (mode == DispatchMode::kLowLatency) {
        EXPECT_TRUE(bitwise_equal(res.combined, ref)) << "round " << i << " rank " << r;
      } else {
        EXPECT_LE(worst, 1e-6f) << "round " << i << " rank " << r;  // a few ulps of order-1 sums
      }
    }
  }
}

class DispatchTest : public ::testing::TestWithParam<DispatchMode> {};

TEST_P(DispatchTest, UnevenLoadsAndARankWithoutTokens) {
  run_and_check(GetParam(), {{5, 0, 13, 2}, {0, 9, 1, 17}, {3, 3, 3, 3}}, Routing::kSkewed);
}

TEST_P(DispatchTest, TopKAllOnOneRank) {
  run_and_check(GetParam(), {{6, 11, 0, 4}, {1, 0, 0, 0}}, Routing::kOneRank);
}

TEST_P(DispatchTest, NoRankHasTokens) {
  run_and_check(GetParam(), {{0, 0, 0, 0}, {2, 0, 0, 0}}, Routing::kSkewed);
}

TEST_P(DispatchTest, FullLowLatencyBuffers) {
  run_and_check(GetParam(), {{8, 8, 8, 8}}, Routing::kOneRank, /*max_tokens=*/8);
}

// Many rounds through one dispatcher (buffers reused) with random batch sizes, 0 to 12.
TEST_P(DispatchTest, RandomRoundsReuseTheDispatcher) {
  std::mt19937 rng(123);
  std::vector<std::vector<int64_t>> rounds(12);
  for (auto& round : rounds) {
    for (int r = 0; r < kRanks; ++r) round.push_back(int64_t(rng() % 13));
  }
  run_and_check(GetParam(), rounds, Routing::kSkewed, /*max_tokens=*/12);
  run_and_check(GetParam(), rounds, Routing::kOneRank, /*max_tokens=*/12);
}

INSTANTIATE_TEST_SUITE_P(Modes, DispatchTest,
                         ::testing::Values(DispatchMode::kNormal, DispatchMode::kLowLatency),
                         [](const auto& info) { return std::string(dispatch_mode_name(info.param)); });

// One rank's decode batch exceeds the low_latency buffers: that rank fails with a message
// naming the limit, the others are aborted rather than left waiting.
TEST(LowLatencyDispatch, BatchLargerThanBuffersIsAnError) {
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  const auto inputs = make_inputs({2, 9, 0, 1}, Routing::kSkewed, 3);
  InProcessWorld world(kRanks);
  const auto status = world.run([&](ProcessGroup& group) {
    auto d = make_dispatcher(DispatchMode::kLowLatency, group, placement,
                             {kHidden, kTopK, /*max_dispatch_tokens_per_rank=*/8, DType::kF32});
    const RankInput& in = inputs[group.rank()];
    d->dispatch(in.x, in.ids, in.weights);
  });
  ASSERT_FALSE(status[1].ok());
  EXPECT_NE(status[1].message().find("rank 1 has 9 tokens, more than max_dispatch_tokens_per_rank = 8"),
            std::string::npos)
      << status[1].message();
  for (int r : {0, 2, 3}) EXPECT_FALSE(status[r].ok()) << "rank " << r;
}

TEST(LowLatencyDispatch, ImpossibleBuffersFailAtConstruction) {
  InProcessWorld world(2);
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, 2);
  EXPECT_THROW(make_dispatcher(DispatchMode::kLowLatency, world.group(0), placement,
                               {kHidden, kTopK, 0, DType::kF32}),
               Error);
  // Uneven placement: fixed per-expert slots need the same expert count on every rank.
  std::vector<ExpertLocation> table;
  for (int64_t e = 0; e < kExperts; ++e) table.push_back({e < 10 ? 0 : 1, e < 10 ? e : e - 10});
  EXPECT_THROW(make_dispatcher(DispatchMode::kLowLatency, world.group(0), ExpertPlacement(table, 2),
                               {kHidden, kTopK, 8, DType::kF32}),
               Error);
}

// low_latency only when every rank wants it (decode or idle) and every batch fits the buffers.
TEST(AgreeDispatchMode, LowLatencyOnlyWhenAllRanksWantItAndFit) {
  struct Case {
    std::vector<bool> want;
    std::vector<int64_t> tokens;
    DispatchMode expected;
  };
  const std::vector<Case> cases = {
      {{true, true, true}, {4, 0, 8}, DispatchMode::kLowLatency},
      {{true, false, true}, {4, 0, 8}, DispatchMode::kNormal},  // one rank prefills
      {{true, true, true}, {4, 9, 8}, DispatchMode::kNormal},   // one batch exceeds 8
  };
  for (const Case& c : cases) {
    InProcessWorld world(3);
    std::vector<DispatchMode> got(3);
    const auto status = world.run([&](ProcessGroup& g) {
      got[g.rank()] = agree_dispatch_mode(g, c.want[g.rank()], c.tokens[g.rank()], 8);
    });
    for (int r = 0; r < 3; ++r) {
      ASSERT_TRUE(status[r].ok()) << status[r].message();
      EXPECT_EQ(got[r], c.expected) << "rank " << r;
    }
  }
}

TEST(ExpertPlacement, ContiguousRangesAndTheirInverse) {
  const ExpertPlacement p = ExpertPlacement::contiguous(16, 4);
  for (int64_t g = 0; g < 16; ++g) {
    EXPECT_EQ(p.location(g).rank, g / 4);
    EXPECT_EQ(p.location(g).local, g % 4);
    EXPECT_EQ(p.global_expert(int(g / 4), g % 4), g);
  }
  EXPECT_THROW(ExpertPlacement::contiguous(16, 3), Error);
}

}  // namespace
}  // namespace tandem
