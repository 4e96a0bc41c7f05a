// Helpers shared by the transfer engine tests (tcp, ucx): engine configs, random data,
// region registration, one-write batches, and the checks both transports pass.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "disagg/socket.h"
#include "disagg/transfer_engine.h"

namespace tandem::disagg {

inline TransferConfig config_with(const std::string& token, int transfer_timeout_ms = 5000,
                                  const std::string& backend = "tcp") {
  TransferConfig c;
  c.backend = backend;
  c.token = token;
  c.transfer_timeout_ms = transfer_timeout_ms;
  c.connect_timeout_ms = 2000;
  return c;
}

inline std::unique_ptr<TransferEngine> make_engine(const TransferConfig& c) {
  std::unique_ptr<TransferEngine> e;
  Status s = make_transfer_engine(c, &e);
  EXPECT_TRUE(s.ok()) << s.message();
  return e;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
  for (; i < n; ++i) v[i] = uint8_t(rng());
  return v;
}

inline RegionHandle reg(TransferEngine& e, std::vector<uint8_t>& buf) {
  RegionHandle h;
  Status s = e.register_region(buf.data(), buf.size(), MemoryKind::kHost, 0, &h);
  EXPECT_TRUE(s.ok()) << s.message();
  return h;
}

inline Status send_one(TransferEngine& e, const RegionHandle& dst, const TransferWrite& w,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
  BatchId id;
  if (Status s = e.submit({&dst, 1}, {&w, 1}, &id); !s.ok()) return s;
  return e.wait(id, timeout);
}

// The checks both byte transports (tcp, ucx) pass, as functions of how a test makes its engine
// configs: `cfg(token, transfer_timeout_ms)`.
using ConfigFn = std::function<TransferConfig(const std::string& token, int transfer_timeout_ms)>;

// `batches` batches of 1-20 random writes (empty, small and up to 1 MiB) from a to b, then all
// waited for: b's region equals the expected bytes. disjoint: a batch's destination ranges do
// not overlap (UCX does not order puts within a batch); else later writes win, as tcp promises.
inline void check_random_batches(const ConfigFn& cfg, size_t bytes, int batches, bool disjoint) {
  auto a = make_engine(cfg("secret", 5000));
  auto b = make_engine(cfg("secret", 5000));
  std::vector<uint8_t> src = random_bytes(bytes, 1);
  std::vector<uint8_t> dst = random_bytes(bytes, 2);  // poison
  std::vector<uint8_t> expect = dst;
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst);
  std::mt19937 rng(3);
  std::vector<BatchId> ids;
  for (int batch = 0; batch < batches; ++batch) {
    std::vector<TransferWrite> writes(1 + rng() % 20), kept;
    for (TransferWrite& w : writes) {
      int kind = int(rng() % 10);
      w.length_bytes = kind == 0 ? rng() % 2 : kind < 8 ? 1 + rng() % 4096 : 1 + rng() % (1 << 20);
      w.src_region = hs.region_id;
      w.src_offset_bytes = rng() % (bytes - w.length_bytes + 1);
      w.dst_offset_bytes = rng() % (bytes - w.length_bytes + 1);
      const bool overlaps = std::any_of(kept.begin(), kept.end(), [&](const TransferWrite& k) {
        return w.dst_offset_bytes < k.dst_offset_bytes + k.length_bytes &&
               k.dst_offset_bytes < w.dst_offset_bytes + w.length_bytes;
      });
      if (disjoint && overlaps) continue;
      kept.push_back(w);
      std::memcpy(expect.data() + w.dst_offset_bytes, src.data() + w.src_offset_bytes,
                  w.length_bytes);
    }
    BatchId id;
    ASSERT_TRUE(a->submit({&hd, 1}, kept, &id).ok());
    ids.push_back(id);  // batches to one peer complete in submission order
  }
  for (BatchId id : ids) {
    Status s = a->wait(id, std::chrono::milliseconds(10000));
    ASSERT_TRUE(s.ok()) << s.message();
  }
  EXPECT_TRUE(dst == expect);
  bool done;
  EXPECT_EQ(a->poll(ids[0], &done).code(), StatusCode::kNotFound);  // reported, so forgotten
}

// Two engines send to each other at once from two threads, the whole region in random chunks.
inline void check_two_threads_both_directions(const ConfigFn& cfg) {
  auto a = make_engine(cfg("t", 5000));
  auto b = make_engine(cfg("t", 5000));
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

// One byte into the middle of a region (its neighbours untouched), an empty write at the end,
// the whole region of `bytes` at once, and an empty batch.
inline void check_tiny_and_large_writes(TransferEngine& a, TransferEngine& b, size_t bytes) {
  std::vector<uint8_t> src = random_bytes(bytes, 8), dst(bytes, 0x5a);
  RegionHandle hs = reg(a, src), hd = reg(b, dst);
  ASSERT_TRUE(send_one(a, hd, {hs.region_id, 17, 0, 3, 1}).ok());
  EXPECT_EQ(dst[3], src[17]);
  EXPECT_EQ(dst[2], 0x5a);
  EXPECT_EQ(dst[4], 0x5a);
  ASSERT_TRUE(send_one(a, hd, {hs.region_id, 0, 0, bytes, 0}).ok());  // empty, at the end
  ASSERT_TRUE(send_one(a, hd, {hs.region_id, 0, 0, 0, bytes}).ok());
  EXPECT_TRUE(dst == src);
  BatchId id;  // an empty batch completes too
  ASSERT_TRUE(a.submit({&hd, 1}, {}, &id).ok());
  EXPECT_TRUE(a.wait(id, std::chrono::milliseconds(5000)).ok());
}

// Senders with a wrong token fail fast (not by timing out) and write nothing; the right one
// then lands.
inline void check_wrong_token_refused(const ConfigFn& cfg) {
  auto b = make_engine(cfg("right token", 5000));
  std::vector<uint8_t> dst(4096, 0x11), src = random_bytes(4096, 10);
  RegionHandle hd = reg(*b, dst);
  for (const char* token : {"wrong token", "", "right toke", "right token!"}) {
    auto a = make_engine(cfg(token, 5000));
    RegionHandle hs = reg(*a, src);
    auto t0 = std::chrono::steady_clock::now();
    Status s = send_one(*a, hd, {hs.region_id, 0, 0, 0, 4096});
    EXPECT_FALSE(s.ok()) << "token '" << token << "' accepted";
    EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << s.message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  }
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](uint8_t x) { return x == 0x11; }));
  auto good = make_engine(cfg("right token", 5000));
  RegionHandle hs = reg(*good, src);
  Status s = send_one(*good, hd, {hs.region_id, 0, 0, 0, 4096});
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(dst == src);
}

