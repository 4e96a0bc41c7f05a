// Engine tests. A scripted fake runner covers the loop's mechanics (stop tokens, stop strings
// across token boundaries, max_tokens, n > 1, aborts, the loop thread). A small random
// DeepSeek-V3 model checks batch invariance: with greedy sampling a request's tokens are the
// same run alone, among 32 others, after preemption and resume, and on a prefix-cache hit.
#include <gtest/gtest.h>
#include "tests/common/tokenizer_dir.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "model/loader.h"
#include "model/presets.h"
#include "model/random_weights.h"
#include "ops/ops.h"
#include "runtime/engine.h"

namespace tandem::runtime {
namespace {

// ---- Scripted runner: request i's k-th output token is script(prompt)[k]. ----

class ScriptedRunner : public ModelRunner {
 public:
  ScriptedRunner(int64_t vocab, std::function<int32_t(std::span<const int32_t>)> next)
      : vocab_(vocab), next_(std::move(next)) {}
  Tensor run(const Decision& d, const Scheduler& s) override {
    Tensor logits = Tensor::zeros({int64_t(d.seqs.size()), vocab_}, DType::kF32);
    for (size_t i = 0; i < d.seqs.size(); ++i) {
      const auto tokens = s.tokens(d.seqs[i].id);
      const auto upto = tokens.first(size_t(d.seqs[i].cached_len + d.seqs[i].num_tokens));
      logits.data<float>()[int64_t(i) * vocab_ + next_(upto)] = 10.0f;
    }
    return logits;
  }

