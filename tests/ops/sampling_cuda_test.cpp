// ops::sample_tokens on CUDA against the CPU op on fresh random logits: R in {1, 7, 256},
// V in {1000, 129280}, rows mixing greedy, temperature, top-k, top-p, min-p and their
// combinations, some rows with heavily tied logits (top-k and top-p cuts through ties). Same
// seed and draw -> the same token (both sides weigh tokens with exp in double and sum in
// double, so a mismatch needs u within ~1e-15 of a boundary: none is allowed), logprobs
// within 1e-4, outputs poisoned first, bad inputs rejected. With TANDEM_OP_PERF=1 it times the
// op at V3 width ("OPPERF sample_tokens ..."), as a fraction of the 4.2 TB/s the logits could
// be read at once. Skips without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device.h"
#include "ops/ops.h"

namespace tandem {
namespace {

const Device kGpu = Device::cuda(0);

std::mt19937& rng() {
  static std::mt19937 gen([] {
    const unsigned seed = std::random_device{}();
    std::printf("sampling_cuda seed %u\n", seed);
    return seed;
  }());
  return gen;
}

class SamplingCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cuda::available()) GTEST_SKIP() << "no CUDA device: sample_tokens on CUDA needs a GPU";
  }
};

struct Rows {  // host copies of the per-row parameters
  std::vector<float> temperature, top_p, min_p;
  std::vector<int32_t> top_k;
  std::vector<int64_t> seed, draw;

  ops::SamplingRows tensors(Device device) const {
    const int64_t n = int64_t(temperature.size());
    ops::SamplingRows r;
    r.temperature = Tensor::from_vector(temperature, {n}).to(device);
    r.top_k = Tensor::from_vector(top_k, {n}).to(device);
    r.top_p = Tensor::from_vector(top_p, {n}).to(device);
    r.min_p = Tensor::from_vector(min_p, {n}).to(device);
    r.seed = Tensor::from_vector(seed, {n}).to(device);
    r.draw = Tensor::from_vector(draw, {n}).to(device);
    return r;
  }
};

// Row r's parameters: a cycle through the modes the server sees.
Rows make_rows(int64_t n, int64_t vocab) {
  Rows p;
  for (int64_t r = 0; r < n; ++r) {
    float t = 1.0f, tp = 1.0f, mp = 0.0f;
    int32_t k = 0;
    switch (r % 10) {
      case 0: t = 0.0f; break;
      case 1: t = 0.8f; break;
      case 2: k = 40; break;
      case 3: tp = 0.9f; t = 0.7f; break;
      case 4: mp = 0.05f; break;
      case 5: k = 100; tp = 0.8f; mp = 0.02f; t = 1.2f; break;
      case 6: k = 1; break;
      case 7: tp = 0.02f; break;
      case 8: k = int32_t(vocab / 2); tp = 0.95f; t = 0.6f; break;
      default: k = int32_t(vocab) + 5; tp = 0.5f; mp = 0.3f; t = 2.0f; break;
    }
    p.temperature.push_back(t);
    p.top_k.push_back(k);
    p.top_p.push_back(tp);
    p.min_p.push_back(mp);
    p.seed.push_back(int64_t(rng()()) << 20 | int64_t(rng()() & 0xfffff));
    p.draw.push_back(int64_t(rng()() % 5000));
  }
  return p;
}

// Normal logits; rows with r % 3 == 2 are rounded to steps of 0.5 so many tokens tie.
Tensor make_logits(int64_t n, int64_t vocab) {
  Tensor t = Tensor::empty({n, vocab}, DType::kF32);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (int64_t r = 0; r < n; ++r) {
    float* row = t.data<float>() + r * vocab;
    for (int64_t v = 0; v < vocab; ++v) row[v] = dist(rng());
    if (r % 3 == 2) for (int64_t v = 0; v < vocab; ++v) row[v] = std::round(row[v] * 2.0f) / 2.0f;
  }
  return t;
}

