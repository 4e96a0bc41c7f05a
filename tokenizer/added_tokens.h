// Finds added tokens (special and other tokens listed in tokenizer.json's "added_tokens") in
// text before pre-tokenization: leftmost match, longest at that position, non-overlapping,
// as tokenizers' Aho-Corasick search with MatchKind::LeftmostLongest.
// Thread-safe: immutable after build().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;     // skipped by decode(skip_special) and by encode without parse_special
  bool normalized = false;  // matched after the normalizer (identity here), in a second pass
};

class AddedTokenMatcher {
 public:
  struct Match {
    size_t begin;
    size_t end;
    int32_t id;
    bool special;
  };

  void build(const std::vector<const AddedToken*>& tokens);
  bool empty() const { return nodes_.size() <= 1; }

  // The leftmost-longest match starting at or after `from`, if any.
  std::optional<Match> find(std::string_view text, size_t from) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                 // index into tokens_
  };
  int32_t child(int32_t node, uint8_t byte) const;

  std::vector<Node> nodes_{1};
  std::vector<std::pair<int32_t, bool>> tokens_;  // (id, special)
  bool first_byte_[256] = {};
};

}  // namespace tandem::tokenizer
