// Table-driven scheduler tests: a scenario is a config, some requests and, per step, the
// expected decision and queues (TensorRT-LLM's scheduler tests do the same).
#include <gtest/gtest.h>

#include <numeric>

#include "tests/runtime/fake_runner.h"

namespace tandem::runtime::test {
namespace {

struct Req {
  RequestId id;
  std::vector<int32_t> prompt;
  int32_t max_new;
};

struct Expect {
  std::string decision;   // decision_string
  std::string preempted;  // ids retracted in the step
  std::string waiting;    // after the step
  std::string running;
};

struct Scenario {
  std::string name;
  SchedulerConfig config;
  std::vector<Req> requests;
  std::vector<Expect> steps;  // then one more step must be empty
};

std::vector<int32_t> iota(int32_t n, int32_t from = 10) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

SchedulerConfig config(int32_t page, int64_t total, int32_t budget, int32_t running, bool cache) {
  SchedulerConfig c;
  c.page_size = page;
  c.max_total_tokens = total;
  c.max_batch_tokens = budget;
  c.max_running_requests = running;
  c.enable_prefix_cache = cache;
  return c;
}

std::vector<Scenario> scenarios() {
  return {
      {"ChunkedPrefillMixedStepAndMaxRunning",
       config(4, 64, 8, 2, false),
       {{1, iota(10), 2}, {2, iota(3), 2}, {3, iota(2), 1}},
       {
           // Request 1's 10-token prompt is cut at the 8-token budget.
           {"1:0+8", "", "2,3", "1"},
           // Its last chunk shares the step with request 2's prefill; 2 running is the limit.
           {"1:8+2* 2:0+3*", "", "3", "1,2"},
           // A pure decode step; both reach max_new and finish.
           {"1:10+1* 2:3+1*", "", "3", ""},
           {"3:0+2*", "", "", ""},
       }},
      {"PreemptNewestDecodeAndResume",
       config(2, 12, 16, 8, false),
       {{1, iota(3), 6}, {2, iota(3, 50), 6}},
       {
           {"1:0+3* 2:0+3*", "", "", "1,2"},
           {"1:3+1* 2:3+1*", "", "", "1,2"},
           {"1:4+1* 2:4+1*", "", "", "1,2"},  // both take their third page: pool full
           {"1:5+1* 2:5+1*", "", "", "1,2"},
           // 1 needs a fourth page; 2, the newest, is retracted with its 4 outputs kept.
           {"1:6+1*", "2", "2", "1"},
           // 2 waits: 4 pages + 1 reserved for 1 do not fit the 2 free ones. 1 finishes.
           {"1:7+1*", "", "2", ""},
           // 2 recomputes prompt + output in one extend step and samples its 5th token.
           {"2:0+7*", "", "", "2"},
           {"2:7+1*", "", "", ""},
       }},
      {"PrefixCacheHitSkipsCachedPages",
       config(2, 32, 16, 8, true),
       {{1, iota(7), 1}, {2, [] { auto v = iota(6); v.push_back(99); v.push_back(98); return v; }(), 1}},
       {
           // Both arrive together, so 2 cannot use 1's pages yet.
           {"1:0+7* 2:0+8*", "", "", ""},
       }},
      {"PrefixCacheHitAfterFinish",
       config(2, 32, 16, 1, true),
       {{1, iota(7), 1}, {2, [] { auto v = iota(6); v.push_back(99); v.push_back(98); return v; }(), 1},
        {3, iota(7), 1}},
       {
           {"1:0+7*", "", "2,3", ""},
           // 1's first 3 pages (6 tokens) are cached: 2 computes only its last 2 tokens.
           {"2:6+2*", "", "3", ""},
           // An identical prompt reuses all whole pages below its last token.
           {"3:6+1*", "", "", ""},
       }},
  };
}

class SchedulerTable : public ::testing::TestWithParam<Scenario> {};

TEST_P(SchedulerTable, StepByStep) {
  const Scenario& sc = GetParam();
  Scheduler sched(sc.config);
  FakeDriver driver{sched, {}, {}};
  for (const Req& r : sc.requests) {
    ASSERT_TRUE(sched.add(r.id, r.prompt, r.max_new).ok());
    driver.max_new[r.id] = r.max_new;
  }
  for (size_t i = 0; i < sc.steps.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    const Decision d = driver.step();
    sched.check_invariants();
    EXPECT_EQ(decision_string(d), sc.steps[i].decision);
    EXPECT_EQ(ids_string(d.preempted), sc.steps[i].preempted);
    EXPECT_EQ(ids_string(sched.waiting_ids()), sc.steps[i].waiting);
    EXPECT_EQ(ids_string(sched.running_ids()), sc.steps[i].running);
  }
  EXPECT_TRUE(driver.step().empty());
  for (const Req& r : sc.requests) {
    ASSERT_TRUE(driver.finished.count(r.id)) << "request " << r.id << " never finished";
    EXPECT_EQ(driver.finished[r.id], fake_expected_output(r.prompt, r.max_new)) << r.id;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.used_pages, 0);
  EXPECT_EQ(st.free_pages + st.cached_pages, sc.config.num_pages());
  EXPECT_EQ(st.evictable_pages, st.cached_pages);
}

INSTANTIATE_TEST_SUITE_P(Scenarios, SchedulerTable, ::testing::ValuesIn(scenarios()),
                         [](const auto& info) { return info.param.name; });

TEST(Scheduler, PrefixHitCountsCachedTokens) {
  Scheduler sched(config(2, 32, 16, 1, true));
  FakeDriver driver{sched, {{1, 1}, {2, 1}}, {}};
  ASSERT_TRUE(sched.add(1, iota(7), 1).ok());
  ASSERT_TRUE(sched.add(2, iota(9), 1).ok());
  driver.step();  // 1 runs and finishes; its pages move to the cache
  const Decision d = driver.step();
  ASSERT_EQ(decision_string(d), "2:6+3*");
  EXPECT_EQ(sched.stats().prefix_hit_tokens, 6);
}

TEST(Scheduler, AddRejectsWhatCanNeverFit) {
  Scheduler sched(config(4, 64, 8, 2, true));
  Status s = sched.add(1, iota(60), 5);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_total_tokens"), std::string::npos) << s.message();
  EXPECT_EQ(sched.add(2, {}, 5).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(sched.add(3, iota(4), 4).ok());
  EXPECT_EQ(sched.add(3, iota(4), 4).code(), StatusCode::kInvalidArgument);
}

TEST(Scheduler, ConfigValidationNamesTheSetting) {
  struct Case {
    SchedulerConfig config;
    std::string name;
  };
  const std::vector<Case> cases = {
      {config(0, 64, 8, 2, true), "page_size"},
      {config(65, 640, 8, 2, true), "page_size"},
      {config(16, 8, 8, 2, true), "max_total_tokens"},
      {config(16, 64, 0, 2, true), "max_batch_tokens"},
      {config(16, 64, 8, 0, true), "max_running_requests"},
  };
  for (const Case& c : cases) {
    const Status s = c.config.validate();
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(c.name), std::string::npos) << s.message();
  }
  EXPECT_TRUE(config(64, 64, 1, 1, true).validate().ok());
}

TEST(Scheduler, AbortWaitingAndRunningFreesEverything) {
  Scheduler sched(config(4, 64, 8, 4, true));
  FakeDriver driver{sched, {{1, 10}, {2, 10}, {3, 10}}, {}};
  ASSERT_TRUE(sched.add(1, iota(10), 10).ok());
  ASSERT_TRUE(sched.add(2, iota(3), 10).ok());
  ASSERT_TRUE(sched.add(3, iota(3), 10).ok());
  driver.step();  // 1 prefilling (chunk of 8); 2 and 3 wait
  EXPECT_EQ(sched.state(1), RequestState::kPrefilling);
  EXPECT_TRUE(sched.abort(1));   // mid-prefill
  EXPECT_TRUE(sched.abort(3));   // waiting
  EXPECT_FALSE(sched.abort(3));  // already gone
  sched.check_invariants();
  driver.step();
  EXPECT_EQ(sched.state(2), RequestState::kDecoding);
  EXPECT_TRUE(sched.abort(2));
  sched.check_invariants();
  EXPECT_EQ(sched.stats().used_pages, 0);
  EXPECT_TRUE(sched.schedule().empty());
}

TEST(Scheduler, BudgetSmallerThanDecodeBatchDefersTheRest) {
  Scheduler sched(config(4, 256, 2, 8, false));
  FakeDriver driver{sched, {{1, 5}, {2, 5}, {3, 5}}, {}};
  for (RequestId id = 1; id <= 3; ++id) ASSERT_TRUE(sched.add(id, iota(1), 5).ok());
  EXPECT_EQ(decision_string(driver.step()), "1:0+1* 2:0+1*");
  // Oldest first: 1 and 2 decode, 3 waits for the next step's budget.
  EXPECT_EQ(decision_string(driver.step()), "1:1+1* 2:1+1*");
}

}  // namespace
}  // namespace tandem::runtime::test