void run_case(int64_t n, int64_t vocab) {
  SCOPED_TRACE("R=" + std::to_string(n) + " V=" + std::to_string(vocab));
  const Tensor logits = make_logits(n, vocab);
  const Rows rows = make_rows(n, vocab);
  Tensor want_tok = Tensor::empty({n}, DType::kI32), want_lp = Tensor::empty({n}, DType::kF32);
  ops::sample_tokens(logits, rows.tensors(Device::cpu()), want_tok, want_lp);

  // Poisoned outputs: every row must be written.
  Tensor tok = Tensor::from_vector(std::vector<int32_t>(size_t(n), -7), {n}).to(kGpu);
  Tensor lp = Tensor::from_vector(std::vector<float>(size_t(n), NAN), {n}).to(kGpu);
  ops::sample_tokens(logits.to(kGpu), rows.tensors(kGpu), tok, lp);
  ops::cuda::synchronize(0);
  const Tensor got_tok = tok.to(Device::cpu()), got_lp = lp.to(Device::cpu());
  int64_t mismatches = 0;
  double max_lp_err = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const int32_t g = got_tok.data<int32_t>()[r], w = want_tok.data<int32_t>()[r];
    if (g != w) ++mismatches;
    EXPECT_EQ(g, w) << "row " << r << " (mode " << r % 10 << ", T " << rows.temperature[size_t(r)]
                    << ", top_k " << rows.top_k[size_t(r)] << ", top_p " << rows.top_p[size_t(r)]
                    << ", min_p " << rows.min_p[size_t(r)] << ")";
    const double e = std::fabs(double(got_lp.data<float>()[r]) - double(want_lp.data<float>()[r]));
    max_lp_err = std::max(max_lp_err, std::isfinite(e) ? e : INFINITY);
  }
  EXPECT_LE(max_lp_err, 1e-4);
  std::printf("OPERR sample_tokens R=%lld,V=%lld max_abs=%.3e rel_l2=0 tol=1e-4 mismatches=%lld\n",
              (long long)n, (long long)vocab, max_lp_err, (long long)mismatches);
}

TEST_F(SamplingCuda, MatchesCpuOp) {
  for (const int64_t vocab : {int64_t(1000), int64_t(129280)}) {
    for (const int64_t n : {int64_t(1), int64_t(7), int64_t(256)}) run_case(n, vocab);
  }
}

// Draws sweep u over [0, 1) on a fixed row: every token the CPU op picks, the GPU picks.
TEST_F(SamplingCuda, SameTokenAcrossManyDraws) {
  const int64_t n = 256, vocab = 5000;
  Tensor one = Tensor::empty({1, vocab}, DType::kF32);  // flat enough for the draws to spread
  std::normal_distribution<float> unit(0.0f, 1.0f);
  for (int64_t v = 0; v < vocab; ++v) one.data<float>()[v] = unit(rng());
  Tensor logits = Tensor::empty({n, vocab}, DType::kF32);
  for (int64_t r = 0; r < n; ++r) {
    std::copy(one.data<float>(), one.data<float>() + vocab, logits.data<float>() + r * vocab);
  }
  for (const float top_p : {1.0f, 0.7f}) {
    Rows rows = make_rows(n, vocab);
    for (int64_t r = 0; r < n; ++r) {
      rows.temperature[size_t(r)] = 1.0f;
      rows.top_k[size_t(r)] = r % 2 ? 0 : 300;
      rows.top_p[size_t(r)] = top_p;
      rows.min_p[size_t(r)] = 0.0f;
      rows.seed[size_t(r)] = 99;
      rows.draw[size_t(r)] = r;
    }
    Tensor want = Tensor::empty({n}, DType::kI32), want_lp = Tensor::empty({n}, DType::kF32);
    ops::sample_tokens(logits, rows.tensors(Device::cpu()), want, want_lp);
    Tensor tok = Tensor::empty({n}, DType::kI32, kGpu), lp = Tensor::empty({n}, DType::kF32, kGpu);
    ops::sample_tokens(logits.to(kGpu), rows.tensors(kGpu), tok, lp);
    const Tensor got = tok.to(Device::cpu());
    int distinct = 0;
    std::vector<bool> seen(size_t(vocab), false);
    for (int64_t r = 0; r < n; ++r) {
      EXPECT_EQ(got.data<int32_t>()[r], want.data<int32_t>()[r]) << "draw " << r << " top_p " << top_p;
      if (!seen[size_t(want.data<int32_t>()[r])]) ++distinct;
      seen[size_t(want.data<int32_t>()[r])] = true;
    }
    EXPECT_GT(distinct, 20) << "the draws should spread over many tokens";
  }
}