 private:
  int64_t vocab_;
  std::function<int32_t(std::span<const int32_t>)> next_;
};

ModelConfig small_config(int64_t vocab) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.max_position_embeddings = 4096;
  c.eos_token_ids = {1};
  return c;
}

EngineConfig engine_config(int32_t page, int64_t total, int32_t budget) {
  EngineConfig c;
  c.scheduler.page_size = page;
  c.scheduler.max_total_tokens = total;
  c.scheduler.max_batch_tokens = budget;
  c.kv_dtype = DType::kF32;
  return c;
}

struct Collected {
  std::vector<std::vector<int32_t>> ids;  // per completion index
  std::vector<std::string> text;
  std::vector<FinishReason> reason;
  std::string error;
  // Per completion index, per token where logprobs were asked: the logprob, then the
  // top_logprobs' (token, logprob) pairs, flattened.
  std::vector<std::vector<float>> logprobs;
};

Collected collect(RequestStream& stream, int n) {
  Collected c{std::vector<std::vector<int32_t>>(size_t(n)), std::vector<std::string>(size_t(n)),
              std::vector<FinishReason>(size_t(n), FinishReason::kNone), {},
              std::vector<std::vector<float>>(size_t(n))};
  StreamEvent ev;
  while (stream.next(ev)) {
    auto& ids = c.ids[size_t(ev.index)];
    ids.insert(ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    for (const SampleResult& r : ev.logprobs) {
      auto& lp = c.logprobs[size_t(ev.index)];
      lp.push_back(r.logprob);
      for (const TokenLogprob& t : r.top) {
        lp.push_back(float(t.token));
        lp.push_back(t.logprob);
      }
    }
    c.text[size_t(ev.index)] += ev.text;
    if (ev.finished) c.reason[size_t(ev.index)] = ev.finish_reason;
    if (!ev.error.empty()) c.error = ev.error;
  }
  return c;
}

// Counts up from the last token, wrapping from 50 to 2 (never 1, the eos id).
int32_t count_up(std::span<const int32_t> t) { return t.back() >= 50 ? 2 : t.back() + 1; }

TEST(Engine, MaxTokensStopTokensAndEos) {
  Engine engine(small_config(64), std::make_unique<ScriptedRunner>(64, count_up), nullptr,
                engine_config(4, 256, 16));
  std::shared_ptr<RequestStream> a, b, c;
  GenerateRequest r{{10}, "", {}};
  // Greedy: with temperature 1 the scripted token has p = e^10 / (e^10 + 63), and one token in
  // about 350 would be another one (a flaky test).
  r.params.temperature = 0;
  r.params.max_tokens = 3;
  ASSERT_TRUE(engine.submit(r, &a).ok());
  r.params.max_tokens = 10;
  r.params.stop_token_ids = {13};
  ASSERT_TRUE(engine.submit(r, &b).ok());
  // Counting up from 47 reaches 0 -> 2, never 1 (eos); a script that emits eos:
  r.params.stop_token_ids = {};
  r.prompt_ids = {48};
  ASSERT_TRUE(engine.submit(r, &c).ok());
  engine.run_until_idle();
  const Collected ca = collect(*a, 1), cb = collect(*b, 1), cc = collect(*c, 1);
  EXPECT_EQ(ca.ids[0], (std::vector<int32_t>{11, 12, 13}));
  EXPECT_EQ(ca.reason[0], FinishReason::kLength);
  EXPECT_EQ(cb.ids[0], (std::vector<int32_t>{11, 12, 13}));  // the stop token is reported
  EXPECT_EQ(cb.reason[0], FinishReason::kStop);
  EXPECT_EQ(cc.ids[0].size(), 10u);
  const EngineStats st = engine.stats();
  EXPECT_EQ(st.generated_tokens, 3 + 3 + 10);
  EXPECT_EQ(st.prompt_tokens, 3);
  EXPECT_EQ(st.running + st.waiting, 0);
}

TEST(Engine, SubmitRejectsBadRequestsNamingTheParameter) {
  Engine engine(small_config(64), std::make_unique<ScriptedRunner>(64, count_up), nullptr,
                engine_config(4, 64, 16));
  std::shared_ptr<RequestStream> s;
  GenerateRequest r{{10}, "", {}};
  r.params.top_p = 2;
  EXPECT_NE(engine.submit(r, &s).message().find("top_p"), std::string::npos);
  r.params = {};
  r.params.stop = {"x"};
  EXPECT_NE(engine.submit(r, &s).message().find("tokenizer"), std::string::npos);
  r.params = {};
  r.prompt_ids = {99};
  EXPECT_NE(engine.submit(r, &s).message().find("vocabulary"), std::string::npos);
  r.prompt_ids = {};
  r.prompt = "hello";
  EXPECT_NE(engine.submit(r, &s).message().find("tokenizer"), std::string::npos);
  r.prompt_ids = std::vector<int32_t>(60, 5);
  r.params.max_tokens = 10;
  EXPECT_EQ(engine.submit(r, &s).code(), StatusCode::kResourceExhausted);
}

TEST(Engine, ParallelSamplingAbortAndLoopThread) {
  // Random logits per step, so n > 1 completions differ; seeds make them reproducible.
  class NoiseRunner : public ModelRunner {
   public:
    Tensor run(const Decision& d, const Scheduler& s) override {
      Tensor logits = Tensor::zeros({int64_t(d.seqs.size()), 64}, DType::kF32);
      for (size_t i = 0; i < d.seqs.size(); ++i) {
        std::mt19937 rng(uint32_t(s.tokens(d.seqs[i].id).size() * 7 + d.seqs[i].id % 5));
        for (int v = 2; v < 64; ++v) logits.data<float>()[int64_t(i) * 64 + v] = float(rng() % 100) / 50;
      }
      return logits;
    }
  };
  auto run_once = [](bool abort_second) {
    Engine engine(small_config(64), std::make_unique<NoiseRunner>(), nullptr,
                  engine_config(4, 4096, 64));
    engine.start();
    std::shared_ptr<RequestStream> s, t;
    GenerateRequest r{{3, 4, 5}, "", {}};
    r.params.n = 4;
    r.params.seed = 7;
    r.params.max_tokens = 20;
    r.params.ignore_eos = true;
    EXPECT_TRUE(engine.submit(r, &s).ok());
    r.params.max_tokens = 4000 - 3;
    r.params.n = 1;
    EXPECT_TRUE(engine.submit(r, &t).ok());
    if (abort_second) engine.abort(t->id());
    Collected c = collect(*s, 4);
    Collected ct = abort_second ? collect(*t, 1) : Collected{};
    engine.stop();
    if (abort_second) {
      EXPECT_EQ(ct.reason[0], FinishReason::kAbort);
    }
    return c;
  };
  const Collected c1 = run_once(true), c2 = run_once(true);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(c1.ids[size_t(i)].size(), 20u);
    EXPECT_EQ(c1.reason[size_t(i)], FinishReason::kLength);
    EXPECT_EQ(c1.ids[size_t(i)], c2.ids[size_t(i)]) << "same seed, same tokens";
  }
  EXPECT_NE(c1.ids[0], c1.ids[1]) << "parallel samples use different seeds";
}

// ---- Device-sampled rows: a runner that samples with the CPU op where the engine allows it
// (as DeepseekRunner does on CUDA with the device op) and returns only the other rows' logits.

Tensor noise_logits(const Decision& d, const Scheduler& s, int64_t vocab) {
  Tensor logits = Tensor::zeros({int64_t(d.seqs.size()), vocab}, DType::kF32);
  for (size_t i = 0; i < d.seqs.size(); ++i) {
    std::mt19937 rng(uint32_t(s.tokens(d.seqs[i].id).size() * 7 + d.seqs[i].id % 5));
    std::normal_distribution<float> dist(0.0f, 2.0f);
    for (int64_t v = 2; v < vocab; ++v) logits.data<float>()[int64_t(i) * vocab + v] = dist(rng);
  }
  return logits;
}

class NoiseHostRunner : public ModelRunner {
 public:
  Tensor run(const Decision& d, const Scheduler& s) override { return noise_logits(d, s, 300); }
};

class NoiseDeviceRunner : public ModelRunner {
 public:
  int64_t device_rows = 0, penalized_rows = 0;
  Tensor run(const Decision& d, const Scheduler& s) override { return noise_logits(d, s, 300); }
  StepOutput step(const Decision& d, const Scheduler& s,
                  std::span<const RowSampling> sampling) override {
    const Tensor all = noise_logits(d, s, 300);
    const size_t n = d.seqs.size();
    StepOutput out = StepOutput::unfilled(n);
    std::vector<int64_t> host;
    for (size_t i = 0; i < n; ++i) {
      if (!d.seqs[i].sample) continue;
      if (!sampling[i].device) {
        out.host_row[i] = int32_t(host.size());
        host.push_back(int64_t(i));
        continue;
      }
      const RowSampling& r = sampling[i];
      ops::SamplingRows in;
      in.temperature = Tensor::from_vector(std::vector<float>{r.params.temperature}, {1});
      in.top_k = Tensor::from_vector(std::vector<int32_t>{r.params.top_k}, {1});
      in.top_p = Tensor::from_vector(std::vector<float>{r.params.top_p}, {1});
      in.min_p = Tensor::from_vector(std::vector<float>{r.params.min_p}, {1});
      in.seed = Tensor::from_vector(std::vector<int64_t>{int64_t(r.seed)}, {1});
      in.draw = Tensor::from_vector(std::vector<int64_t>{int64_t(r.draw)}, {1});
      Tensor tok = Tensor::empty({1}, DType::kI32), lp = Tensor::empty({1}, DType::kF32);
      Tensor row = all.slice(0, int64_t(i), int64_t(i) + 1).contiguous();
      if (r.top_logprobs > 0) {  // of the raw row, before any penalty (none here: device_ok)
        Tensor ids = Tensor::empty({1, r.top_logprobs}, DType::kI32);
        Tensor values = Tensor::empty({1, r.top_logprobs}, DType::kF32);
        ops::top_logprobs(row, ids, values);
        for (int32_t j = 0; j < r.top_logprobs; ++j)
          out.top[i].push_back({ids.data<int32_t>()[j], values.data<float>()[j]});
      }
      if (r.penalized) {
        const auto e = int64_t(r.penalty_tokens.size());
        ops::PenaltyRows pr;
        pr.offsets = Tensor::from_vector(std::vector<int32_t>{0, int32_t(e)}, {2});
        pr.tokens = Tensor::from_vector(std::vector<int32_t>(r.penalty_tokens.begin(), r.penalty_tokens.end()), {e});
        pr.counts = Tensor::from_vector(std::vector<int32_t>(r.penalty_counts.begin(), r.penalty_counts.end()), {e});
        pr.repetition = Tensor::from_vector(std::vector<float>{r.repetition}, {1});
        pr.frequency = Tensor::from_vector(std::vector<float>{r.frequency}, {1});
        pr.presence = Tensor::from_vector(std::vector<float>{r.presence}, {1});
        ops::apply_penalties(row, pr);
        ++penalized_rows;
      }
      ops::sample_tokens(row, in, tok, lp);
      out.token[i] = tok.data<int32_t>()[0];
      out.logprob[i] = lp.data<float>()[0];
      ++device_rows;
    }
    out.logits = Tensor::empty({int64_t(host.size()), 300}, DType::kF32);
    for (size_t j = 0; j < host.size(); ++j) {
      std::copy_n(all.data<float>() + host[j] * 300, 300, out.logits.data<float>() + int64_t(j) * 300);
    }
    return out;
  }
};

TEST(Engine, DeviceSampledRowsGiveTheHostSamplersTokens) {
  int64_t device_rows = -1, penalized_rows = -1;  // read while the engine (and its runner) lives
  auto serve = [&](std::unique_ptr<ModelRunner> runner, const NoiseDeviceRunner* probe) {
    Engine engine(small_config(300), std::move(runner), nullptr, engine_config(4, 4096, 64));
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (int i = 0; i < 10; ++i) {
      GenerateRequest r{{3, 4, 5, int32_t(10 + i)}, "", {}};
      r.params.max_tokens = 15;
      r.params.ignore_eos = true;
      r.params.seed = 40 + uint64_t(i);
      r.params.logprobs = true;
      switch (i % 5) {
        case 0: r.params.temperature = 0; break;
        case 1: r.params.top_k = 10; r.params.top_p = 0.9f; break;
        case 2: r.params.min_p = 0.1f; r.params.temperature = 0.7f; break;
        case 3:  // penalties: on the device as entries; with logprobs (raw logits) on the host
          r.params.presence_penalty = 0.5f;
          r.params.frequency_penalty = 0.3f;
          r.params.repetition_penalty = 1.2f;
          r.params.logprobs = i == 3;
          break;
        default: r.params.top_logprobs = 3; break;  // alternatives: ops::top_logprobs
      }
      if (i == 6) r.params.n = 2;
      std::shared_ptr<RequestStream> s;
      EXPECT_TRUE(engine.submit(r, &s).ok());
      streams.push_back(s);
    }
    engine.run_until_idle();
    if (probe != nullptr) {
      device_rows = probe->device_rows;
      penalized_rows = probe->penalized_rows;
    }
    std::vector<Collected> out;
    for (size_t i = 0; i < streams.size(); ++i) out.push_back(collect(*streams[i], i == 6 ? 2 : 1));
    return out;
  };
  auto device = std::make_unique<NoiseDeviceRunner>();
  const NoiseDeviceRunner* probe = device.get();
  const std::vector<Collected> got = serve(std::move(device), probe);
  const std::vector<Collected> want = serve(std::make_unique<NoiseHostRunner>(), nullptr);
  // All but the request with penalties and logprobs (10 of 11 sequences) sampled "on the
  // device", one of them with penalties; tokens, logprobs and top_logprobs as on the host.
  EXPECT_EQ(device_rows, 10 * 15);
  EXPECT_EQ(penalized_rows, 15);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].ids, want[i].ids) << "request " << i;
    EXPECT_EQ(got[i].logprobs, want[i].logprobs) << "request " << i;
    EXPECT_EQ(got[i].ids[0].size(), 15u);
    EXPECT_EQ(got[i].error, "");
  }
}

