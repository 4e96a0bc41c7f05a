// GPT-2's byte-level alphabet: each byte maps to one printable code point so that byte strings
// can live in a JSON vocabulary. Bytes that are already printable Latin-1 (33..126, 161..172,
// 174..255) map to themselves; the other 68 map, in byte order, to U+0100 onwards.
// Pure and thread-safe.
#pragma once

#include <array>
#include <cstdint>

namespace tandem::tokenizer {

struct ByteLevelAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // -1 where a code point is not in the alphabet

  constexpr ByteLevelAlphabet() {
    for (auto& b : cp_to_byte) b = -1;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

inline constexpr ByteLevelAlphabet kByteLevel{};

}  // namespace tandem::tokenizer
