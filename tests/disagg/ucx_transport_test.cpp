// The ucx transfer engine between in-process engines, once over UCX's tcp transport and once
// over shared memory (UCX_TLS per test): random data over many batches, tiny and large
// writes, two sending threads, bounds errors at submit, wrong tokens, a peer dying
// mid-transfer, a peer that never answers (timeout, cancel, not holding up others), nobody
// listening. Skipped when the build has no UCX; then "ucx" must be a clear error instead.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "disagg/socket.h"
#include "tests/disagg/transfer_test_util.h"

namespace tandem::disagg {
namespace {

using std::chrono::milliseconds;

bool ucx_built() {
  auto names = transfer_backends();
  return std::find(names.begin(), names.end(), "ucx") != names.end();
}

TEST(DisaggUcxBuild, BackendListAndFactoryAgree) {
  TransferConfig c = config_with("t", 5000, "ucx");
  std::unique_ptr<TransferEngine> e;
  Status s = make_transfer_engine(c, &e);
  if (ucx_built()) {
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(e->backend(), "ucx");
  } else {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("no UCX"), std::string::npos) << s.message();
  }
}

// The parameter is UCX_TLS for both engines of a test.
class DisaggUcx : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!ucx_built()) GTEST_SKIP() << "this build has no UCX";
    setenv("UCX_TLS", GetParam(), 1);
    setenv("UCX_NET_DEVICES", "lo", 1);  // CI has loopback only
  }
  void TearDown() override {
    unsetenv("UCX_TLS");
    unsetenv("UCX_NET_DEVICES");
  }
  static TransferConfig config(const std::string& token, int transfer_timeout_ms = 5000) {
    return config_with(token, transfer_timeout_ms, "ucx");
  }
};

// UCX does not order puts within a batch: each batch's destinations are disjoint.
TEST_P(DisaggUcx, ManyBatchesOfRandomWrites) { check_random_batches(config, 4 << 20, 60, true); }

TEST_P(DisaggUcx, TwoThreadsBothDirections) { check_two_threads_both_directions(config); }

TEST_P(DisaggUcx, TinyAndLargeWritesAndSeveralRegions) {
  auto a = make_engine(config("t"));
  auto b = make_engine(config("t"));
  check_tiny_and_large_writes(*a, *b, 24 << 20);
  std::vector<uint8_t> src = random_bytes(3 * 4096, 8);
  RegionHandle hs = reg(*a, src);
  BatchId id;
  // One batch into three regions of the peer (like one KV region per layer).
  std::vector<std::vector<uint8_t>> layers(3, std::vector<uint8_t>(64 << 10, 0x33));
  std::vector<RegionHandle> hl;
  for (auto& l : layers) hl.push_back(reg(*b, l));
  std::vector<TransferWrite> writes;
  for (uint32_t l = 0; l < 3; ++l) writes.push_back({hs.region_id, l * 4096u, l, 512, 4096});
  ASSERT_TRUE(a->submit(hl, writes, &id).ok());
  ASSERT_TRUE(a->wait(id, milliseconds(5000)).ok());
  for (uint32_t l = 0; l < 3; ++l) {
    EXPECT_EQ(std::memcmp(layers[l].data() + 512, src.data() + l * 4096, 4096), 0) << l;
    EXPECT_EQ(layers[l][511], 0x33);
    EXPECT_EQ(layers[l][512 + 4096], 0x33);
  }
}

// One-sided writes cannot be checked by the receiver, so submit checks every range against
// the handles; nothing is written for a rejected batch.
TEST_P(DisaggUcx, BoundsAreCheckedAtSubmit) {
  auto a = make_engine(config("t"));
  auto b = make_engine(config("t"));
  std::vector<uint8_t> src = random_bytes(1 << 16, 9);
  std::vector<uint8_t> guarded(3 * 4096, 0xab);  // [guard | region | guard]
  RegionHandle hs = reg(*a, src);
  RegionHandle hd;
  ASSERT_TRUE(b->register_region(guarded.data() + 4096, 4096, MemoryKind::kHost, 0, &hd).ok());
  BatchId id;
  for (TransferWrite w : {TransferWrite{hs.region_id, 0, 0, 4000, 100},      // past the end
                          TransferWrite{hs.region_id, 0, 0, uint64_t(-200), 100},  // wraps
                          TransferWrite{hs.region_id, 0, 0, 1, 4096},
                          TransferWrite{hs.region_id, (1 << 16) - 8, 0, 0, 16},  // source
                          TransferWrite{hs.region_id, 0, 1, 0, 16},  // no dst_regions[1]
                          TransferWrite{hs.region_id + 1, 0, 0, 0, 16}})  // unknown source
    EXPECT_EQ(a->submit({&hd, 1}, {&w, 1}, &id).code(), StatusCode::kInvalidArgument);
  std::this_thread::sleep_for(milliseconds(20));
  for (size_t i = 0; i < guarded.size(); ++i) ASSERT_EQ(guarded[i], 0xab) << "byte " << i;
  ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, 0, 4096}).ok());
  EXPECT_EQ(std::memcmp(guarded.data() + 4096, src.data(), 4096), 0);
  EXPECT_EQ(guarded[4095], 0xab);
  EXPECT_EQ(guarded[8192], 0xab);
  // A source region in use by a batch waits for it; afterwards it is unknown to submit.
  ASSERT_TRUE(a->unregister_region(hs.region_id).ok());
  TransferWrite w{hs.region_id, 0, 0, 0, 16};
  EXPECT_EQ(a->submit({&hd, 1}, {&w, 1}, &id).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->unregister_region(hs.region_id).code(), StatusCode::kNotFound);
}

