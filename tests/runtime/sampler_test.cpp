// Sampler: distributions with fixed seeds, each filter, penalties, logprobs, reproducibility,
// and parameter validation naming the parameter.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "runtime/sampler.h"

namespace tandem::runtime {
namespace {

std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> out;
  for (const double v : p) out.push_back(float(std::log(v)));
  return out;
}

// Empirical distribution of `draws` samples from fresh samplers sharing one seeded stream.
std::vector<double> frequencies(const SamplingParams& params, const std::vector<float>& logits,
                                int draws) {
  Sampler s(params, {}, 1234);
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[size_t(s.sample(logits).token)] += 1.0 / draws;
  return f;
}

void expect_near_dist(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.015) << "token " << i;
}

const std::vector<float> kLogits = log_probs({0.1, 0.2, 0.3, 0.4});

TEST(Sampler, DistributionsMatchWithFixedSeed) {
  struct Case {
    std::string name;
    std::function<void(SamplingParams&)> set;
    std::vector<double> want;
  };
  const std::vector<Case> cases = {
      {"plain", [](SamplingParams&) {}, {0.1, 0.2, 0.3, 0.4}},
      {"top_k=2", [](SamplingParams& p) { p.top_k = 2; }, {0, 0, 3.0 / 7, 4.0 / 7}},
      // 0.4 < 0.5, then 0.4 + 0.3 >= 0.5: the nucleus is {3, 2}.
      {"top_p=0.5", [](SamplingParams& p) { p.top_p = 0.5f; }, {0, 0, 3.0 / 7, 4.0 / 7}},
      // p >= 0.6 * 0.4 = 0.24 keeps 0.3 and 0.4.
      {"min_p=0.6", [](SamplingParams& p) { p.min_p = 0.6f; }, {0, 0, 3.0 / 7, 4.0 / 7}},
      // T = 2 takes the square root of the probabilities.
      {"temperature=2", [](SamplingParams& p) { p.temperature = 2.0f; },
       [] {
         std::vector<double> w = {std::sqrt(0.1), std::sqrt(0.2), std::sqrt(0.3), std::sqrt(0.4)};
         double s = 0;
         for (double v : w) s += v;
         for (double& v : w) v /= s;
         return w;
       }()},
      {"top_k=3,top_p=0.9", [](SamplingParams& p) { p.top_k = 3; p.top_p = 0.9f; },
       {0, 2.0 / 9, 3.0 / 9, 4.0 / 9}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SamplingParams p;
    c.set(p);
    ASSERT_TRUE(p.validate(4).ok());
    expect_near_dist(frequencies(p, kLogits, 20000), c.want);
  }
}

TEST(Sampler, GreedyTakesArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, {}, 0);
  EXPECT_EQ(s.sample(std::vector<float>{1, 3, 3, 2}).token, 1);
}

TEST(Sampler, SeedMakesSamplingReproducible) {
  SamplingParams p;
  p.seed = 42;
  std::vector<int32_t> a, b, c;
  Sampler sa(p, {}, 1), sb(p, {}, 2);
  p.seed = 43;
  Sampler sc(p, {}, 1);
  for (int i = 0; i < 64; ++i) {
    a.push_back(sa.sample(kLogits).token);
    b.push_back(sb.sample(kLogits).token);
    c.push_back(sc.sample(kLogits).token);
  }
  EXPECT_EQ(a, b);  // the request's seed wins over the engine's
  EXPECT_NE(a, c);
}

TEST(Sampler, Penalties) {
  SamplingParams p;
  p.temperature = 0;
  {
    // Token 0 is in the prompt: 2.0 / 2 = 1.0 < 1.5. Negative logits are multiplied.
    p.repetition_penalty = 2.0f;
    Sampler s(p, std::vector<int32_t>{0, 2}, 0);
    EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.5f, -1.0f}).token, 1);
    // Now 1 is in the output too: 0.75 < 1.0, and token 2's -1 became -2.
    EXPECT_EQ(s.sample(std::vector<float>{2.0f, 1.5f, -1.0f}).token, 0);
  }
  {
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.4f;
    Sampler s(p, {}, 0);
    std::vector<int32_t> got;
    for (int i = 0; i < 4; ++i) got.push_back(s.sample(std::vector<float>{1.0f, 0.5f}).token);
    // 0 wins until its count makes 1.0 - 0.4 * 2 = 0.2 < 0.5; then 1 (0.1) and 0 (0.2).
    EXPECT_EQ(got, (std::vector<int32_t>{0, 0, 1, 0}));
  }
  {
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.6f;
    Sampler s(p, {}, 0);
    std::vector<int32_t> got;
    for (int i = 0; i < 3; ++i) got.push_back(s.sample(std::vector<float>{1.0f, 0.5f}).token);
    // Presence counts once: 0.4 < 0.5, then both seen: 0.4 vs -0.1.
    EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0}));
  }
}

TEST(Sampler, LogprobsAreLogSoftmaxOfTheModel) {
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = true;
  p.top_logprobs = 2;
  Sampler s(p, {}, 0);
  const SampleResult r = s.sample(kLogits);
  EXPECT_EQ(r.token, 3);
  EXPECT_NEAR(r.logprob, std::log(0.4), 1e-5);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 3);
  EXPECT_EQ(r.top[1].token, 2);
  EXPECT_NEAR(r.top[1].logprob, std::log(0.3), 1e-5);
}

TEST(SamplingParams, ValidationNamesTheParameter) {
  struct Case {
    std::function<void(SamplingParams&)> set;
    std::string name;
  };
  const std::vector<Case> cases = {
      {[](SamplingParams& p) { p.temperature = -1; }, "temperature"},
      {[](SamplingParams& p) { p.temperature = NAN; }, "temperature"},
      {[](SamplingParams& p) { p.top_k = -2; }, "top_k"},
      {[](SamplingParams& p) { p.top_p = 0; }, "top_p"},
      {[](SamplingParams& p) { p.top_p = 1.5; }, "top_p"},
      {[](SamplingParams& p) { p.min_p = -0.1f; }, "min_p"},
      {[](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty"},
      {[](SamplingParams& p) { p.frequency_penalty = 3; }, "frequency_penalty"},
      {[](SamplingParams& p) { p.presence_penalty = -3; }, "presence_penalty"},
      {[](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens"},
      {[](SamplingParams& p) { p.n = 0; }, "n"},
      {[](SamplingParams& p) { p.top_logprobs = 21; }, "top_logprobs"},
      {[](SamplingParams& p) { p.stop_token_ids = {100}; }, "stop_token_ids"},
      {[](SamplingParams& p) { p.stop = {""}; }, "stop"},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(p);
    const Status s = p.validate(100);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_EQ(s.message().rfind(c.name, 0), 0u) << s.message();
  }
  EXPECT_TRUE(SamplingParams{}.validate(100).ok());
}

TEST(SamplingParams, FromJson) {
  SamplingParams p;
  ASSERT_TRUE(SamplingParams::from_json({{"temperature", 0.5}, {"stop", "x"}, {"seed", 3}}, p).ok());
  EXPECT_EQ(p.temperature, 0.5f);
  EXPECT_EQ(p.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(p.seed, 3u);
  Status s = SamplingParams::from_json({{"temprature", 1}}, p);
  EXPECT_NE(s.message().find("temprature"), std::string::npos);
  s = SamplingParams::from_json({{"top_k", "many"}}, p);
  EXPECT_NE(s.message().find("top_k"), std::string::npos);
}

}  // namespace
}  // namespace tandem::runtime