// ---- The real tokenizer: stop strings across token boundaries. ----

TEST(Engine, StopStringAcrossTokenBoundaries) {
  const auto dir = tandem::test::deepseek_v3_tokenizer_dir();
  if (!dir) GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found (set TANDEM_TOKENIZER_DIR)";
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::load(*dir);
  // The model "says" this text, token by token.
  const std::vector<int32_t> script =
      tok.encode("The quick brown fox jumps over the lazy dog.", {false, true});
  ASSERT_GT(script.size(), 6u);
  const size_t prompt_len = 2;
  auto next = [&](std::span<const int32_t> t) { return script[t.size() - prompt_len]; };
  Engine engine(small_config(tok.vocab_size()), std::make_unique<ScriptedRunner>(tok.vocab_size(), next),
                &tok, engine_config(16, 4096, 64));
  std::shared_ptr<RequestStream> s, u;
  GenerateRequest r{{100, 200}, "", {}};
  r.params.temperature = 0;
  r.params.max_tokens = int32_t(script.size());
  r.params.stop = {"own fox ju"};  // starts and ends inside tokens
  ASSERT_TRUE(engine.submit(r, &s).ok());
  r.params.stop = {};
  ASSERT_TRUE(engine.submit(r, &u).ok());
  engine.run_until_idle();
  const Collected c = collect(*s, 1), all = collect(*u, 1);
  EXPECT_EQ(c.text[0], "The quick br");
  EXPECT_EQ(c.reason[0], FinishReason::kStop);
  EXPECT_EQ(all.text[0], "The quick brown fox jumps over the lazy dog.");
  EXPECT_EQ(all.reason[0], FinishReason::kLength);
}