TEST_F(SamplingCuda, BadInputsThrow) {
  const int64_t n = 4, vocab = 100;
  const Tensor logits = make_logits(n, vocab).to(kGpu);
  const Rows rows = make_rows(n, vocab);
  Tensor tok = Tensor::empty({n}, DType::kI32, kGpu), lp = Tensor::empty({n}, DType::kF32, kGpu);
  auto expect_error = [](const std::function<void()>& fn, const std::string& what) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << what;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  // Parameters left on the host while the logits are on the GPU.
  expect_error([&] { ops::sample_tokens(logits, rows.tensors(Device::cpu()), tok, lp); },
               "different devices");
  ops::SamplingRows r = rows.tensors(kGpu);
  r.min_p = Tensor::empty({n + 1}, DType::kF32, kGpu);
  expect_error([&] { ops::sample_tokens(logits, r, tok, lp); }, "min_p");
  r = rows.tensors(kGpu);
  r.draw = Tensor::empty({n}, DType::kI32, kGpu);
  expect_error([&] { ops::sample_tokens(logits, r, tok, lp); }, "draw");
  Tensor lp_bad = Tensor::empty({n}, DType::kBF16, kGpu);
  expect_error([&] { ops::sample_tokens(logits, rows.tensors(kGpu), tok, lp_bad); }, "logprobs");
  const Tensor strided = Tensor::empty({n, 2 * vocab}, DType::kF32, kGpu).slice(1, 0, vocab);
  ops::sample_tokens(strided, rows.tensors(kGpu), tok, lp);  // row stride is fine
  const Tensor l3 = Tensor::empty({n, vocab, 1}, DType::kF32, kGpu);
  expect_error([&] { ops::sample_tokens(l3, rows.tensors(kGpu), tok, lp); }, "logits");
  ops::cuda::synchronize(0);
}

// ops::top_logprobs on CUDA against the CPU op: V3 width, k = 1, 5, 20, rows with heavy ties
// (make_logits rounds every third row): the same ids in the same order, values within 1e-5.
TEST_F(SamplingCuda, TopLogprobsMatchesCpu) {
  for (int64_t k : {1, 5, 20}) {
    const int64_t n = 9, vocab = 129280;
    const Tensor logits = make_logits(n, vocab);
    Tensor ids = Tensor::empty({n, k}, DType::kI32), values = Tensor::empty({n, k}, DType::kF32);
    ops::top_logprobs(logits, ids, values);
    Tensor gi = Tensor::empty({n, k}, DType::kI32, kGpu), gv = Tensor::empty({n, k}, DType::kF32, kGpu);
    ops::top_logprobs(logits.to(kGpu), gi, gv);
    const Tensor hi = gi.to(Device::cpu()), hv = gv.to(Device::cpu());
    for (int64_t i = 0; i < n * k; ++i) {
      ASSERT_EQ(hi.data<int32_t>()[i], ids.data<int32_t>()[i]) << "k=" << k << " at " << i;
      ASSERT_NEAR(hv.data<float>()[i], values.data<float>()[i], 1e-5) << "k=" << k << " at " << i;
    }
  }
}