// The receiver goes away during a batch of `rounds` x 64 MiB: the sender sees it within 3 s
// (an error, not its 8 s timeout). connect_first: one small write first, so the batch starts
// on an established connection.
inline void check_peer_dying_mid_transfer(const ConfigFn& cfg, int rounds, bool connect_first) {
  auto a = make_engine(cfg("t", 8000));
  auto b = make_engine(cfg("t", 5000));
  constexpr size_t kBytes = 64 << 20;
  std::vector<uint8_t> src(kBytes, 1), dst(kBytes);
  RegionHandle hs = reg(*a, src), hd = reg(*b, dst);
  if (connect_first) {
    ASSERT_TRUE(send_one(*a, hd, {hs.region_id, 0, 0, 0, 4096}).ok());
  }
  std::vector<TransferWrite> writes;
  for (int round = 0; round < rounds; ++round)  // far more than fits before b dies
    for (size_t off = 0; off < kBytes; off += 1 << 20)
      writes.push_back({hs.region_id, off, 0, off, 1 << 20});
  BatchId id;
  ASSERT_TRUE(a->submit({&hd, 1}, writes, &id).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  auto t0 = std::chrono::steady_clock::now();
  b.reset();  // the decode side goes away mid-transfer
  Status s = a->wait(id, std::chrono::milliseconds(20000));
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << "should see the peer go, not time out";
  EXPECT_LT(elapsed, std::chrono::seconds(3)) << s.message();
}

// A batch to a peer that never answers (`hd`), from an engine whose batches time out after
// 500 ms: it fails with kDeadlineExceeded, and a wait without limit ends at that deadline too.
inline void check_batch_deadline(TransferEngine& a, const RegionHandle& hs, const RegionHandle& hd,
                                 uint64_t bytes) {
  auto t0 = std::chrono::steady_clock::now();
  Status s = send_one(a, hd, {hs.region_id, 0, 0, 0, bytes});
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2500));
  BatchId id;
  TransferWrite w{hs.region_id, 0, 0, 0, bytes};
  ASSERT_TRUE(a.submit({&hd, 1}, {&w, 1}, &id).ok());
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(a.wait(id, std::chrono::milliseconds::max()).code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(2500));
}

// Two batches of `src` (registered as `hs`) to a peer that never answers (`hd`) from an engine
// with a long timeout: a short wait times out and leaves the batch running; cancel frees both
// (twice is harmless), and a fresh batch to a live peer (made by `cfg`) lands within `within`
// of the cancel.
inline void check_wait_timeout_then_cancel(TransferEngine& a, const ConfigFn& cfg,
                                           const std::vector<uint8_t>& src, const RegionHandle& hs,
                                           const RegionHandle& hd, std::chrono::seconds within) {
  TransferWrite w{hs.region_id, 0, 0, 0, src.size()};
  BatchId id, queued;
  ASSERT_TRUE(a.submit({&hd, 1}, {&w, 1}, &id).ok());
  ASSERT_TRUE(a.submit({&hd, 1}, {&w, 1}, &queued).ok());
  EXPECT_EQ(a.wait(id, std::chrono::milliseconds(100)).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(a.wait(id, std::chrono::milliseconds(0)).code(), StatusCode::kDeadlineExceeded);
  bool done = true;
  EXPECT_TRUE(a.poll(id, &done).ok());  // still running
  EXPECT_FALSE(done);
  auto t0 = std::chrono::steady_clock::now();
  a.cancel(id);
  a.cancel(queued);
  a.cancel(queued);  // twice is harmless
  EXPECT_EQ(a.poll(id, &done).code(), StatusCode::kNotFound);
  EXPECT_EQ(a.wait(queued, std::chrono::milliseconds(10)).code(), StatusCode::kNotFound);
  // The engine lets go of the peer promptly; a fresh batch still runs after.
  std::vector<uint8_t> dst(4096);
  auto b = make_engine(cfg("t", 5000));
  RegionHandle hb = reg(*b, dst);
  Status s = send_one(a, hb, {hs.region_id, 0, 0, 0, 4096});
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), 4096), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, within);
}

// `hd` names a port nothing listens on: kUnavailable, within 3 s.
inline void check_nobody_listening(TransferEngine& a, RegionHandle hd) {
  uint16_t port;
  {
    Socket s;
    ASSERT_TRUE(tcp_listen("127.0.0.1", 0, &s, &port).ok());
  }  // closed: nothing listens there now
  std::vector<uint8_t> src(16);
  RegionHandle hs = reg(a, src);
  hd.endpoint = "127.0.0.1:" + std::to_string(port);
  hd.length_bytes = 16;
  auto t0 = std::chrono::steady_clock::now();
  Status s = send_one(a, hd, {hs.region_id, 0, 0, 0, 16});
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

}  // namespace tandem::disagg
