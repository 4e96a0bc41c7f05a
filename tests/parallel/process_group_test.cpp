// The in-process group: all_gather, all_to_all_v with uneven and empty blocks, and that a
// failing or out-of-step rank ends every rank with an error instead of a hang.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "parallel/in_process_group.h"

namespace tandem {
namespace {

TEST(InProcessGroup, AllGatherAndBarrier) {
  InProcessWorld world(3);
  std::vector<std::vector<int64_t>> got(3);
  const auto status = world.run([&](ProcessGroup& g) {
    g.barrier();
    got[g.rank()] = g.all_gather({g.rank() * 10, g.rank() * 10 + 1});
    g.barrier();
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(status[r].ok()) << status[r].message();
    EXPECT_EQ(got[r], (std::vector<int64_t>{0, 1, 10, 11, 20, 21}));
  }
}

// Rank s sends (s + 1) * d values s * 100 + d + i to rank d: uneven, some blocks empty.
TEST(InProcessGroup, AllToAllRowsUnevenBlocks) {
  const int n = 4;
  InProcessWorld world(n);
  std::vector<std::vector<int32_t>> got(n);
  const auto status = world.run([&](ProcessGroup& g) {
    const int s = g.rank();
    std::vector<int32_t> send;
    std::vector<int64_t> send_rows, recv_rows;
    for (int d = 0; d < n; ++d) {
      send_rows.push_back((s + 1) * d);
      recv_rows.push_back((d + 1) * s);
      for (int i = 0; i < (s + 1) * d; ++i) send.push_back(s * 100 + d * 10 + i);
    }
    Tensor send_t = Tensor::from_vector(send, {int64_t(send.size()), 1});
    int64_t total = 0;
    for (int64_t r : recv_rows) total += r;
    Tensor recv_t = Tensor::empty({total, 1}, DType::kI32);
    all_to_all_rows(g, send_t, send_rows, recv_t, recv_rows);
    got[s].assign(recv_t.data<int32_t>(), recv_t.data<int32_t>() + total);
  });
  for (int d = 0; d < n; ++d) {
    ASSERT_TRUE(status[d].ok()) << status[d].message();
    std::vector<int32_t> expected;
    for (int s = 0; s < n; ++s) {
      for (int i = 0; i < (s + 1) * d; ++i) expected.push_back(s * 100 + d * 10 + i);
    }
    EXPECT_EQ(got[d], expected) << "rank " << d;
  }
}

TEST(InProcessGroup, FailingRankAbortsPeersInsteadOfHanging) {
  InProcessWorld world(4);
  const auto status = world.run([&](ProcessGroup& g) {
    if (g.rank() == 2) throw Error("rank two broke");
    g.barrier();
    g.barrier();
  });
  EXPECT_EQ(status[2].message(), "rank two broke");
  for (int r : {0, 1, 3}) {
    ASSERT_FALSE(status[r].ok());
    EXPECT_NE(status[r].message().find("rank 2 failed: rank two broke"), std::string::npos)
        << status[r].message();
  }
}

TEST(InProcessGroup, MismatchedCollectivesAreNamed) {
  InProcessWorld world(2);
  const auto status = world.run([&](ProcessGroup& g) {
    if (g.rank() == 0) {
      g.barrier();
    } else {
      g.all_gather({1});
    }
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(status[r].ok());
    EXPECT_NE(status[r].message().find("collective mismatch"), std::string::npos)
        << status[r].message();
  }
}

TEST(InProcessGroup, WrongReceiveSizeIsAnError) {
  InProcessWorld world(2);
  const auto status = world.run([&](ProcessGroup& g) {
    std::vector<float> send(4, 1.0f), recv(8);
    // Rank 1 expects 3 floats from rank 0, which sends 2.
    const std::vector<int64_t> send_bytes{8, 8};
    const std::vector<int64_t> recv_bytes{g.rank() == 1 ? 12 : 8, 8};
    g.all_to_all_v(send.data(), send_bytes, recv.data(), recv_bytes);
  });
  ASSERT_FALSE(status[1].ok());
  EXPECT_NE(status[1].message().find("expects 12 bytes from rank 0, which sends 8"),
            std::string::npos)
      << status[1].message();
}

}  // namespace
}  // namespace tandem
