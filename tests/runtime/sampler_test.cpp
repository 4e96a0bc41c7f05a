// Sampler: distributions with fixed seeds, each filter, penalties, logprobs, reproducibility,
// and parameter validation naming the parameter. The row definition ops::sample_tokens shares
// (ties in top-k and top-p, the id-order draw), the counter-based draws, accept(), and the CPU
// op against the Sampler on the same seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "ops/ops.h"
#include "ops/sampling_rng.h"
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

TEST(SampleRow, TiesBreakByLowerIdInTopKAndTopP) {
  ops::cpu::SampleScratch scratch;
  const std::vector<float> logits = {0.0f, 3.0f, 3.0f, 3.0f};
  ops::cpu::RowSampling p;
  p.top_k = 2;  // of the three tied tokens, the two lowest ids
  for (const double u : {0.0, 0.3, 0.49}) EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, u, scratch), 1);
  for (const double u : {0.51, 0.8, 0.999}) EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, u, scratch), 2);
  // top_p 0.5 of 3 + e^-3: the nucleus takes tied tokens 1 and 2 (cum 2 >= 1.52), not 3.
  p.top_k = 0;
  p.top_p = 0.5f;
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, 0.999, scratch), 2);
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, 0.0, scratch), 1);
  // Without filters the draw walks ids in order: token 0 owns [0, e^-3 / (3 + e^-3)).
  p.top_p = 1.0f;
  const double w0 = std::exp(-3.0) / (3.0 + std::exp(-3.0));
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, w0 * 0.99, scratch), 0);
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, w0 * 1.01, scratch), 1);
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, 0.9999999, scratch), 3);
  // min_p 0.5 keeps p >= 0.5 of the most likely: the tied three.
  p.min_p = 0.5f;
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, 0.0, scratch), 1);
  p.temperature = 0.0f;  // greedy: the first maximum
  EXPECT_EQ(ops::cpu::sample_row(logits.data(), 4, p, 0.7, scratch), 1);
}

TEST(SampleRow, CounterBasedDrawsAreFixedAndIndependent) {
  // The same value on every platform: 53 bits of SplitMix64, exact in a double.
  const double u0 = ops::sampling_uniform(42, 0);
  EXPECT_EQ(u0 * 0x1.0p53, std::floor(u0 * 0x1.0p53));
  EXPECT_EQ(ops::sampling_uniform(42, 0), u0);
  EXPECT_NE(ops::sampling_uniform(42, 1), u0);
  EXPECT_NE(ops::sampling_uniform(43, 0), u0);
  double mean = 0.0;
  for (uint64_t n = 0; n < 20000; ++n) {
    const double u = ops::sampling_uniform(7, n);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    mean += u / 20000;
  }
  EXPECT_NEAR(mean, 0.5, 0.01);
}

// ops::sample_tokens's per-row parameters of these samplers' next tokens (CPU tensors).
ops::SamplingRows rows_of(const std::vector<Sampler>& samplers) {
  const auto n = int64_t(samplers.size());
  std::vector<float> t, tp, mp;
  std::vector<int32_t> k;
  std::vector<int64_t> seed, draw;
  for (const Sampler& s : samplers) {
    t.push_back(s.row_params().temperature);
    k.push_back(s.row_params().top_k);
    tp.push_back(s.row_params().top_p);
    mp.push_back(s.row_params().min_p);
    seed.push_back(int64_t(s.seed()));
    draw.push_back(int64_t(s.draws()));
  }
  ops::SamplingRows in;
  in.temperature = Tensor::from_vector(t, {n});
  in.top_k = Tensor::from_vector(k, {n});
  in.top_p = Tensor::from_vector(tp, {n});
  in.min_p = Tensor::from_vector(mp, {n});
  in.seed = Tensor::from_vector(seed, {n});
  in.draw = Tensor::from_vector(draw, {n});
  return in;
}

