// The normalizer and pre-tokenizer of a byte-level tokenizer.json, as DeepSeek-V3/R1 and V2
// ship them: an empty normalizer, then a Sequence of regex Splits and a ByteLevel step. Every
// split only cuts the text (no step rewrites it), so pieces are views into the input; the
// ByteLevel byte-to-character mapping is left to the BPE model.
// Thread-safe: immutable after construction.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace tandem::tokenizer {

class PreTokenizer {
 public:
  // Builds from tokenizer.json's "normalizer" and "pre_tokenizer" values. Anything outside
  // the supported subset is refused with an error that names `file` and the step.
  static PreTokenizer from_json(const nlohmann::json& normalizer,
                                const nlohmann::json& pre_tokenizer, const std::string& file);

  // Appends the pieces of `text` (valid UTF-8) to `pieces`, in order.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

  size_t num_steps() const { return steps_.size(); }

 private:
  struct Step {
    Regex regex;
    bool remove_matches;  // "Removed" behaviour; otherwise "Isolated"
  };
  void add_step(const nlohmann::json& step, const std::string& file, bool& saw_byte_level);

  std::vector<Step> steps_;
};

}  // namespace tandem::tokenizer
