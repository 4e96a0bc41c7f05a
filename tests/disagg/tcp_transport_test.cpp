// The tcp transfer engine between in-process engines: random data over many batches, tiny
// and large writes, two sending threads, bounds violations, wrong tokens, a peer dying or
// stalling mid-transfer (an error within the timeout, never a hang), cancel and timeouts.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "disagg/socket.h"
#include "disagg/transfer_engine.h"
#include "tests/disagg/transfer_test_util.h"

namespace tandem::disagg {
namespace {

using std::chrono::milliseconds;

TEST(DisaggTcp, ManyBatchesOfRandomWrites) {
  auto a = make_engine(config_with("secret"));
  auto b = make_engine(config_with("secret"));
  constexpr size_t kBytes = 8 << 20;
  std::vector<uint8_t> src = random_bytes(kBytes, 1);
  std::vector<uint8_t> dst = random_bytes(kBytes, 2);  // poison
  std::vector<uint8_t> expect = dst;
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst);
  std::mt19937 rng(3);
  std::vector<BatchId> ids;
  for (int batch = 0; batch < 100; ++batch) {
    std::vector<TransferWrite> writes(1 + rng() % 20);
    for (TransferWrite& w : writes) {
      int kind = int(rng() % 10);
      w.length_bytes = kind == 0 ? rng() % 2 : kind < 8 ? 1 + rng() % 4096 : 1 + rng() % (1 << 20);
      w.src_region = hs.region_id;
      w.src_offset_bytes = rng() % (kBytes - w.length_bytes + 1);
      w.dst_offset_bytes = rng() % (kBytes - w.length_bytes + 1);
      // Batches to one peer land in submission order, writes within a batch in order.
      std::memcpy(expect.data() + w.dst_offset_bytes, src.data() + w.src_offset_bytes,
                  w.length_bytes);
    }
    BatchId id;
    ASSERT_TRUE(a->submit({&hd, 1}, writes, &id).ok());
    ids.push_back(id);
  }
  for (BatchId id : ids) {
    Status s = a->wait(id, milliseconds(10000));
    ASSERT_TRUE(s.ok()) << s.message();
  }
  EXPECT_TRUE(dst == expect);
  bool done;
  EXPECT_EQ(a->poll(ids[0], &done).code(), StatusCode::kNotFound);  // reported, so forgotten
}

TEST(DisaggTcp, TwoThreadsBothDirections) {
  auto a = make_engine(config_with("t"));
  auto b = make_engine(config_with("t"));
  constexpr size_t kBytes = 4 << 20;
  std::vector<uint8_t> a_src = random_bytes(kBytes, 4), b_src = random_bytes(kBytes, 5);
  std::vector<uint8_t> a_dst(kBytes, 0xee), b_dst(kBytes, 0xdd);
  RegionHandle a_s = reg(*a, a_src), b_s = reg(*b, b_src), a_d = reg(*a, a_dst),
               b_d = reg(*b, b_dst);
  auto pump = [](TransferEngine* from, RegionHandle src, RegionHandle dst, uint32_t seed,
                 Status* result) {
    std::mt19937 rng(seed);
    for (size_t off = 0; off < kBytes;) {  // disjoint chunks in random sizes, whole region
      size_t n = std::min<size_t>(kBytes - off, 1 + rng() % 100000);
      *result = send_one(*from, dst, {src.region_id, off, 0, off, n});
      if (!result->ok()) return;
      off += n;
    }
  };
  Status sa, sb;
  std::thread ta(pump, a.get(), a_s, b_d, 6u, &sa), tb(pump, b.get(), b_s, a_d, 7u, &sb);
  ta.join();
  tb.join();
  ASSERT_TRUE(sa.ok()) << sa.message();
  ASSERT_TRUE(sb.ok()) << sb.message();
  EXPECT_TRUE(b_dst == a_src);
  EXPECT_TRUE(a_dst == b_src);
}

TEST(DisaggTcp, TinyAndLargeWrites) {
  auto a = make_engine(config_with("t"));
  auto b = make_engine(config_with("t"));
  constexpr size_t kBytes = 48 << 20;
  std::vector<uint8_t> src = random_bytes(kBytes, 8), dst(kBytes, 0x5a);
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst);
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 17, 0, 3, 1}).ok());
  EXPECT_EQ(dst[3], src[17]);
  EXPECT_EQ(dst[2], 0x5a);
  EXPECT_EQ(dst[4], 0x5a);
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, kBytes, 0}).ok());  // empty, at the end
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, 0, kBytes}).ok());
  EXPECT_TRUE(dst == src);
  BatchId id;  // an empty batch completes too
  ASSERT_TRUE(a->submit({&hd, 1}, {}, &id).ok());
  EXPECT_TRUE(a->wait(id, milliseconds(5000)).ok());
}