TEST(Sampler, AcceptMovesPenaltiesAndDrawsOn) {
  SamplingParams p;
  p.seed = 5;
  p.presence_penalty = 0.5f;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<std::vector<float>> rows(6, std::vector<float>(50));
  for (auto& row : rows) for (float& v : row) v = dist(rng);
  Sampler a(p, {}, 0), b(p, {}, 0);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int32_t t = a.sample(rows[i]).token;
    if (i + 1 < rows.size()) {
      b.accept(t);  // as if the device had sampled it
    } else {
      EXPECT_EQ(b.sample(rows[i]).token, t);
    }
  }
  EXPECT_EQ(a.draws(), rows.size());
  EXPECT_TRUE(a.device_ok());  // penalties go to the device as entries (ops::apply_penalties)
  p.logprobs = true;           // ... but logprobs are of the raw logits: host
  EXPECT_FALSE(Sampler(p, {}, 0).device_ok());
  p.presence_penalty = 0.0f;
  EXPECT_TRUE(Sampler(p, {}, 0).device_ok());
  p.top_logprobs = 2;  // top_logprobs too (ops::top_logprobs)
  EXPECT_TRUE(Sampler(p, {}, 0).device_ok());
  p.logprobs = false;
  p.repetition_penalty = 1.1f;  // ... but not with a penalty
  EXPECT_FALSE(Sampler(p, {}, 0).device_ok());
}

// ops::top_logprobs (the device op's reference) gives the Sampler's top_logprobs: the same ids
// in the same order (ties to the lower id: half the rows are heavily tied), the same values.
TEST(TopLogprobs, CpuOpMatchesSampler) {
  const int64_t rows = 6, vocab = 500, k = 20;
  std::mt19937 rng(41);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  Tensor logits = Tensor::empty({rows, vocab}, DType::kF32);
  for (int64_t i = 0; i < logits.numel(); ++i) {
    const float x = dist(rng);
    logits.data<float>()[i] = (i / vocab) % 2 ? std::round(x) : x;
  }
  Tensor ids = Tensor::empty({rows, k}, DType::kI32), values = Tensor::empty({rows, k}, DType::kF32);
  ops::top_logprobs(logits, ids, values);
  SamplingParams p;
  p.top_logprobs = int32_t(k);
  for (int64_t r = 0; r < rows; ++r) {
    Sampler s(p, {}, 0);
    const SampleResult want = s.sample(std::span<const float>(logits.data<float>() + r * vocab, size_t(vocab)));
    ASSERT_EQ(int64_t(want.top.size()), k);
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_EQ(ids.data<int32_t>()[r * k + j], want.top[size_t(j)].token) << r << "," << j;
      EXPECT_EQ(values.data<float>()[r * k + j], want.top[size_t(j)].logprob) << r << "," << j;
      if (j > 0) EXPECT_LE(values.data<float>()[r * k + j], values.data<float>()[r * k + j - 1]);
    }
  }
  Tensor too_many = Tensor::empty({rows, 21}, DType::kI32), v21 = Tensor::empty({rows, 21}, DType::kF32);
  EXPECT_THROW(ops::top_logprobs(logits, too_many, v21), Error);
}

