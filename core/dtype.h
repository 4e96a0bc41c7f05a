// Element types: f32, bf16 and fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, max 448,
// NaN = S.1111.111), plus the integer types used for ids and page tables.
// Conversions round to nearest, ties to even; f32 -> e4m3 saturates finite overflow and
// infinities to +-448 (the OCP "saturating" mode; quantizers scale into range anyway) and
// keeps NaN. Spec: OCP 8-bit Floating Point Specification (OFP8) rev 1.0, 2023.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tandem {

enum class DType : uint8_t { kF32, kBF16, kF8E4M3, kI32, kI64, kU8 };

size_t dtype_size_bytes(DType dtype);
std::string_view dtype_name(DType dtype);  // "f32", "bf16", "f8_e4m3", "i32", "i64", "u8"
// Parses tandem's names and the safetensors names (F32, BF16, F8_E4M3, I32, I64, U8).
// Returns false when the name is unknown.
bool dtype_from_name(std::string_view name, DType* out);

struct bf16 {
  uint16_t bits = 0;
};
struct fp8_e4m3 {
  uint8_t bits = 0;
};

inline float bf16_to_f32(bf16 v) { return std::bit_cast<float>(uint32_t(v.bits) << 16); }

inline bf16 f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x0040u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{uint16_t(u >> 16)};
}

extern const std::array<float, 256> kFp8E4M3ToF32;
inline constexpr float kFp8E4M3Max = 448.0f;

inline float fp8_e4m3_to_f32(fp8_e4m3 v) { return kFp8E4M3ToF32[v.bits]; }
fp8_e4m3 f32_to_fp8_e4m3(float f);

}  // namespace tandem
