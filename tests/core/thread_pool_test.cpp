#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/thread_pool.h"

namespace tandem {
namespace {

TEST(ThreadPool, CoversEveryIndexOnce) {
  set_cpu_num_threads(4);
  for (int64_t n : {0, 1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(n);
    parallel_for(n, 3, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << i;
  }
}

TEST(ThreadPool, NestedCallsRunInlineAndExceptionsPropagate) {
  set_cpu_num_threads(3);
  std::atomic<int64_t> sum{0};
  parallel_for(8, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      parallel_for(10, 1, [&](int64_t b2, int64_t e2) { sum += e2 - b2; });
    }
  });
  EXPECT_EQ(sum.load(), 80);
  EXPECT_THROW(parallel_for(100, 1, [](int64_t b, int64_t) {
                 if (b >= 50) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  // The pool still works after an exception.
  std::atomic<int> n{0};
  parallel_for(10, 1, [&](int64_t b, int64_t e) { n += int(e - b); });
  EXPECT_EQ(n.load(), 10);
}

// Back-to-back jobs of different sizes: a worker late to leave one job must never take, or
// count, a chunk of the next (each index is seen exactly once per job).
TEST(ThreadPool, BackToBackJobsNeverShareChunks) {
  set_cpu_num_threads(4);
  std::vector<std::atomic<int>> hits(64);
  for (int round = 0; round < 20000; ++round) {
    const int64_t n = 1 + round % 64;
    for (int64_t i = 0; i < n; ++i) hits[i] = 0;
    parallel_for(n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "round " << round << " index " << i;
  }
}

}  // namespace
}  // namespace tandem
