#include "core/dtype.h"

#include <array>

namespace tandem {

size_t dtype_size_bytes(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF8E4M3: return 1;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF8E4M3: return "f8_e4m3";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU8: return "u8";
  }
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  struct Entry { std::string_view a, b; DType d; };
  static constexpr Entry kNames[] = {
      {"f32", "F32", DType::kF32},       {"bf16", "BF16", DType::kBF16},
      {"f8_e4m3", "F8_E4M3", DType::kF8E4M3}, {"i32", "I32", DType::kI32},
      {"i64", "I64", DType::kI64},       {"u8", "U8", DType::kU8}};
  for (const auto& e : kNames) {
    if (name == e.a || name == e.b) {
      *out = e.d;
      return true;
    }
  }
  return false;
}

namespace {

constexpr float decode_e4m3(uint8_t bits) {
  const bool negative = bits & 0x80;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  float value = 0.0f;
  if (exponent == 0xf && mantissa == 0x7) {
    value = __builtin_nanf("");
  } else if (exponent == 0) {
    value = float(mantissa) / 512.0f;  // subnormal: m * 2^-9
  } else {
    float scale = 1.0f;
    for (int e = exponent - 7; e > 0; --e) scale *= 2.0f;
    for (int e = exponent - 7; e < 0; ++e) scale *= 0.5f;
    value = (1.0f + float(mantissa) / 8.0f) * scale;
  }
  return negative ? -value : value;
}

constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[i] = decode_e4m3(uint8_t(i));
  return t;
}

}  // namespace

const std::array<float, 256> kFp8E4M3ToF32 = make_e4m3_table();

fp8_e4m3 f32_to_fp8_e4m3(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80);
  const float a = std::fabs(f);
  if (std::isnan(f)) return fp8_e4m3{uint8_t(sign | 0x7f)};
  if (a > kFp8E4M3Max) return fp8_e4m3{uint8_t(sign | 0x7e)};  // saturate (incl. inf)
  const int exp32 = int((u >> 23) & 0xff) - 127;
  if (exp32 < -6) {
    // Subnormal range: value = m * 2^-9, m in [0, 8]; a*512 is exact, nearbyint is RNE.
    // m == 8 is encoded as 0x08, which is exactly the smallest normal 2^-6.
    const int m = int(std::nearbyint(a * 512.0f));
    return fp8_e4m3{uint8_t(sign | m)};
  }
  uint32_t mant = u & 0x7fffffu;
  uint32_t r = mant >> 20;
  const uint32_t rem = mant & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;
  int e = exp32 + 7;
  if (r == 8) {
    r = 0;
    ++e;
  }
  const uint32_t code = (uint32_t(e) << 3) | r;
  if (code > 0x7e) return fp8_e4m3{uint8_t(sign | 0x7e)};
  return fp8_e4m3{uint8_t(sign | code)};
}

}  // namespace tandem