// The device route for penalized requests, on the CPU ops: the engine's penalty entries
// through ops::apply_penalties, then ops::sample_tokens, give each step the token the host
// Sampler picks from the raw row (repetition over a prompt, frequency and presence over the
// output, all three, and none); the device-side sampler only accept()s.
TEST(Sampler, PenaltiesOnTheOpsMatchTheHost) {
  const int64_t rows = 4, vocab = 300;
  std::mt19937 rng(31);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const std::vector<int32_t> prompt = {3, 7, 7, 250, 18, 3};
  std::vector<SamplingParams> params(rows);
  params[0].repetition_penalty = 1.3f;
  params[1].frequency_penalty = 0.4f;
  params[1].presence_penalty = -0.2f;
  params[2].repetition_penalty = 0.8f;
  params[2].frequency_penalty = 1.1f;
  params[2].presence_penalty = 0.6f;
  params[2].top_k = 40;
  for (int64_t r = 0; r < rows; ++r) params[size_t(r)].seed = 77 + uint64_t(r);
  std::vector<Sampler> host, device;
  for (const SamplingParams& p : params) {
    host.emplace_back(p, prompt, 0);
    device.emplace_back(p, prompt, 0);
  }
  std::vector<int> changed(rows, 0);
  for (int step = 0; step < 40; ++step) {
    Tensor logits = Tensor::empty({rows, vocab}, DType::kF32);
    // Few distinct values, so penalized tokens keep winning and the penalties decide.
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data<float>()[i] = std::round(dist(rng) * 2.0f) / 2.0f;
    const Tensor raw = logits.clone();
    std::vector<int32_t> off{0}, tok, cnt;
    std::vector<float> rep, freq, pres;
    for (const Sampler& s : device) {
      ASSERT_TRUE(s.device_ok());
      const std::span<const int32_t> t = s.penalty_tokens(), c = s.penalty_counts();
      if (s.has_penalties() && step > 0) EXPECT_FALSE(t.empty());
      tok.insert(tok.end(), t.begin(), t.end());
      cnt.insert(cnt.end(), c.begin(), c.end());
      off.push_back(int32_t(tok.size()));
      rep.push_back(s.repetition_penalty());
      freq.push_back(s.frequency_penalty());
      pres.push_back(s.presence_penalty());
    }
    ops::PenaltyRows pr;
    pr.offsets = Tensor::from_vector(off, {rows + 1});
    pr.tokens = Tensor::from_vector(tok, {int64_t(tok.size())});
    pr.counts = Tensor::from_vector(cnt, {int64_t(cnt.size())});
    pr.repetition = Tensor::from_vector(rep, {rows});
    pr.frequency = Tensor::from_vector(freq, {rows});
    pr.presence = Tensor::from_vector(pres, {rows});
    ops::apply_penalties(logits, pr);
    const ops::SamplingRows in = rows_of(device);
    Tensor tokens = Tensor::empty({rows}, DType::kI32), logprobs = Tensor::empty({rows}, DType::kF32);
    ops::sample_tokens(logits, in, tokens, logprobs);
    for (int64_t r = 0; r < rows; ++r) {
      const float* raw_row = raw.data<float>() + r * vocab;
      const SampleResult want = host[size_t(r)].sample(std::span<const float>(raw_row, size_t(vocab)));
      ASSERT_EQ(tokens.data<int32_t>()[r], want.token) << "row " << r << " step " << step;
      // The same draw without penalties: where it differs, the penalties chose the token.
      ops::cpu::SampleScratch scratch;
      const double u = ops::sampling_uniform(device[size_t(r)].seed(), device[size_t(r)].draws());
      if (ops::cpu::sample_row(raw_row, vocab, device[size_t(r)].row_params(), u, scratch) != want.token) {
        ++changed[size_t(r)];
      }
      device[size_t(r)].accept(tokens.data<int32_t>()[r]);
    }
  }
  for (int64_t r = 0; r < 3; ++r) EXPECT_GT(changed[size_t(r)], 0) << "penalties never decided row " << r;
  EXPECT_EQ(changed[3], 0);  // the row without penalties
}

