#include "tokenizer/detokenizer.h"

#include "tokenizer/utf8.h"

namespace tandem::tokenizer {

std::string IncrementalDetokenizer::push(int32_t id) {
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_.append(tokenizer_->token_bytes(id));
  return drain(false);
}

std::string IncrementalDetokenizer::finish() { return drain(true); }

// How a byte is classified depends only on it and the (at most 3) bytes after it, so emitting
// everything up to a truncated tail gives the same text as repairing the whole stream at once.
std::string IncrementalDetokenizer::drain(bool at_end) {
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Step step = utf8_step(pending_, pos);
    if (step.kind == Utf8Kind::kTruncated && !at_end) break;
    if (step.kind == Utf8Kind::kValid) {
      out.append(pending_, pos, step.length);
    } else {
      out.append(kReplacementChar);
    }
    pos += step.length;
  }
  pending_.erase(0, pos);
  return out;
}

}  // namespace tandem::tokenizer
