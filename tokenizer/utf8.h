// UTF-8 helpers shared by the encoder (input sanitizing), the decoder and the streaming
// detokenizer. Invalid input is handled the way Unicode recommends ("maximal subpart", the same
// as Python's bytes.decode(errors="replace") and Rust's String::from_utf8_lossy): each maximal
// prefix of a would-be sequence that cannot be completed becomes one U+FFFD.
// All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::tokenizer {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

enum class Utf8Kind {
  kValid,      // `length` bytes form one well-formed character
  kInvalid,    // `length` bytes (>= 1) are a maximal ill-formed subpart: one U+FFFD
  kTruncated,  // the input ends inside a character that could still be completed
};

struct Utf8Step {
  Utf8Kind kind;
  int length;
};

// Classifies the bytes starting at s[pos] (pos < s.size()).
Utf8Step utf8_step(std::string_view s, size_t pos);

bool utf8_valid(std::string_view s);

// Returns `s` with every ill-formed subpart (and a truncated character at the end) replaced by
// U+FFFD. Returns `s` unchanged (one copy) when it is already valid.
std::string utf8_sanitize(std::string_view s);

void utf8_append(std::string& out, uint32_t code_point);

// Decodes one code point of valid UTF-8 at s[pos], advancing pos.
uint32_t utf8_decode_valid(std::string_view s, size_t& pos);

}  // namespace tandem::tokenizer
