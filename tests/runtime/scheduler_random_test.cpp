// Randomized scheduler runs: thousands of requests with random lengths, arrivals and aborts
// on pools small enough to force preemption. After every step: free + used + cached pages ==
// total, every request is waiting, running or done (none lost), and every finished request's
// output equals the one computed without a scheduler.
#include <gtest/gtest.h>

#include <random>
#include <unordered_set>

#include "tests/runtime/fake_runner.h"

namespace tandem::runtime::test {
namespace {

struct RandomCase {
  int32_t page_size;
  int64_t total_tokens;
  int32_t budget;
  int32_t max_running;
  bool prefix_cache;
  int32_t num_requests;
  uint32_t seed;
};

class SchedulerRandom : public ::testing::TestWithParam<RandomCase> {};

TEST_P(SchedulerRandom, InvariantsHoldAfterEveryStep) {
  const RandomCase rc = GetParam();
  SchedulerConfig config;
  config.page_size = rc.page_size;
  config.max_total_tokens = rc.total_tokens;
  config.max_batch_tokens = rc.budget;
  config.max_running_requests = rc.max_running;
  config.enable_prefix_cache = rc.prefix_cache;
  Scheduler sched(config);
  FakeDriver driver{sched, {}, {}};
  std::mt19937 rng(rc.seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  // Prompts share a few prefixes so the prefix cache is exercised too.
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p(size_t(uniform(1, 120)));
    for (int32_t& t : p) t = uniform(2, 1000);
    prefixes.push_back(p);
  }
  std::unordered_map<RequestId, std::vector<int32_t>> prompts;
  std::unordered_set<RequestId> live, aborted;
  RequestId next_id = 1;
  int64_t steps = 0;
  while (next_id <= RequestId(rc.num_requests) || !live.empty()) {
    // Arrivals: a burst now and then.
    for (int k = uniform(0, 3); k > 0 && next_id <= RequestId(rc.num_requests); --k) {
      std::vector<int32_t> prompt = prefixes[size_t(uniform(0, 7))];
      prompt.resize(prompt.size() * size_t(uniform(0, 1)));  // half start from scratch
      for (int n = uniform(1, 40); n > 0; --n) prompt.push_back(uniform(2, 1000));
      const int32_t max_new = uniform(1, std::max(40, 2 * rc.page_size));
      const size_t capacity = size_t(config.num_pages()) * size_t(config.page_size);
      while (prompt.size() + size_t(max_new) > capacity) prompt.pop_back();
      const RequestId id = next_id++;
      ASSERT_TRUE(sched.add(id, prompt, max_new).ok());
      prompts[id] = prompt;
      driver.max_new[id] = max_new;
      live.insert(id);
    }
    // Aborts: any live request, in any state.
    if (!live.empty() && uniform(0, 99) < 3) {
      auto it = live.begin();
      std::advance(it, uniform(0, int(live.size()) - 1));
      ASSERT_TRUE(sched.abort(*it));
      aborted.insert(*it);
      live.erase(it);
    }
    const Decision d = driver.step();
    ++steps;
    ASSERT_NO_THROW(sched.check_invariants()) << "step " << steps;
    ASSERT_LE(d.num_tokens, rc.budget);
    ASSERT_LE(int32_t(sched.running_ids().size()), rc.max_running);
    for (auto it = live.begin(); it != live.end();) {
      if (driver.finished.count(*it)) {
        it = live.erase(it);
      } else {
        ASSERT_TRUE(sched.contains(*it)) << "request " << *it << " was lost";
        ++it;
      }
    }
    ASSERT_LT(steps, 200000) << "no progress";
  }
  EXPECT_EQ(driver.finished.size() + aborted.size(), size_t(rc.num_requests));
  for (const auto& [id, output] : driver.finished) {
    ASSERT_EQ(output, fake_expected_output(prompts[id], driver.max_new[id])) << "request " << id;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.used_pages, 0);
  EXPECT_EQ(st.running + st.waiting, 0);
  EXPECT_EQ(st.evictable_pages, st.cached_pages);
  EXPECT_GT(st.preemptions, 0) << "the pool was meant to be small enough to preempt";
  if (rc.prefix_cache) {
    EXPECT_GT(st.prefix_hit_tokens, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Pools, SchedulerRandom,
    ::testing::Values(RandomCase{1, 160, 64, 32, true, 2000, 1},
                      RandomCase{4, 256, 48, 64, true, 2000, 2},
                      RandomCase{16, 512, 128, 16, true, 2000, 3},
                      RandomCase{16, 512, 128, 16, false, 2000, 4},
                      RandomCase{64, 768, 256, 256, true, 1000, 5},
                      RandomCase{3, 120, 7, 8, true, 1500, 6}),
    [](const auto& info) {
      const RandomCase& c = info.param;
      return "page" + std::to_string(c.page_size) + "_tokens" + std::to_string(c.total_tokens) +
             (c.prefix_cache ? "_cache" : "_nocache");
    });

}  // namespace
}  // namespace tandem::runtime::test
