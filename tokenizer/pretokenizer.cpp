#include "tokenizer/pretokenizer.h"

#include <nlohmann/json.hpp>

#include <utility>

#include "core/error.h"
#include "tokenizer/unicode_patch.h"

namespace tandem::tokenizer {

namespace {

// GPT-2's split, what a ByteLevel pre-tokenizer with use_regex=true applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// tokenizers runs Split regexes through Oniguruma, whose Unicode tables are newer than those
// of PCRE2 10.42 (Unicode 14), and whose \s differs from PCRE2's at U+180E. So \p{L}, \p{M},
// \p{N}, \p{P} and \p{S} also accept the code points assigned since (unicode_patch.h, made by
// tools/tokenizer/make_unicode_patch.py), and \s / \S become Oniguruma's explicit set.
// (\S inside a class and other properties are passed through unchanged.)
std::string to_pcre2(const std::string& pattern) {
  auto extra_for = [](char name) -> std::string_view {
    switch (name) {
      case 'L': return kExtraL;
      case 'M': return kExtraM;
      case 'N': return kExtraN;
      case 'P': return kExtraP;
      case 'S': return kExtraS;
      default: return {};
    }
  };
  std::string out;
  out.reserve(pattern.size() + 256);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[++i];
      const bool property = n == 'p' && i + 3 < pattern.size() && pattern[i + 1] == '{' &&
                            pattern[i + 3] == '}' && !extra_for(pattern[i + 2]).empty();
      if (property) {
        const std::string members = std::string("\\p{") + pattern[i + 2] + "}" +
                                    std::string(extra_for(pattern[i + 2]));
        out.append(in_class ? members : "[" + members + "]");
        i += 3;
      } else if (n == 's') {
        out.append(in_class ? std::string(kSpaceMembers) : "[" + std::string(kSpaceMembers) + "]");
      } else if (n == 'S' && !in_class) {
        out.append("[^").append(kSpaceMembers).append("]");
      } else {
        out.push_back('\\');
        out.push_back(n);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& normalizer,
                                     const nlohmann::json& pre_tokenizer,
                                     const std::string& file) {
  // The only normalizers accepted are those that change nothing.
  if (!normalizer.is_null()) {
    const std::string type = normalizer.value("type", std::string());
    const bool empty_sequence = type == "Sequence" && normalizer.contains("normalizers") &&
                                normalizer["normalizers"].is_array() &&
                                normalizer["normalizers"].empty();
    TANDEM_CHECK(empty_sequence, "{}: normalizer \"{}\" is not supported (only none or an empty "
                 "Sequence)", file, type);
  }
  PreTokenizer result;
  bool saw_byte_level = false;
  TANDEM_CHECK(pre_tokenizer.is_object(), "{}: pre_tokenizer is missing; only byte-level BPE "
               "tokenizers are supported", file);
  if (pre_tokenizer.value("type", std::string()) == "Sequence") {
    TANDEM_CHECK(pre_tokenizer.contains("pretokenizers") &&
                     pre_tokenizer["pretokenizers"].is_array(),
                 "{}: pre_tokenizer Sequence has no \"pretokenizers\" array", file);
    for (const auto& step : pre_tokenizer["pretokenizers"]) {
      result.add_step(step, file, saw_byte_level);
    }
  } else {
    result.add_step(pre_tokenizer, file, saw_byte_level);
  }
  TANDEM_CHECK(saw_byte_level, "{}: the pre_tokenizer has no ByteLevel step; only byte-level BPE "
               "tokenizers are supported", file);
  return result;
}

void PreTokenizer::add_step(const nlohmann::json& step, const std::string& file,
                            bool& saw_byte_level) {
  const std::string type = step.value("type", std::string());
  if (type == "ByteLevel") {
    TANDEM_CHECK(!saw_byte_level, "{}: more than one ByteLevel pre-tokenizer", file);
    TANDEM_CHECK(!step.value("add_prefix_space", false),
                 "{}: ByteLevel pre-tokenizer with add_prefix_space=true is not supported", file);
    saw_byte_level = true;
    if (step.value("use_regex", true)) {
      steps_.push_back(Step{Regex(to_pcre2(kGpt2Pattern)), false});
    }
    return;
  }
  TANDEM_CHECK(type == "Split", "{}: pre-tokenizer \"{}\" is not supported (only Split and "
               "ByteLevel)", file, type);
  TANDEM_CHECK(!saw_byte_level, "{}: a Split after the ByteLevel pre-tokenizer is not supported",
               file);
  TANDEM_CHECK(!step.value("invert", false), "{}: Split with invert=true is not supported", file);
  const std::string behavior = step.value("behavior", std::string());
  TANDEM_CHECK(behavior == "Isolated" || behavior == "Removed",
               "{}: Split behavior \"{}\" is not supported (only Isolated and Removed)", file,
               behavior);
  const auto& pattern = step.contains("pattern") ? step["pattern"] : nlohmann::json();
  if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
    steps_.push_back(Step{Regex(to_pcre2(pattern["Regex"].get<std::string>())),
                          behavior == "Removed"});
  } else if (pattern.contains("String") && pattern["String"].is_string()) {
    steps_.push_back(Step{Regex(pattern["String"].get<std::string>(), /*literal=*/true),
                          behavior == "Removed"});
  } else {
    TANDEM_FAIL("{}: Split pattern is neither {{\"Regex\": ...}} nor {{\"String\": ...}}", file);
  }
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  if (text.empty()) return;
  thread_local std::vector<std::string_view> current, next;
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  current.assign(1, text);
  for (const Step& step : steps_) {
    next.clear();
    for (const std::string_view piece : current) {
      matches.clear();
      step.regex.find_all(piece, matches);
      size_t pos = 0;
      for (const auto& [begin, end] : matches) {
        if (begin > pos) next.push_back(piece.substr(pos, begin - pos));
        if (!step.remove_matches) next.push_back(piece.substr(begin, end - begin));
        pos = end;
      }
      if (pos < piece.size()) next.push_back(piece.substr(pos));
    }
    std::swap(current, next);
  }
  pieces.insert(pieces.end(), current.begin(), current.end());
}

}  // namespace tandem::tokenizer
