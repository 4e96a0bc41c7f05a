// DpEngine (--ep N --dp-attention) on in-process CPU ranks: a small random DeepSeek-V3 (8 routed
// experts, two MoE layers) served by 2 and 4 expert-parallel ranks gives the same greedy tokens
// as one Engine over the whole model, for concurrent requests of mixed lengths (prefills longer
// than the step budget are chunked, so steps mix a decode and an extend forward) with some
// aborted; ranks without requests join the others' forwards; quiet ranks sleep; shutdown with
// requests in flight ends every stream; bad configurations are errors naming the flag.
//
// Greedy tokens are compared exactly: a token's expert outputs are the same wherever its
// experts run, and the batch-invariance test of engine_test shows that batching and chunking
// do not change greedy tokens; only the normal dispatcher's combine order differs (~1e-6).
#include <gtest/gtest.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "model/loader.h"
#include "model/presets.h"
#include "runtime/dp_engine.h"

namespace tandem::runtime {
namespace {

constexpr uint64_t kSeed = 7;

ModelConfig test_config() {
  nlohmann::json c = preset_config_json("mini");
  c["num_hidden_layers"] = 3;  // one dense layer, two MoE layers of 8 experts
  return ModelConfig::from_json_string(c.dump(), "mini-3");
}

EngineConfig engine_config() {
  EngineConfig c;
  c.scheduler.page_size = 4;
  c.scheduler.max_total_tokens = 2048;
  c.scheduler.max_running_requests = 16;
  c.scheduler.max_batch_tokens = 32;  // prompts up to 64 tokens: chunked prefill, mixed steps
  c.kv_dtype = DType::kF32;
  return c;
}

struct Job {
  std::vector<int32_t> prompt;
  int32_t max_tokens;
};

std::vector<Job> random_jobs(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Job> jobs;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> p(size_t(3 + rng() % 62));
    for (int32_t& t : p) t = int32_t(2 + rng() % 500);
    jobs.push_back({p, int32_t(3 + rng() % 10)});
  }
  return jobs;
}

GenerateRequest greedy(const Job& j) {
  GenerateRequest r{j.prompt, "", {}};
  r.params.temperature = 0;
  r.params.max_tokens = j.max_tokens;
  r.params.ignore_eos = true;
  return r;
}

struct Result {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
  std::string error;
};

Result collect(RequestStream& s) {
  Result r;
  StreamEvent ev;
  while (s.next(ev)) {
    r.tokens.insert(r.tokens.end(), ev.token_ids.begin(), ev.token_ids.end());
    if (ev.finished) r.reason = ev.finish_reason;
    if (!ev.error.empty()) r.error = ev.error;
  }
  return r;
}

// EP=1: one Engine over the whole model, every job in one run.
std::vector<std::vector<int32_t>> reference(const std::vector<Job>& jobs) {
  const ModelConfig config = test_config();
  DeepseekV3Model model(config, load_dummy_weights(config, kSeed));
  const EngineConfig ec = engine_config();
  Engine engine(config,
                std::make_unique<DeepseekRunner>(model, ec.scheduler.num_pages(),
                                                 ec.scheduler.page_size, ec.kv_dtype, Device::cpu()),
                nullptr, ec);
  std::vector<std::shared_ptr<RequestStream>> streams(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) EXPECT_TRUE(engine.submit(greedy(jobs[i]), &streams[i]).ok());
  engine.run_until_idle();
  std::vector<std::vector<int32_t>> out;
  for (auto& s : streams) out.push_back(collect(*s).tokens);
  return out;
}

DpLoadWeightsFn dummy_loader() {
  return [](int, Device device, const ExpertFilter& keep) {
    return load_dummy_weights(test_config(), kSeed, device, keep);
  };
}

std::unique_ptr<DpEngine> make_dp(int ep) {
  DpEngineConfig c;
  c.ep = ep;
  c.engine = engine_config();
  std::unique_ptr<DpEngine> dp;
  const Status s = DpEngine::create(test_config(), c, dummy_loader(), nullptr, &dp);
  EXPECT_TRUE(s.ok()) << s.message();
  return dp;
}

int64_t slots(const std::vector<DpRankCounters>& c) {
  int64_t n = 0;
  for (const DpRankCounters& r : c) n += r.forward_slots + r.idle_slots + r.quiet_slots;
  return n;
}

// Waits until the ranks are asleep: no slot for 100 ms (at most 5 s), so the last pushes'
// stats and counters have landed.
void settle(const DpEngine& dp) {
  for (int i = 0; i < 50; ++i) {
    const int64_t before = slots(dp.counters());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (slots(dp.counters()) == before) return;
  }
}

double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Mixed requests, submitted from three threads at once, some aborted: greedy tokens equal
// EP=1's; aborted ones end with kAbort; every rank ran forwards; quiet ranks then sleep.
void check_mixed(int ep) {
  const std::vector<Job> jobs = random_jobs(14, 11);
  const std::vector<std::vector<int32_t>> expected = reference(jobs);
  std::unique_ptr<DpEngine> dp = make_dp(ep);
  ASSERT_TRUE(dp);

  std::vector<std::shared_ptr<RequestStream>> streams(jobs.size()), doomed(3);
  std::vector<std::thread> submitters;
  for (int t = 0; t < 3; ++t) {
    submitters.emplace_back([&, t] {
      for (size_t i = size_t(t); i < jobs.size(); i += 3) {
        EXPECT_TRUE(dp->submit(greedy(jobs[i]), &streams[i]).ok());
      }
      // A long request aborted after its first token.
      GenerateRequest r = greedy({{5, 6, 7, int32_t(8 + t)}, 400});
      ASSERT_TRUE(dp->submit(r, &doomed[size_t(t)]).ok());
    });
  }
  for (auto& t : submitters) t.join();
  std::vector<RequestId> ids;
  for (auto& s : streams) ids.push_back(s->id());
  for (auto& s : doomed) ids.push_back(s->id());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end()) << "stream ids are not unique";

