// Golden tests against the `tokenizers` library and jinja2 (tools/tokenizer/make_reference.py
// wrote the data): token ids for every string, decode round trips, the streaming detokenizer,
// and chat prompts.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <random>

#include "tests/tokenizer/test_files.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/utf8.h"

namespace tandem::tokenizer {
namespace {

struct EncodeCase {
  std::string category;
  std::string text;  // raw bytes; ill-formed UTF-8 when `invalid`
  bool invalid = false;
  bool plain = false;  // special-token text not parsed
  std::vector<int32_t> ids;
};

std::string hex_to_bytes(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string quoted(const std::string& s) {
  std::string q = nlohmann::json(s).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  return q.size() > 300 ? q.substr(0, 300) + "...\"" : q;
}

const std::vector<EncodeCase>& encode_cases() {
  static const std::vector<EncodeCase> cases = [] {
    std::vector<EncodeCase> result;
    std::ifstream in(test::golden_dir() / "encode_cases.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      EncodeCase c;
      c.category = j["c"].get<std::string>();
      c.invalid = j.contains("x");
      c.text = c.invalid ? hex_to_bytes(j["x"].get<std::string>()) : j["t"].get<std::string>();
      c.plain = j.value("m", "") == "plain";
      c.ids = j["ids"].get<std::vector<int32_t>>();
      result.push_back(std::move(c));
    }
    return result;
  }();
  return cases;
}

EncodeOptions options_for(const EncodeCase& c) {
  EncodeOptions options;
  options.add_special_tokens = false;
  options.parse_special = !c.plain;
  return options;
}

TEST(TokenizerReference, EncodeMatchesTokenizersLibrary) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  const auto& cases = encode_cases();
  ASSERT_GE(cases.size(), 10000u) << "golden data missing: run tools/tokenizer/make_reference.py";
  std::map<std::string, std::pair<int, int>> per_category;  // (checked, mismatched)
  int reported = 0;
  for (const EncodeCase& c : cases) {
    const auto ids = tok->encode(c.text, options_for(c));
    auto& [checked, mismatched] = per_category[c.category];
    ++checked;
    if (ids == c.ids) continue;
    ++mismatched;
    if (reported++ < 10) {
      ADD_FAILURE() << c.category << " " << quoted(c.text) << "\n  expected "
                    << nlohmann::json(c.ids).dump() << "\n  actual   "
                    << nlohmann::json(ids).dump();
    }
  }
  for (const auto& [category, counts] : per_category) {
    EXPECT_EQ(counts.second, 0) << counts.second << " of " << counts.first << " " << category
                                << " strings differ from the reference";
  }
}

TEST(TokenizerReference, DecodeOfEncodeGivesTheText) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  int failures = 0;
  for (const EncodeCase& c : encode_cases()) {
    // Ill-formed input comes back with the documented U+FFFD replacement.
    const std::string expected = c.invalid ? utf8_sanitize(c.text) : c.text;
    const std::string decoded = tok->decode(tok->encode(c.text, options_for(c)));
    if (decoded != expected && failures++ < 10) {
      ADD_FAILURE() << "decode(encode(s)) != s for " << quoted(c.text) << ": " << quoted(decoded);
    }
  }
  EXPECT_EQ(failures, 0);
}

// Streams ids through the detokenizer; checks every chunk is well-formed UTF-8 and the whole
// equals decode().
void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, int& failures) {
  IncrementalDetokenizer detok(tok);
  std::string streamed;
  bool chunks_valid = true;
  for (const int32_t id : ids) {
    const std::string chunk = detok.push(id);
    chunks_valid = chunks_valid && utf8_valid(chunk);
    streamed += chunk;
  }
  const std::string tail = detok.finish();
  chunks_valid = chunks_valid && utf8_valid(tail);
  streamed += tail;
  const std::string full = tok.decode(ids);
  if ((!chunks_valid || streamed != full) && failures++ < 10) {
    ADD_FAILURE() << "stream of " << nlohmann::json(ids).dump() << (chunks_valid ? "" : " emitted "
                  "broken UTF-8") << "\n  streamed " << quoted(streamed) << "\n  decode   "
                  << quoted(full);
  }
}

TEST(TokenizerReference, IncrementalDetokenizerEqualsDecode) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  int failures = 0;
  for (const EncodeCase& c : encode_cases()) check_stream(*tok, c.ids, failures);
  // Arbitrary id sequences, as a sampler may produce: lone continuation bytes, cut characters,
  // special tokens, ids past the vocabulary (padding rows of the model).
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any_id(-2, 129279);
  std::uniform_int_distribution<int32_t> length(1, 40);
  for (int i = 0; i < 2000; ++i) {
    std::vector<int32_t> ids(length(rng));
    for (auto& id : ids) id = any_id(rng);
    check_stream(*tok, ids, failures);
  }
  EXPECT_EQ(failures, 0);
}

TEST(TokenizerReference, ChatTemplateMatchesJinja) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  ASSERT_EQ(tok->chat_template().format(), ChatFormat::kDeepSeekV3);
  std::ifstream in(test::golden_dir() / "chat_cases.jsonl");
  std::string line;
  int count = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const auto messages = chat_messages_from_json(j["messages"]);
    const bool gen = j["gen"].get<bool>();
    EXPECT_EQ(tok->apply_chat_template(messages, gen), j["text"].get<std::string>())
        << j["messages"].dump();
    EXPECT_EQ(tok->encode_chat(messages, gen), j["ids"].get<std::vector<int32_t>>())
        << j["messages"].dump();
    ++count;
  }
  EXPECT_GE(count, 50);
}

}  // namespace
}  // namespace tandem::tokenizer
