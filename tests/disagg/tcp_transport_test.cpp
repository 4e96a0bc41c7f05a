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

TransferConfig tcp_config(const std::string& token, int transfer_timeout_ms) {
  return config_with(token, transfer_timeout_ms, "tcp");
}

// Writes within a batch land in order on tcp, so the random batches may overlap.
TEST(DisaggTcp, ManyBatchesOfRandomWrites) { check_random_batches(tcp_config, 8 << 20, 100, false); }

TEST(DisaggTcp, TwoThreadsBothDirections) { check_two_threads_both_directions(tcp_config); }

TEST(DisaggTcp, TinyAndLargeWrites) {
  auto a = make_engine(config_with("t"));
  auto b = make_engine(config_with("t"));
  check_tiny_and_large_writes(*a, *b, 48 << 20);
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

TEST(DisaggTcp, WrongTokenIsRefused) { check_wrong_token_refused(tcp_config); }

TEST(DisaggTcp, ConstantTimeCompare) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "ab"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  EXPECT_EQ(resolve_pd_token("flag"), "flag");
}

TEST(DisaggTcp, PeerDyingMidTransferFailsWithinTheTimeout) {
  check_peer_dying_mid_transfer(tcp_config, 8, false);  // 512 MiB
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
  check_batch_deadline(*a, reg(*a, src), peer.handle(), src.size());
}

TEST(DisaggTcp, WaitTimeoutThenCancelFreesTheBatch) {
  StalledPeer peer("t");
  auto a = make_engine(config_with("t", 60000));
  std::vector<uint8_t> src(32 << 20, 3);
  check_wait_timeout_then_cancel(*a, tcp_config, src, reg(*a, src), peer.handle(),
                                 std::chrono::seconds(2));
  const auto t0 = std::chrono::steady_clock::now();
  a.reset();  // and the engine shuts down without waiting for the stalled peer
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(DisaggTcp, NobodyListeningIsUnavailable) {
  auto a = make_engine(config_with("t"));
  RegionHandle hd;
  hd.backend = "tcp";
  check_nobody_listening(*a, hd);
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
  if (std::find(names.begin(), names.end(), "ucx") == names.end()) {
    EXPECT_EQ(make_transfer_engine(c, &e).code(), StatusCode::kInvalidArgument);
  }
  c.backend = "tcp";
  c.transfer_timeout_ms = 0;
  EXPECT_EQ(make_transfer_engine(c, &e).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::disagg