// ---- A small random DeepSeek-V3: batch invariance. ----

struct TinyModel {
  LoadedModel loaded;
  static TinyModel& get() {
    static TinyModel m = [] {
      const ModelConfig cfg = ModelConfig::from_json_string(preset_config_json("mini").dump(), "mini");
      TinyModel t{load_random_model(cfg, 5)};
      return t;
    }();
    return m;
  }
};

struct Job {
  std::vector<int32_t> prompt;
  int32_t max_tokens;
};

// Runs `jobs` through one engine; returns each one's tokens.
std::vector<std::vector<int32_t>> run_jobs(const std::vector<Job>& jobs, EngineConfig config,
                                           EngineStats* stats = nullptr,
                                           const std::vector<Job>& warmup = {}) {
  TinyModel& m = TinyModel::get();
  auto runner = std::make_unique<DeepseekRunner>(*m.loaded.model, config.scheduler.num_pages(),
                                                 config.scheduler.page_size, config.kv_dtype,
                                                 Device::cpu());
  Engine engine(m.loaded.config, std::move(runner), nullptr, config);
  auto submit_all = [&](const std::vector<Job>& js) {
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const Job& j : js) {
      GenerateRequest r{j.prompt, "", {}};
      r.params.temperature = 0;
      r.params.max_tokens = j.max_tokens;
      r.params.ignore_eos = true;
      std::shared_ptr<RequestStream> s;
      EXPECT_TRUE(engine.submit(r, &s).ok());
      streams.push_back(s);
    }
    engine.run_until_idle();
    std::vector<std::vector<int32_t>> out;
    for (auto& s : streams) {
      Collected c = collect(*s, 1);
      EXPECT_EQ(c.error, "");
      out.push_back(c.ids[0]);
    }
    return out;
  };
  if (!warmup.empty()) submit_all(warmup);
  auto out = submit_all(jobs);
  if (stats) *stats = engine.stats();
  return out;
}