TEST(ApplyPenalties, BadInputsAreRefused) {
  Tensor logits = Tensor::zeros({2, 10}, DType::kF32);
  auto make = [](std::vector<int32_t> off, std::vector<int32_t> tok, std::vector<int32_t> cnt,
                 float rep) {
    ops::PenaltyRows p;
    p.offsets = Tensor::from_vector(off, {int64_t(off.size())});
    p.tokens = Tensor::from_vector(tok, {int64_t(tok.size())});
    p.counts = Tensor::from_vector(cnt, {int64_t(cnt.size())});
    p.repetition = Tensor::from_vector(std::vector<float>{rep, 1.0f}, {2});
    p.frequency = Tensor::from_vector(std::vector<float>{0.5f, 0.5f}, {2});
    p.presence = Tensor::from_vector(std::vector<float>{0.5f, 0.5f}, {2});
    return p;
  };
  ops::PenaltyRows good = make({0, 1, 2}, {3, 9}, {1, 0}, 1.5f);
  ops::apply_penalties(logits, good);
  EXPECT_EQ(logits.data<float>()[3], -std::fma(0.5f, 1.0f, 0.5f));
  auto error_of = [&](const ops::PenaltyRows& p) {
    try {
      ops::apply_penalties(logits, p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of(make({0, 1, 2}, {3, 10}, {1, 0}, 1.5f)).find("outside [0, 10)"), std::string::npos);
  EXPECT_NE(error_of(make({0, 1, 2}, {3, 4}, {-1, 0}, 1.5f)).find("negative"), std::string::npos);
  EXPECT_NE(error_of(make({0, 2, 1}, {3, 4}, {1, 0}, 1.5f)).find("offsets"), std::string::npos);
  EXPECT_NE(error_of(make({0, 1, 2}, {3, 4}, {1, 0}, 0.0f)).find("repetition"), std::string::npos);
  EXPECT_NE(error_of(make({0, 1}, {3}, {1}, 1.5f)).find("offsets"), std::string::npos);  // [R + 1]
}

// The CPU op (the device op's reference) and the Sampler pick the same tokens for the same
// seeds and draw counters, with logprobs of the raw logits.
TEST(SampleTokens, CpuOpMatchesSampler) {
  const int64_t rows = 12, vocab = 1000;
  std::mt19937 rng(21);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<SamplingParams> params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    SamplingParams& p = params[size_t(r)];
    p.seed = 1000 + uint64_t(r);
    p.logprobs = true;
    switch (r % 6) {
      case 0: p.temperature = 0.0f; break;
      case 1: p.temperature = 0.7f; break;
      case 2: p.top_k = 20; break;
      case 3: p.top_p = 0.8f; p.temperature = 1.3f; break;
      case 4: p.min_p = 0.1f; break;
      default: p.top_k = 50; p.top_p = 0.9f; p.min_p = 0.05f; p.temperature = 0.5f; break;
    }
  }
  std::vector<Sampler> samplers;
  for (const SamplingParams& p : params) samplers.emplace_back(p, std::vector<int32_t>{}, 0);
  for (int step = 0; step < 8; ++step) {
    Tensor logits = Tensor::empty({rows, vocab}, DType::kF32);
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data<float>()[i] = dist(rng);
    const ops::SamplingRows in = rows_of(samplers);
    Tensor tokens = Tensor::empty({rows}, DType::kI32), logprobs = Tensor::empty({rows}, DType::kF32);
    ops::sample_tokens(logits, in, tokens, logprobs);
    for (int64_t r = 0; r < rows; ++r) {
      const SampleResult want = samplers[size_t(r)].sample(
          std::span<const float>(logits.data<float>() + r * vocab, size_t(vocab)));
      EXPECT_EQ(tokens.data<int32_t>()[r], want.token) << "row " << r << " step " << step;
      EXPECT_NEAR(logprobs.data<float>()[r], want.logprob, 1e-5) << "row " << r;
    }
  }
}

TEST(SampleTokens, BadInputsNameTheField) {
  const int64_t rows = 3;
  Tensor logits = Tensor::empty({rows, 10}, DType::kF32);
  for (int64_t i = 0; i < logits.numel(); ++i) logits.data<float>()[i] = float(i % 7);
  auto make = [&] {
    ops::SamplingRows in;
    in.temperature = Tensor::from_vector(std::vector<float>(rows, 1.0f), {rows});
    in.top_k = Tensor::from_vector(std::vector<int32_t>(rows, 0), {rows});
    in.top_p = Tensor::from_vector(std::vector<float>(rows, 1.0f), {rows});
    in.min_p = Tensor::from_vector(std::vector<float>(rows, 0.0f), {rows});
    in.seed = Tensor::from_vector(std::vector<int64_t>(rows, 1), {rows});
    in.draw = Tensor::from_vector(std::vector<int64_t>(rows, 0), {rows});
    return in;
  };
  Tensor tokens = Tensor::empty({rows}, DType::kI32), logprobs = Tensor::empty({rows}, DType::kF32);
  auto expect_error = [&](const ops::SamplingRows& in, const Tensor& l, Tensor& tok, const std::string& what) {
    try {
      ops::sample_tokens(l, in, tok, logprobs);
      ADD_FAILURE() << "no error for " << what;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  ops::sample_tokens(logits, make(), tokens, logprobs);  // the good case runs
  ops::SamplingRows in = make();
  in.top_k = Tensor::from_vector(std::vector<float>(rows, 0.0f), {rows});
  expect_error(in, logits, tokens, "top_k");
  in = make();
  in.seed = Tensor::from_vector(std::vector<int64_t>(2, 1), {2});
  expect_error(in, logits, tokens, "seed");
  in = make();
  in.top_p = Tensor::from_vector(std::vector<float>{1.0f, 0.0f, 1.0f}, {rows});
  expect_error(in, logits, tokens, "top_p[1]");
  in = make();
  in.temperature = Tensor::from_vector(std::vector<float>{1.0f, 1.0f, -2.0f}, {rows});
  expect_error(in, logits, tokens, "temperature[2]");
  Tensor bad_tokens = Tensor::empty({rows}, DType::kI64);
  expect_error(make(), logits, bad_tokens, "tokens");
  expect_error(make(), Tensor::empty({rows, 10}, DType::kBF16), tokens, "logits");
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
