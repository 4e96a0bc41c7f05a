// PD control messages: round trips of every type, and garbage (random bytes, truncations,
// bit flips of valid frames) always gives a returned error or a valid message, never UB.
#include <gtest/gtest.h>

#include <random>

#include "disagg/messages.h"

namespace tandem::disagg {
namespace {

RegionHandle sample_handle(std::mt19937& rng) {
  RegionHandle h;
  h.backend = "tcp";
  h.endpoint = "10.0.0." + std::to_string(rng() % 256) + ":" + std::to_string(rng() % 65536);
  h.region_id = (uint64_t(rng()) << 32) | rng();
  h.length_bytes = rng();
  h.kind = rng() % 2 ? MemoryKind::kDevice : MemoryKind::kHost;
  h.device_index = int32_t(rng() % 8);
  h.ipc_handle.resize(rng() % 65);
  for (auto& b : h.ipc_handle) b = uint8_t(rng());
  h.ipc_offset_bytes = rng();
  return h;
}

std::vector<Message> sample_messages(std::mt19937& rng) {
  KvPagesRequest req;
  req.room_id = 0xdeadbeefcafef00dull;
  req.page_size = 64;
  req.num_layers = 3;
  req.bytes_per_token_layer = 576 * 2;
  req.num_prompt_tokens = 1000;
  for (int i = 0; i < 16; ++i) req.page_ids.push_back(int32_t(rng() % 100000));
  for (int i = 0; i < 3; ++i) req.regions.push_back(sample_handle(rng));
  PrefillMeta meta;
  meta.room_id = 42;
  meta.first_token = 12345;
  meta.logprob = -0.25f;
  meta.num_prompt_tokens = 1000;
  for (int i = 0; i < 5; ++i) meta.top_logprobs.push_back({int32_t(rng() % 1000), -float(i)});
  return {req, KvChunkDone{7, 2, 128, 64, true}, meta, Abort{9, "client went away"},
          Ack{9, false, "room id mismatch"}, KvPagesRequest{}, PrefillMeta{}};
}

TEST(DisaggMessages, RoundTripEveryType) {
  std::mt19937 rng(1);
  for (const Message& m : sample_messages(rng)) {
    std::vector<uint8_t> frame = encode_frame(m);
    Message back;
    Status s = decode_frame(frame, &back);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(back.index(), m.index());
    EXPECT_TRUE(back == m);
  }
}

TEST(DisaggMessages, EveryTruncationIsAnError) {
  std::mt19937 rng(2);
  for (const Message& m : sample_messages(rng)) {
    std::vector<uint8_t> frame = encode_frame(m);
    for (size_t n = 0; n < frame.size(); ++n) {
      Message back;
      EXPECT_FALSE(decode_frame({frame.data(), n}, &back).ok()) << "prefix of " << n;
    }
    frame.push_back(0);
    Message back;
    EXPECT_FALSE(decode_frame(frame, &back).ok()) << "trailing byte";
  }
}

TEST(DisaggMessages, HeaderChecks) {
  std::vector<uint8_t> frame = encode_frame(Abort{1, "x"});
  Message back;
  auto corrupt = [&](size_t at, uint8_t v) {
    std::vector<uint8_t> f = frame;
    f[at] = v;
    return decode_frame(f, &back);
  };
  EXPECT_NE(corrupt(0, 'X').message().find("magic"), std::string::npos);
  EXPECT_NE(corrupt(4, 9).message().find("version"), std::string::npos);
  EXPECT_NE(corrupt(6, 0).message().find("type"), std::string::npos);
  EXPECT_NE(corrupt(6, 99).message().find("type"), std::string::npos);
  EXPECT_FALSE(corrupt(11, 0xff).ok());  // length over the limit
}

TEST(DisaggMessages, FuzzedGarbageNeverCrashes) {
  std::mt19937 rng(3);
  std::vector<std::vector<uint8_t>> valid;
  for (const Message& m : sample_messages(rng)) valid.push_back(encode_frame(m));
  int accepted = 0;
  for (int iter = 0; iter < 200000; ++iter) {
    std::vector<uint8_t> f;
    if (iter % 2 == 0) {
      // Random bytes behind a valid header prefix, so the payload parsers are reached.
      f = valid[rng() % valid.size()];
      f.resize(kFrameHeaderBytes);
      size_t n = rng() % 200;
      for (size_t i = 0; i < n; ++i) f.push_back(uint8_t(rng()));
      for (int i = 0; i < 4; ++i) f[8 + i] = uint8_t(n >> (8 * i));
    } else {
      // A valid frame with a few bytes flipped.
      f = valid[rng() % valid.size()];
      int flips = 1 + int(rng() % 4);
      for (int i = 0; i < flips; ++i) f[rng() % f.size()] ^= uint8_t(1 + rng() % 255);
    }
    Message back;
    if (decode_frame(f, &back).ok()) {
      ++accepted;
      // Whatever decodes must re-encode to the same bytes (no field silently dropped).
      EXPECT_EQ(encode_frame(back), f);
    }
  }
  EXPECT_GT(accepted, 0);  // flips in plain numbers give valid messages
}

TEST(DisaggMessages, ForgedCountsDoNotAllocate) {
  // A KvPagesRequest claiming 4M pages in a 40-byte payload is rejected before allocating.
  KvPagesRequest req;
  std::vector<uint8_t> f = encode_frame(req);
  size_t count_at = kFrameHeaderBytes + 8 + 4 + 4 + 8 + 4;
  f[count_at + 2] = 0x3f;
  Message back;
  EXPECT_FALSE(decode_frame(f, &back).ok());
}

}  // namespace
}  // namespace tandem::disagg
