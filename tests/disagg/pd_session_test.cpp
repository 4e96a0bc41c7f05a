// One room's control exchange with each failure of the issue injected on the wire: prefill
// dies, goes silent or aborts; messages for another room, out of order or too early; a KV
// layout mismatch; decode aborts or dies. Each ends in a returned error, promptly.
#include <gtest/gtest.h>

#include <thread>

#include "disagg/pd_session.h"

namespace tandem::disagg {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

struct Pair {
  std::unique_ptr<BootstrapChannel> prefill, decode;
};

Pair connect_pair() {
  std::unique_ptr<BootstrapListener> l;
  EXPECT_TRUE(BootstrapListener::listen("127.0.0.1", 0, "tok", milliseconds(1000), &l).ok());
  Pair p;
  std::thread t([&] { EXPECT_TRUE(l->accept(milliseconds(2000), &p.prefill).ok()); });
  EXPECT_TRUE(bootstrap_connect(l->endpoint(), "tok", milliseconds(1000), &p.decode).ok());
  t.join();
  return p;
}

const KvLayout kLayout{4, 2, 1152};

KvPagesRequest request() {
  KvPagesRequest r;
  r.room_id = 77;
  r.page_size = 4;
  r.num_layers = 2;
  r.bytes_per_token_layer = 1152;
  r.num_prompt_tokens = 10;
  r.page_ids = {5, 1, 8};
  r.regions.resize(2);
  return r;
}

// Decode sends the request; prefill accepts it; returns the pair ready for chunks.
Pair started() {
  Pair p = connect_pair();
  KvPagesRequest got;
  std::thread t([&] {
    EXPECT_TRUE(prefill_receive_request(*p.prefill, kLayout, milliseconds(1000), &got).ok());
  });
  EXPECT_TRUE(decode_send_request(*p.decode, request(), milliseconds(1000)).ok());
  t.join();
  EXPECT_TRUE(got == request());
  return p;
}

Status receive(Pair& p, milliseconds gap = milliseconds(2000), PrefillMeta* out = nullptr) {
  PrefillMeta meta;
  return decode_receive(*p.decode, request(), gap, out ? out : &meta);
}

// What prefill hears after decode gave up.
bool prefill_heard_abort(Pair& p) {
  Message m;
  return p.prefill->recv(&m, milliseconds(1000)).ok() && std::holds_alternative<Abort>(m);
}

TEST(DisaggSession, HappyPath) {
  Pair p = started();
  ASSERT_TRUE(prefill_chunk_done(*p.prefill, {77, 0, 0, 8, false}, milliseconds(500)).ok());
  ASSERT_TRUE(prefill_chunk_done(*p.prefill, {77, 1, 8, 2, true}, milliseconds(500)).ok());
  ASSERT_TRUE(p.prefill->send(PrefillMeta{77, 42, -0.5f, {{42, -0.5f}}, 10}, milliseconds(500))
                  .ok());
  PrefillMeta meta;
  Status s = receive(p, milliseconds(2000), &meta);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(meta.first_token, 42);
}

TEST(DisaggSession, PrefillDiesMidway) {
  Pair p = started();
  ASSERT_TRUE(prefill_chunk_done(*p.prefill, {77, 0, 0, 8, false}, milliseconds(500)).ok());
  p.prefill.reset();
  auto t0 = Clock::now();
  Status s = receive(p, milliseconds(5000));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));
}

TEST(DisaggSession, PrefillSilentTimesOutAndAborts) {
  Pair p = started();
  auto t0 = Clock::now();
  Status s = receive(p, milliseconds(200));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.message();
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));
  EXPECT_TRUE(prefill_heard_abort(p));
}

TEST(DisaggSession, PrefillAborts) {
  Pair p = started();
  ASSERT_TRUE(p.prefill->send(Abort{77, "out of memory"}, milliseconds(500)).ok());
  Status s = receive(p);
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_NE(s.message().find("out of memory"), std::string::npos);
}

TEST(DisaggSession, WrongRoomOrOrderIsRejected) {
  const std::vector<std::vector<Message>> cases = {
      {KvChunkDone{78, 0, 0, 10, true}},                                      // other room
      {KvChunkDone{77, 0, 0, 10, true}, PrefillMeta{78, 1, 0, {}, 10}},       // other room
      {KvChunkDone{77, 1, 0, 8, false}},                                      // chunk index
      {KvChunkDone{77, 0, 2, 8, false}},                                      // gap
      {KvChunkDone{77, 0, 0, 11, true}},                                      // too many
      {KvChunkDone{77, 0, 0, 8, false}, PrefillMeta{77, 1, 0, {}, 10}},       // too early
      {KvChunkDone{77, 0, 0, 10, true}, KvChunkDone{77, 1, 10, 0, true}},     // after last
      {Ack{77, true, ""}},                                                    // wrong type
      {Abort{78, "x"}},                                                       // other room
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    Pair p = started();
    for (const Message& m : cases[i]) ASSERT_TRUE(p.prefill->send(m, milliseconds(500)).ok());
    Status s = receive(p);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << "case " << i << ": " << s.message();
    EXPECT_TRUE(prefill_heard_abort(p)) << "case " << i;
  }
}

TEST(DisaggSession, LayoutMismatchIsRefused) {
  Pair p = connect_pair();
  Status prefill_status;
  std::thread t([&] {
    KvPagesRequest got;
    prefill_status = prefill_receive_request(*p.prefill, {4, 3, 1152}, milliseconds(1000), &got);
  });
  Status s = decode_send_request(*p.decode, request(), milliseconds(1000));
  t.join();
  EXPECT_EQ(prefill_status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_NE(s.message().find("layout"), std::string::npos) << s.message();

  Pair q = connect_pair();  // too few pages for the prompt
  KvPagesRequest small = request();
  small.page_ids = {1, 2};
  std::thread u([&] {
    KvPagesRequest got;
    prefill_status = prefill_receive_request(*q.prefill, kLayout, milliseconds(1000), &got);
  });
  s = decode_send_request(*q.decode, small, milliseconds(1000));
  u.join();
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.message();
}

TEST(DisaggSession, BootstrapTimeout) {
  Pair p = connect_pair();  // prefill never answers
  auto t0 = Clock::now();
  Status s = decode_send_request(*p.decode, request(), milliseconds(200));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.message();
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));
  KvPagesRequest got;  // and a prefill side waiting for a request that never comes
  Pair q = connect_pair();
  EXPECT_EQ(prefill_receive_request(*q.prefill, kLayout, milliseconds(100), &got).code(),
            StatusCode::kDeadlineExceeded);
}

TEST(DisaggSession, DecodeAbortsOrDies) {
  Pair p = started();
  ASSERT_TRUE(p.decode->send(Abort{77, "client went away"}, milliseconds(500)).ok());
  std::this_thread::sleep_for(milliseconds(20));
  Status s = prefill_chunk_done(*p.prefill, {77, 0, 0, 8, false}, milliseconds(500));
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_NE(s.message().find("client went away"), std::string::npos);

  Pair q = started();
  q.decode.reset();
  std::this_thread::sleep_for(milliseconds(20));
  s = prefill_chunk_done(*q.prefill, {77, 0, 0, 8, false}, milliseconds(500));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
}

}  // namespace
}  // namespace tandem::disagg