TEST(DisaggTcp, ReceiverRejectsWritesOutsideItsRegions) {
  auto a = make_engine(config_with("t"));
  auto b = make_engine(config_with("t"));
  std::vector<uint8_t> src = random_bytes(1 << 16, 9);
  std::vector<uint8_t> guarded(3 * 4096, 0xab);  // [guard | region | guard]
  RegionHandle hs = reg(*a, src);
  RegionHandle hd;
  ASSERT_TRUE(b->register_region(guarded.data() + 4096, 4096, MemoryKind::kHost, 0, &hd).ok());
  // The sender checks its own view of the handle ...
  EXPECT_EQ(send_one(*a, hd, {hs.region_id, 0, 0, 4000, 100}).code(),
            StatusCode::kInvalidArgument);
  // ... and a forged handle that claims more is stopped by the receiver.
  RegionHandle forged = hd;
  forged.length_bytes = ~uint64_t(0);
  Status s = send_one(*a, forged, {hs.region_id, 0, 0, 4000, 200});
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.message();
  s = send_one(*a, forged, {hs.region_id, 0, 0, uint64_t(-200), 100});  // huge offset
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.message();
  forged.region_id ^= 0x1234;  // a region the receiver never registered
  s = send_one(*a, forged, {hs.region_id, 0, 0, 0, 16});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
  for (size_t i = 0; i < guarded.size(); ++i) ASSERT_EQ(guarded[i], 0xab) << "byte " << i;
  // The connection stays in step: a valid write afterwards lands.
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, 0, 4096}).ok());
  EXPECT_EQ(std::memcmp(guarded.data() + 4096, src.data(), 4096), 0);
  EXPECT_EQ(guarded[4095], 0xab);
  EXPECT_EQ(guarded[8192], 0xab);
  // Unregistered regions take no more writes.
  ASSERT_TRUE(b->unregister_region(hd.region_id).ok());
  EXPECT_FALSE(send_one(*a, hd, {hs.region_id, 0, 0, 0, 16}).ok());
}

TEST(DisaggTcp, WrongTokenIsRefused) {
  auto b = make_engine(config_with("right token"));
  std::vector<uint8_t> dst(4096, 0x11), src = random_bytes(4096, 10);
  RegionHandle hd = reg(*b, dst);
  for (const char* token : {"wrong token", "", "right toke", "right token!"}) {
    auto a = make_engine(config_with(token));
    RegionHandle hs = reg(*a, src);
    auto t0 = std::chrono::steady_clock::now();
    Status s = send_one(*a, hd, {hs.region_id, 0, 0, 0, 4096});
    EXPECT_FALSE(s.ok()) << "token '" << token << "' accepted";
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  }
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](uint8_t x) { return x == 0x11; }));
  auto good = make_engine(config_with("right token"));
  RegionHandle hs = reg(*good, src);
  EXPECT_TRUE(send_one(*good, hd, {hs.region_id, 0, 0, 0, 4096}).ok());
  EXPECT_TRUE(dst == src);
}

TEST(DisaggTcp, ConstantTimeCompare) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "ab"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  EXPECT_EQ(resolve_pd_token("flag"), "flag");
}

