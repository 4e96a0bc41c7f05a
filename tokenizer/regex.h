// A compiled PCRE2 regex (UTF-8, Unicode properties, JIT when available) with leftmost-first,
// non-overlapping match iteration, the semantics of the Oniguruma regexes that Hugging Face
// tokenizers uses for its Split pre-tokenizer.
// Thread-safe: a Regex is immutable after construction; match scratch space is per thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::tokenizer {

class Regex {
 public:
  // Throws tandem::Error naming the pattern when it does not compile. `literal` matches the
  // pattern text as-is (tokenizers' {"String": ...} patterns).
  explicit Regex(const std::string& pattern, bool literal = false);
  ~Regex();
  Regex(Regex&& other) noexcept : code_(std::exchange(other.code_, nullptr)), jit_(other.jit_) {}
  Regex& operator=(Regex&&) = delete;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte offsets of every non-empty match in `subject` (valid UTF-8),
  // scanning left to right; lookarounds see the whole subject and nothing outside it.
  void find_all(std::string_view subject, std::vector<std::pair<size_t, size_t>>& matches) const;

  bool jit() const { return jit_; }

 private:
  void* code_;  // pcre2_code_8*, kept opaque so PCRE2's header stays out of this one
  bool jit_ = false;
};

}  // namespace tandem::tokenizer