  for (auto& s : doomed) {
    StreamEvent ev;
    ASSERT_TRUE(s->next(ev));
    dp->abort(s->id());
    const Result rest = collect(*s);
    EXPECT_EQ(rest.reason, FinishReason::kAbort);
    EXPECT_LT(int64_t(rest.tokens.size() + ev.token_ids.size()), 400);
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Result r = collect(*streams[i]);
    EXPECT_EQ(r.error, "");
    EXPECT_EQ(r.reason, FinishReason::kLength) << "job " << i;
    EXPECT_EQ(r.tokens, expected[i]) << "job " << i << " (prompt " << jobs[i].prompt.size()
                                     << " tokens) differs from EP=1";
  }
  // The ranks' last pushes come before their stats and counters move on.
  settle(*dp);
  const std::vector<DpRankCounters> c = dp->counters();
  for (int r = 0; r < ep; ++r) {
    std::printf("EP=%d rank %d: %lld forward slots, %lld idle, %lld quiet, %lld low_latency\n", ep,
                r, (long long)c[size_t(r)].forward_slots, (long long)c[size_t(r)].idle_slots,
                (long long)c[size_t(r)].quiet_slots, (long long)c[size_t(r)].low_latency_slots);
    EXPECT_GT(c[size_t(r)].forward_slots, 0) << "rank " << r << " got no work";
    // Prefill chunks run normal, pure decode steps low_latency.
    EXPECT_GT(c[size_t(r)].low_latency_slots, 0) << "rank " << r;
    EXPECT_LT(c[size_t(r)].low_latency_slots, c[size_t(r)].forward_slots + c[size_t(r)].idle_slots);
    EXPECT_EQ(c[size_t(r)].outstanding, 0) << "rank " << r;
  }
  // Every rank is in every slot: the same count on each.
  for (int r = 1; r < ep; ++r) {
    EXPECT_EQ(c[size_t(r)].forward_slots + c[size_t(r)].idle_slots + c[size_t(r)].quiet_slots,
              c[0].forward_slots + c[0].idle_slots + c[0].quiet_slots) << "rank " << r;
  }
  const EngineStats st = dp->stats();
  EXPECT_EQ(st.running + st.waiting, 0);
  EXPECT_GT(st.generated_tokens, 0);
  EXPECT_EQ(st.kv_pages_total, ep * engine_config().scheduler.num_pages());

