// Streaming detokenizer: turns generated ids into text as soon as the text is complete UTF-8.
// A token may end in the middle of a character; those bytes are held until the character is
// complete (or proves ill-formed, which emits U+FFFD exactly where decode() would). The
// concatenation of everything push() and finish() return equals Tokenizer::decode of all ids.
// Not thread-safe: one per request stream; the Tokenizer it points to must outlive it.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace tandem::tokenizer {

class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special) {}

  // Adds one token; returns the newly completed text (often empty for a partial character).
  std::string push(int32_t id);
  // Ends the stream: a held, never-completed character becomes U+FFFD.
  std::string finish();
  // Bytes held back waiting for the rest of a character (at most 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  std::string drain(bool at_end);

  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace tandem::tokenizer