TEST(DisaggTcp, PeerDyingMidTransferFailsWithinTheTimeout) {
  auto a = make_engine(config_with("t", 8000));
  auto b = make_engine(config_with("t"));
  constexpr size_t kBytes = 64 << 20;
  std::vector<uint8_t> src(kBytes, 1), dst(kBytes);
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst);
  std::vector<TransferWrite> writes;
  for (int round = 0; round < 8; ++round)  // 512 MiB: far more than fits before b dies
    for (size_t off = 0; off < kBytes; off += 1 << 20)
      writes.push_back({hs.region_id, off, 0, off, 1 << 20});
  BatchId id;
  ASSERT_TRUE(a->submit({&hd, 1}, writes, &id).ok());
  std::this_thread::sleep_for(milliseconds(30));
  auto t0 = std::chrono::steady_clock::now();
  b.reset();  // the decode side goes away mid-transfer
  Status s = a->wait(id, milliseconds(20000));
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << "should see the peer go, not time out";
  EXPECT_LT(elapsed, std::chrono::seconds(3)) << s.message();
}

// A peer that passes the handshake and then never reads: the sender must time out.
struct StalledPeer {
  Socket listener, conn;
  std::string endpoint;
  std::thread thread;
  std::atomic<bool> stop{false};
  explicit StalledPeer(const std::string& token) {
    uint16_t port;
    EXPECT_TRUE(tcp_listen("127.0.0.1", 0, &listener, &port).ok());
    endpoint = "127.0.0.1:" + std::to_string(port);
    thread = std::thread([this, token] {
      while (!stop && !conn.valid()) tcp_accept(listener, milliseconds(20), &conn);
      if (conn.valid()) server_handshake(conn, token, Clock::now() + std::chrono::seconds(5));
      while (!stop) std::this_thread::sleep_for(milliseconds(5));
    });
  }
  ~StalledPeer() {
    stop = true;
    thread.join();
  }
  RegionHandle handle() const {
    RegionHandle h;
    h.backend = "tcp";
    h.endpoint = endpoint;
    h.region_id = 1;
    h.length_bytes = 1ull << 40;
    return h;
  }
};

TEST(DisaggTcp, StalledPeerTimesOut) {
  StalledPeer peer("t");
  auto a = make_engine(config_with("t", 500));
  std::vector<uint8_t> src(32 << 20, 3);
  RegionHandle hs = reg(*a, src), hd = peer.handle();
  auto t0 = std::chrono::steady_clock::now();
  Status s = send_one(*a, hd, {hs.region_id, 0, 0, 0, src.size()});
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2500));
  // Waiting "forever" is bounded by the batch's own deadline.
  BatchId id;
  TransferWrite w{hs.region_id, 0, 0, 0, src.size()};
  ASSERT_TRUE(a->submit({&hd, 1}, {&w, 1}, &id).ok());
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(a->wait(id, milliseconds::max()).code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2500));
}