std::vector<Job> random_jobs(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Job> jobs;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> p(size_t(5 + rng() % 60));
    for (int32_t& t : p) t = int32_t(2 + rng() % 500);
    jobs.push_back({p, int32_t(4 + rng() % 12)});
  }
  return jobs;
}

TEST(EngineModel, GreedyTokensAreBatchInvariant) {
  const std::vector<Job> jobs = random_jobs(33, 11);
  // Alone: one request per engine, big pool, no chunking.
  std::vector<std::vector<int32_t>> solo;
  for (const Job& j : jobs) solo.push_back(run_jobs({j}, engine_config(16, 4096, 4096))[0]);
  for (size_t i = 0; i < jobs.size(); ++i) ASSERT_EQ(solo[i].size(), size_t(jobs[i].max_tokens));

  // All 33 together with a small step budget: chunked prefill and mixed steps.
  EngineStats st;
  EXPECT_EQ(run_jobs(jobs, engine_config(16, 4096, 48), &st), solo);
  EXPECT_EQ(st.preemptions, 0);

  // A pool too small for everyone: requests are retracted and resumed.
  EXPECT_EQ(run_jobs(jobs, engine_config(1, 160, 128), &st), solo);
  EXPECT_GT(st.preemptions, 0);

  // Page size 64 and no prefix cache.
  EngineConfig nocache = engine_config(64, 4096, 64);
  nocache.scheduler.enable_prefix_cache = false;
  EXPECT_EQ(run_jobs(jobs, nocache, &st), solo);
}

TEST(EngineModel, PrefixCacheHitsAreTokenExact) {
  const std::vector<Job> base = random_jobs(8, 21);
  // Same prompts again, and prompts that extend them with new suffixes.
  std::vector<Job> again = base;
  for (const Job& j : base) {
    Job k = j;
    for (int t = 0; t < 9; ++t) k.prompt.push_back(int32_t(100 + t));
    again.push_back(k);
  }
  std::vector<std::vector<int32_t>> solo;
  for (const Job& j : again) solo.push_back(run_jobs({j}, engine_config(4, 4096, 4096))[0]);
  EngineStats st;
  EXPECT_EQ(run_jobs(again, engine_config(4, 4096, 4096), &st, base), solo);
  // A repeated prompt hits its whole pages below its last token; an extended one at least
  // the whole pages of the base prompt.
  int64_t expected_hits = 0;
  for (const Job& j : base) {
    const int64_t len = int64_t(j.prompt.size());
    expected_hits += (len - 1) / 4 * 4 + len / 4 * 4;
  }
  EXPECT_GE(st.prefix_hit_tokens, expected_hits);
  EXPECT_GT(double(st.prefix_hit_tokens) / double(st.prompt_tokens), 0.3);
}

}  // namespace
}  // namespace tandem::runtime