TEST_P(DisaggUcx, WrongTokenIsRefused) { check_wrong_token_refused(config); }

TEST_P(DisaggUcx, PeerDyingMidTransferFailsWithinTheTimeout) {
  check_peer_dying_mid_transfer(config, 32, true);  // 2 GiB, on an established connection
}

// A tcp listener nobody accepts on: UCX's connection never completes, the token is never
// answered, so the batch must fail at its deadline.
struct SilentListener {
  Socket listener;
  std::string endpoint;
  SilentListener() {
    uint16_t port;
    EXPECT_TRUE(tcp_listen("127.0.0.1", 0, &listener, &port).ok());
    endpoint = "127.0.0.1:" + std::to_string(port);
  }
  RegionHandle handle() const {
    RegionHandle h;
    h.backend = "ucx";
    h.endpoint = endpoint;
    h.region_id = 1;
    h.length_bytes = 1ull << 40;
    h.ipc_handle.assign(64, 0x7f);  // never unpacked: the handshake comes first
    return h;
  }
};

TEST_P(DisaggUcx, SilentPeerTimesOut) {
  SilentListener peer;
  TransferConfig c = config("t", 500);
  c.connect_timeout_ms = 5000;  // the batch deadline comes first
  auto a = make_engine(c);
  std::vector<uint8_t> src(1 << 20, 3);
  check_batch_deadline(*a, reg(*a, src), peer.handle(), src.size());
}

TEST_P(DisaggUcx, WaitTimeoutThenCancelFreesTheBatch) {
  SilentListener peer;
  TransferConfig c = config("t", 60000);
  c.connect_timeout_ms = 60000;
  auto a = make_engine(c);
  std::vector<uint8_t> src(1 << 20, 3);
  const RegionHandle hs = reg(*a, src), hd = peer.handle();
  check_wait_timeout_then_cancel(*a, config, src, hs, hd, std::chrono::seconds(3));
  TransferWrite w{hs.region_id, 0, 0, 0, src.size()};
  BatchId id;
  ASSERT_TRUE(a->submit({&hd, 1}, {&w, 1}, &id).ok());  // one more for the silent peer
  std::this_thread::sleep_for(milliseconds(50));
  const auto t0 = std::chrono::steady_clock::now();
  a.reset();  // and the engine shuts down without waiting for it
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

// Batches to different peers run side by side: a peer that never answers does not hold up
// a live one.
TEST_P(DisaggUcx, SilentPeerDoesNotHoldUpOthers) {
  SilentListener silent;
  TransferConfig c = config("t", 5000);
  c.connect_timeout_ms = 5000;
  auto a = make_engine(c);
  auto b = make_engine(config("t"));
  std::vector<uint8_t> src = random_bytes(1 << 20, 14), dst(1 << 20);
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst), hq = silent.handle();
  TransferWrite w{hs.region_id, 0, 0, 0, src.size()};
  BatchId stuck, live;
  ASSERT_TRUE(a->submit({&hq, 1}, {&w, 1}, &stuck).ok());
  std::this_thread::sleep_for(milliseconds(20));
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(a->submit({&hd, 1}, {&w, 1}, &live).ok());
  Status s = a->wait(live, milliseconds(4000));
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_TRUE(dst == src);
  bool done = true;
  EXPECT_TRUE(a->poll(stuck, &done).ok());
  EXPECT_FALSE(done);  // still waiting for its handshake
  a->cancel(stuck);
}

TEST_P(DisaggUcx, NobodyListeningIsUnavailable) {
  auto a = make_engine(config("t"));
  check_nobody_listening(*a, SilentListener().handle());
}

TEST_P(DisaggUcx, SubmitAndRegisterErrors) {
  auto a = make_engine(config("t"));
  std::vector<uint8_t> src(64);
  RegionHandle hs = reg(*a, src), other = hs, tcp = hs, bare = hs;
  other.endpoint = "127.0.0.1:1";
  tcp.backend = "tcp";
  bare.ipc_handle.clear();
  TransferWrite w{hs.region_id, 0, 0, 0, 8};
  BatchId id;
  EXPECT_FALSE(a->submit({}, {&w, 1}, &id).ok());
  RegionHandle two[] = {hs, other};
  EXPECT_EQ(a->submit(two, {&w, 1}, &id).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->submit({&tcp, 1}, {&w, 1}, &id).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->submit({&bare, 1}, {&w, 1}, &id).code(), StatusCode::kInvalidArgument);
  RegionHandle h;
  EXPECT_FALSE(a->register_region(nullptr, 8, MemoryKind::kHost, 0, &h).ok());
  EXPECT_FALSE(a->register_region(src.data(), 0, MemoryKind::kHost, 0, &h).ok());
  EXPECT_EQ(a->unregister_region(12345).code(), StatusCode::kNotFound);
  EXPECT_EQ(hs.backend, "ucx");
  EXPECT_GT(hs.ipc_handle.size(), 8u);  // address + packed rkey
  TransferConfig c = config("t");
  c.listen_host = "no.such.host.invalid";
  std::unique_ptr<TransferEngine> e;
  EXPECT_FALSE(make_transfer_engine(c, &e).ok());
}

INSTANTIATE_TEST_SUITE_P(Tls, DisaggUcx, ::testing::Values("tcp", "sm,self,tcp"),
                         [](const auto& info) {
                           return std::string(info.param[0] == 't' ? "tcp" : "shm");
                         });

}  // namespace
}  // namespace tandem::disagg