TEST(DisaggTcp, WaitTimeoutThenCancelFreesTheBatch) {
  StalledPeer peer("t");
  auto a = make_engine(config_with("t", 60000));
  std::vector<uint8_t> src(32 << 20, 3);
  RegionHandle hs = reg(*a, src), hd = peer.handle();
  TransferWrite w{hs.region_id, 0, 0, 0, src.size()};
  BatchId id, queued;
  ASSERT_TRUE(a->submit({&hd, 1}, {&w, 1}, &id).ok());
  ASSERT_TRUE(a->submit({&hd, 1}, {&w, 1}, &queued).ok());
  EXPECT_EQ(a->wait(id, milliseconds(100)).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(a->wait(id, milliseconds(0)).code(), StatusCode::kDeadlineExceeded);
  bool done = true;
  EXPECT_TRUE(a->poll(id, &done).ok());  // still running
  EXPECT_FALSE(done);
  auto t0 = std::chrono::steady_clock::now();
  a->cancel(id);
  a->cancel(queued);
  a->cancel(queued);  // twice is harmless
  EXPECT_EQ(a->poll(id, &done).code(), StatusCode::kNotFound);
  EXPECT_EQ(a->wait(queued, milliseconds(10)).code(), StatusCode::kNotFound);
  // The worker lets go of the stalled connection promptly; a fresh batch still runs after.
  std::vector<uint8_t> dst(4096);
  auto b = make_engine(config_with("t"));
  RegionHandle hb = reg(*b, dst);
  EXPECT_TRUE(send_one(*a, hb, {hs.region_id, 0, 0, 0, 4096}).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  a.reset();  // and the engine shuts down without waiting for the stalled peer
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST(DisaggTcp, NobodyListeningIsUnavailable) {
  uint16_t port;
  {
    Socket s;
    ASSERT_TRUE(tcp_listen("127.0.0.1", 0, &s, &port).ok());
  }  // closed: nothing listens there now
  auto a = make_engine(config_with("t"));
  std::vector<uint8_t> src(16);
  RegionHandle hs = reg(*a, src), hd;
  hd.backend = "tcp";
  hd.endpoint = "127.0.0.1:" + std::to_string(port);
  hd.length_bytes = 16;
  EXPECT_EQ(send_one(*a, hd, {hs.region_id, 0, 0, 0, 16}).code(), StatusCode::kUnavailable);
}

// Garbage on the transfer port, before and after a valid handshake, writes nothing and
// leaves the engine serving.
TEST(DisaggTcp, GarbageOnTheWireIsHarmless) {
  auto b = make_engine(config_with("t"));
  std::vector<uint8_t> dst(1 << 16, 0x42);
  RegionHandle hd = reg(*b, dst);
  std::mt19937 rng(12);
  for (int iter = 0; iter < 60; ++iter) {
    Socket s;
    ASSERT_TRUE(tcp_connect(hd.endpoint, Clock::now() + milliseconds(1000), &s).ok());
    auto deadline = Clock::now() + milliseconds(1000);
    if (iter % 2 == 1) {
      ASSERT_TRUE(client_handshake(s, "t", deadline).ok());
    }
    std::vector<uint8_t> junk = random_bytes(1 + rng() % 2000, uint32_t(iter));
    if (iter % 3 == 0 && junk.size() >= 40) {  // a real segment magic, random fields
      const uint8_t magic[] = {'T', 'S', 'E', 'G', 1, 0, 0, 0};
      std::memcpy(junk.data(), magic, 8);
      std::memcpy(junk.data() + 16, &hd.region_id, 8);
    }
    (void)send_all(s, junk, deadline);
  }
  std::this_thread::sleep_for(milliseconds(100));
  for (size_t i = 0; i < dst.size(); ++i) ASSERT_EQ(dst[i], 0x42) << "byte " << i;
  auto a = make_engine(config_with("t"));
  std::vector<uint8_t> src = random_bytes(dst.size(), 13);
  RegionHandle hs = reg(*a, src);
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, 0, src.size()}).ok());
  EXPECT_TRUE(dst == src);
}

TEST(DisaggTcp, SubmitAndFactoryErrors) {
  auto a = make_engine(config_with("t"));
  std::vector<uint8_t> src(64);
  RegionHandle hs = reg(*a, src), other = hs;
  other.endpoint = "127.0.0.1:1";
  TransferWrite w{hs.region_id, 0, 0, 0, 8};
  BatchId id;
  EXPECT_FALSE(a->submit({}, {&w, 1}, &id).ok());
  RegionHandle two[] = {hs, other};
  EXPECT_FALSE(a->submit(two, {&w, 1}, &id).ok());  // two peers in one batch
  TransferWrite bad_src{hs.region_id, 60, 0, 0, 8}, bad_index{hs.region_id, 0, 1, 0, 8},
      unknown{hs.region_id + 1, 0, 0, 0, 8};
  for (const TransferWrite& b : {bad_src, bad_index, unknown})
    EXPECT_EQ(a->submit({&hs, 1}, {&b, 1}, &id).code(), StatusCode::kInvalidArgument);
  RegionHandle h;
  EXPECT_FALSE(a->register_region(nullptr, 8, MemoryKind::kHost, 0, &h).ok());
  EXPECT_EQ(a->unregister_region(12345).code(), StatusCode::kNotFound);
  std::unique_ptr<TransferEngine> e;
  TransferConfig c;
  c.backend = "carrier-pigeon";
  EXPECT_EQ(make_transfer_engine(c, &e).code(), StatusCode::kInvalidArgument);
  c.backend = "ucx";  // tests/disagg/ucx_transport_test.cpp covers it when built
  auto names = transfer_backends();
  if (std::find(names.begin(), names.end(), "ucx") == names.end())
    EXPECT_EQ(make_transfer_engine(c, &e).code(), StatusCode::kInvalidArgument);
  c.backend = "tcp";
  c.transfer_timeout_ms = 0;
  EXPECT_EQ(make_transfer_engine(c, &e).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::disagg
