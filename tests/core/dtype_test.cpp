#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "core/dtype.h"

namespace tandem {
namespace {

// Reference e4m3 decode from the OCP spec's formula, independent of the table in dtype.cpp.
double e4m3_value(uint8_t bits) {
  const int s = bits >> 7, e = (bits >> 3) & 0xf, m = bits & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

TEST(Fp8E4M3, DecodesEveryCodeLikeTheSpec) {
  for (int b = 0; b < 256; ++b) {
    const double want = e4m3_value(uint8_t(b));
    const float got = fp8_e4m3_to_f32(fp8_e4m3{uint8_t(b)});
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << b;
    } else {
      EXPECT_EQ(double(got), want) << b;
    }
  }
  EXPECT_EQ(fp8_e4m3_to_f32(fp8_e4m3{0x7e}), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(fp8_e4m3{0x01}), std::ldexp(1.0f, -9));
}

TEST(Fp8E4M3, EncodeRoundTripsEveryFiniteCode) {
  for (int b = 0; b < 256; ++b) {
    const float v = fp8_e4m3_to_f32(fp8_e4m3{uint8_t(b)});
    if (std::isnan(v)) continue;
    const uint8_t back = f32_to_fp8_e4m3(v).bits;
    // +0 and -0 are distinct codes and both round-trip.
    EXPECT_EQ(back, uint8_t(b)) << "value " << v;
  }
}

// Brute force: the nearest code, ties to the even mantissa, over random and boundary values.
uint8_t nearest_code(float x) {
  if (std::isnan(x)) return 0x7f;
  const bool neg = std::signbit(x);
  const double a = std::min(std::fabs(double(x)), 448.0);
  int best = 0;
  double best_err = INFINITY;
  for (int b = 0; b <= 0x7e; ++b) {
    const double err = std::fabs(e4m3_value(uint8_t(b)) - a);
    if (err < best_err || (err == best_err && (b & 1) == 0)) {
      best = b;
      best_err = err;
    }
  }
  return uint8_t((neg ? 0x80 : 0) | best);
}

TEST(Fp8E4M3, EncodeRoundsToNearestEvenAndSaturates) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::exp2(mag(rng)) * (rng() & 1 ? 1.0f : -1.0f);
    ASSERT_EQ(f32_to_fp8_e4m3(x).bits, nearest_code(x)) << x;
  }
  // Exact midpoints between neighbours go to the even code.
  for (int b = 0; b < 0x7e; ++b) {
    const double mid = (e4m3_value(uint8_t(b)) + e4m3_value(uint8_t(b + 1))) / 2;
    EXPECT_EQ(f32_to_fp8_e4m3(float(mid)).bits, (b & 1) ? b + 1 : b) << mid;
  }
  EXPECT_EQ(f32_to_fp8_e4m3(1000.0f).bits, 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3(-1e30f).bits, 0xfe);
  EXPECT_EQ(f32_to_fp8_e4m3(INFINITY).bits, 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3(-INFINITY).bits, 0xfe);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(NAN))));
  EXPECT_EQ(f32_to_fp8_e4m3(1e-6f).bits, 0x00);  // underflows to +0
}

TEST(Bf16, RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)).bits, 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(INFINITY)), INFINITY);
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 100.0f);
  for (int i = 0; i < 10000; ++i) {
    const float x = n(rng);
    const float y = bf16_to_f32(f32_to_bf16(x));
    EXPECT_LE(std::fabs(x - y), std::fabs(x) * std::ldexp(1.0f, -8)) << x;
  }
}

TEST(DType, NamesAndSizes) {
  DType d;
  ASSERT_TRUE(dtype_from_name("F8_E4M3", &d));
  EXPECT_EQ(d, DType::kF8E4M3);
  EXPECT_EQ(dtype_size_bytes(DType::kBF16), 2u);
  EXPECT_FALSE(dtype_from_name("F16", &d));
}

}  // namespace
}  // namespace tandem
