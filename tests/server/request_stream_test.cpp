// RequestStream's event-driven side, which the HTTP server's I/O threads use: try_next never
// blocks, on_push wakes the reader after each push (outside the stream's lock, so the wake-up
// may read the stream), and the blocking next() still works beside it.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/request_stream.h"

namespace tandem::runtime {
namespace {

StreamEvent token_event(int32_t index, int32_t token, bool finished = false) {
  StreamEvent ev;
  ev.index = index;
  ev.token_ids = {token};
  ev.finished = finished;
  if (finished) ev.finish_reason = FinishReason::kLength;
  return ev;
}

TEST(RequestStream, TryNextNeverBlocksAndEndsAfterEveryCompletion) {
  RequestStream s(7, /*n=*/2);
  StreamEvent ev;
  EXPECT_FALSE(s.try_next(ev));  // nothing yet: returns at once
  s.push(token_event(0, 11));
  s.push(token_event(1, 22, /*finished=*/true));
  ASSERT_TRUE(s.try_next(ev));
  EXPECT_EQ(ev.index, 0);
  EXPECT_EQ(ev.token_ids, std::vector<int32_t>{11});
  ASSERT_TRUE(s.try_next(ev));
  EXPECT_EQ(ev.index, 1);
  EXPECT_TRUE(ev.finished);
  EXPECT_FALSE(s.try_next(ev));
  s.push(token_event(0, 33, /*finished=*/true));
  ASSERT_TRUE(s.next(ev));  // the blocking reader sees the same queue
  EXPECT_EQ(ev.token_ids, std::vector<int32_t>{33});
  EXPECT_FALSE(s.next(ev));  // both completions finished and read: no wait
  EXPECT_FALSE(s.try_next(ev));
}

TEST(RequestStream, OnPushRunsOncePerPushOutsideTheLock) {
  RequestStream s(1, 1);
  int calls = 0;
  std::vector<int32_t> seen;
  s.set_on_push([&] {
    ++calls;
    StreamEvent ev;
    // The callback may read the stream: the lock is not held while it runs.
    while (s.try_next(ev)) seen.push_back(ev.token_ids[0]);
  });
  s.push(token_event(0, 1));
  s.push(token_event(0, 2));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(seen, (std::vector<int32_t>{1, 2}));
  s.set_on_push(nullptr);
  s.push(token_event(0, 3, true));
  EXPECT_EQ(calls, 2);
  StreamEvent ev;
  ASSERT_TRUE(s.try_next(ev));
  EXPECT_EQ(ev.token_ids[0], 3);
}

// An engine thread pushes while a reader sleeps until woken and drains with try_next, the way
// a connection coroutine does: every event arrives once, in order, and no wake-up is lost.
TEST(RequestStream, WakeUpsAreNotLostUnderConcurrentPushes) {
  constexpr int kEvents = 20000;
  RequestStream s(3, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool pending = false;
  s.set_on_push([&] {
    {
      std::lock_guard lk(mu);
      pending = true;
    }
    cv.notify_one();
  });
  std::thread engine([&] {
    for (int i = 0; i < kEvents; ++i) s.push(token_event(0, i, i == kEvents - 1));
  });
  std::vector<int32_t> got;
  bool finished = false;
  while (!finished) {
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return pending; });
      pending = false;
    }
    StreamEvent ev;
    while (s.try_next(ev)) {
      got.push_back(ev.token_ids[0]);
      finished = finished || ev.finished;
    }
  }
  engine.join();
  ASSERT_EQ(got.size(), size_t(kEvents));
  for (int i = 0; i < kEvents; ++i) ASSERT_EQ(got[size_t(i)], i);
}

}  // namespace
}  // namespace tandem::runtime