// ops::apply_penalties on CUDA against the CPU op: random rows and entries (repetition alone,
// frequency and presence alone, all three, none), V3 width; the same IEEE operations on both
// sides, so bitwise equal. A token outside the vocabulary is reported at the next sync.
TEST_F(SamplingCuda, ApplyPenaltiesMatchesCpuBitwise) {
  const int64_t n = 37, vocab = 129280;
  std::uniform_int_distribution<int32_t> token(0, int32_t(vocab) - 1), count(0, 5);
  std::vector<int32_t> off{0}, tok, cnt;
  std::vector<float> rep(n), freq(n), pres(n);
  for (int64_t r = 0; r < n; ++r) {
    rep[r] = r % 4 == 1 ? 1.0f : 0.7f + 0.1f * float(r % 7);
    freq[r] = r % 4 == 0 ? 0.0f : 0.3f * float(r % 5) - 0.4f;
    pres[r] = r % 4 == 0 ? 0.0f : 0.2f * float(r % 3) - 0.1f;
    std::vector<int32_t> picked;
    const int entries = r % 4 == 3 ? 0 : 1 + int(r * 37 % 700);
    for (int e = 0; e < entries; ++e) picked.push_back(token(rng()));
    std::sort(picked.begin(), picked.end());
    picked.erase(std::unique(picked.begin(), picked.end()), picked.end());  // distinct per row
    for (const int32_t t : picked) {
      tok.push_back(t);
      cnt.push_back(count(rng()));
    }
    off.push_back(int32_t(tok.size()));
  }
  const auto e = int64_t(tok.size());
  ops::PenaltyRows host;
  host.offsets = Tensor::from_vector(off, {n + 1});
  host.tokens = Tensor::from_vector(tok, {e});
  host.counts = Tensor::from_vector(cnt, {e});
  host.repetition = Tensor::from_vector(rep, {n});
  host.frequency = Tensor::from_vector(freq, {n});
  host.presence = Tensor::from_vector(pres, {n});
  ops::PenaltyRows dev{host.offsets.to(kGpu), host.tokens.to(kGpu), host.counts.to(kGpu),
                       host.repetition.to(kGpu), host.frequency.to(kGpu), host.presence.to(kGpu)};
  Tensor cpu = make_logits(n, vocab);
  const Tensor orig = cpu.clone();
  Tensor gpu = cpu.to(kGpu);
  ops::apply_penalties(cpu, host);
  ops::apply_penalties(gpu, dev);
  const Tensor back = gpu.to(Device::cpu());
  int64_t changed = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    ASSERT_EQ(back.data<float>()[i], cpu.data<float>()[i]) << "element " << i;
    changed += cpu.data<float>()[i] != orig.data<float>()[i];
  }
  EXPECT_GT(changed, 1000);  // the entries really moved logits
  std::vector<int32_t> bad_tok = tok;
  bad_tok[0] = int32_t(vocab);
  dev.tokens = Tensor::from_vector(bad_tok, {e}).to(kGpu);
  ops::apply_penalties(gpu, dev);
  EXPECT_THROW(ops::cuda::synchronize(0), Error);
}

// TANDEM_OP_PERF=1: V3 width, R = 1, 64, 256, greedy rows and sampled rows.
TEST_F(SamplingCuda, Perf) {
  const char* on = std::getenv("TANDEM_OP_PERF");
  if (!on || on[0] != '1') GTEST_SKIP() << "set TANDEM_OP_PERF=1 for timings";
  const int64_t vocab = 129280;
  constexpr double kCeilingGBs = 4200.0;
  for (const int64_t n : {int64_t(1), int64_t(64), int64_t(256)}) {
    const Tensor logits = make_logits(n, vocab).to(kGpu);
    Tensor tok = Tensor::empty({n}, DType::kI32, kGpu), lp = Tensor::empty({n}, DType::kF32, kGpu);
    struct Mode {
      const char* name;
      float t, top_p;
      int32_t top_k;
    };
    for (const Mode& m : {Mode{"greedy", 0.0f, 1.0f, 0}, Mode{"T=1", 1.0f, 1.0f, 0},
                          Mode{"top_k=50", 1.0f, 1.0f, 50}, Mode{"top_p=0.9", 0.7f, 0.9f, 0},
                          Mode{"top_k=50,top_p=0.9", 0.7f, 0.9f, 50}}) {
      Rows rows = make_rows(n, vocab);
      for (int64_t r = 0; r < n; ++r) {
        rows.temperature[size_t(r)] = m.t;
        rows.top_k[size_t(r)] = m.top_k;
        rows.top_p[size_t(r)] = m.top_p;
        rows.min_p[size_t(r)] = 0.0f;
      }
      const ops::SamplingRows in = rows.tensors(kGpu);
      for (int i = 0; i < 3; ++i) ops::sample_tokens(logits, in, tok, lp);
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      const int iters = 20;
      cudaStream_t stream = ops::cuda::current_stream(0);
      cudaEventRecord(a, stream);
      for (int i = 0; i < iters; ++i) ops::sample_tokens(logits, in, tok, lp);
      cudaEventRecord(b, stream);
      cudaEventSynchronize(b);
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, a, b);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      const double us = double(ms) * 1e3 / iters;
      const double gbs = double(n * vocab * 4) / us / 1e3;
      std::printf("OPPERF sample_tokens R=%lld,V=%lld,%s %.1f us %.0f GB/s (%.1f%% of %.1f TB/s)\n",
                  (long long)n, (long long)vocab, m.name, us, gbs, 100.0 * gbs / kCeilingGBs,
                  kCeilingGBs / 1e3);
    }
  }
  ops::cuda::synchronize(0);
}

}  // namespace
}  // namespace tandem
