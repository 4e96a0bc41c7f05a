// Helpers shared by the transfer engine tests (tcp, ucx): engine configs, random data,
// region registration and one-write batches.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

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

}  // namespace tandem::disagg