  // Quiet: no slots and almost no CPU over 300 ms.
  const int64_t before = slots(dp->counters());
  const double cpu_before = process_cpu_s();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LE(slots(dp->counters()) - before, 0) << "idle ranks kept meeting";
  EXPECT_LT(process_cpu_s() - cpu_before, 0.05) << "idle ranks burn CPU";
}

TEST(DpEngine, Ep2MixedRequestsEqualEp1) { check_mixed(2); }
TEST(DpEngine, Ep4MixedRequestsEqualEp1) { check_mixed(4); }

// One request on EP=4: rank 0 runs it, ranks 1-3 get nothing and join every forward idle.
TEST(DpEngine, RanksWithoutRequestsJoinTheForwards) {
  const std::vector<Job> jobs = {{random_jobs(1, 5)[0].prompt, 9}};
  const std::vector<std::vector<int32_t>> expected = reference(jobs);
  std::unique_ptr<DpEngine> dp = make_dp(4);
  ASSERT_TRUE(dp);
  std::shared_ptr<RequestStream> s;
  ASSERT_TRUE(dp->submit(greedy(jobs[0]), &s).ok());
  EXPECT_EQ(collect(*s).tokens, expected[0]);
  settle(*dp);
  const std::vector<DpRankCounters> c = dp->counters();
  EXPECT_GE(c[0].forward_slots, 9);  // a prefill (chunked or not) and 8 decode forwards
  for (int r = 1; r < 4; ++r) {
    EXPECT_EQ(c[size_t(r)].forward_slots, 0) << "rank " << r;
    EXPECT_EQ(c[size_t(r)].idle_slots, c[0].forward_slots) << "rank " << r;
  }
  const std::vector<EngineStats> per_rank = dp->rank_stats();
  EXPECT_EQ(per_rank[0].generated_tokens, 9);
  for (int r = 1; r < 4; ++r) EXPECT_EQ(per_rank[size_t(r)].generated_tokens, 0);
}

// Destroying the engine with long requests running and queued ends every stream (kAbort) and
// joins the ranks; a submit after stop is refused.
TEST(DpEngine, ShutdownWithRequestsInFlight) {
  std::unique_ptr<DpEngine> dp = make_dp(2);
  ASSERT_TRUE(dp);
  std::vector<std::shared_ptr<RequestStream>> streams(6);
  for (size_t i = 0; i < streams.size(); ++i) {
    ASSERT_TRUE(dp->submit(greedy({{3, 4, int32_t(5 + i)}, 1000}), &streams[i]).ok());
  }
  StreamEvent ev;
  ASSERT_TRUE(streams[0]->next(ev));  // running
  dp->stop();
  std::shared_ptr<RequestStream> late;
  const Status refused = dp->submit(greedy({{3, 4}, 4}), &late);
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable);
  for (auto& s : streams) {
    const Result r = collect(*s);
    EXPECT_EQ(r.reason, FinishReason::kAbort);
    EXPECT_LT(r.tokens.size(), 1000u);
  }
  dp.reset();
}

// A runner whose forward throws once `*countdown` reaches zero (over all ranks' runners).
class FailingRunner : public ModelRunner {
 public:
  FailingRunner(std::unique_ptr<ModelRunner> inner, std::shared_ptr<std::atomic<int>> countdown)
      : inner_(std::move(inner)), countdown_(std::move(countdown)) {}
  Tensor run(const Decision& d, const Scheduler& s) override {
    if (countdown_->fetch_sub(1) <= 0) TANDEM_FAIL("injected forward failure");
    return inner_->run(d, s);
  }

 private:
  std::unique_ptr<ModelRunner> inner_;
  std::shared_ptr<std::atomic<int>> countdown_;
};

// A forward that throws on one rank while the others run or wait: every request on every rank
// ends with an error, /health's failure() says why, later submits are refused, and the
// engine still shuts down.
TEST(DpEngine, AFailingForwardFailsEveryRank) {
  DpEngineConfig c;
  c.ep = 4;
  c.engine = engine_config();
  auto countdown = std::make_shared<std::atomic<int>>(12);
  std::unique_ptr<DpEngine> dp;
  const Status created = DpEngine::create(
      test_config(), c, dummy_loader(), nullptr, &dp,
      [countdown](std::unique_ptr<ModelRunner> r) -> std::unique_ptr<ModelRunner> {
        return std::make_unique<FailingRunner>(std::move(r), countdown);
      });
  ASSERT_TRUE(created.ok()) << created.message();
  std::vector<std::shared_ptr<RequestStream>> streams(6);
  for (size_t i = 0; i < streams.size(); ++i) {
    ASSERT_TRUE(dp->submit(greedy({{3, 4, int32_t(5 + i)}, 200}), &streams[i]).ok());
  }
  for (auto& s : streams) {
    const Result r = collect(*s);
    EXPECT_EQ(r.reason, FinishReason::kError);
    EXPECT_FALSE(r.error.empty());
    EXPECT_LT(r.tokens.size(), 200u);
  }
  EXPECT_NE(dp->failure().find("injected forward failure"), std::string::npos) << dp->failure();
  std::shared_ptr<RequestStream> late;
  const Status refused = dp->submit(greedy({{3, 4}, 4}), &late);
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.message().find("injected forward failure"), std::string::npos)
      << refused.message();
  dp.reset();
}

TEST(DpEngine, BadConfigsNameTheFlag) {
  const ModelConfig model = test_config();
  DpEngineConfig c;
  c.engine = engine_config();
  std::unique_ptr<DpEngine> dp;
  c.ep = 3;
  Status s = DpEngine::create(model, c, dummy_loader(), nullptr, &dp);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--ep 3 must divide the model's 8 routed experts"), std::string::npos)
      << s.message();
  c.ep = 0;
  s = DpEngine::create(model, c, dummy_loader(), nullptr, &dp);
  EXPECT_NE(s.message().find("--ep must be at least 1"), std::string::npos) << s.message();
  c.ep = 2;
  c.max_dispatch_tokens_per_rank = 8;  // below max_running_requests 16
  s = DpEngine::create(model, c, dummy_loader(), nullptr, &dp);
  EXPECT_NE(s.message().find("--max-dispatch-tokens-per-rank 8"), std::string::npos) << s.message();
  EXPECT_FALSE(dp);
}

// A rank whose weights fail to load fails create with its error; the other ranks are released.
TEST(DpEngine, RankThatFailsToLoadFailsCreate) {
  DpEngineConfig c;
  c.ep = 4;
  c.engine = engine_config();
  std::unique_ptr<DpEngine> dp;
  const Status s = DpEngine::create(
      test_config(), c,
      [](int rank, Device device, const ExpertFilter& keep) {
        if (rank == 2) TANDEM_FAIL("checkpoint shard missing");
        return load_dummy_weights(test_config(), kSeed, device, keep);
      },
      nullptr, &dp);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("EP rank 2"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("checkpoint shard missing"), std::string::npos) << s.message();
  EXPECT_FALSE(dp);
}

}  // namespace
}  // namespace tandem::runtime
