// Unit tests of the pieces: UTF-8 repair, the two BPE merge paths, added-token options, the
// detokenizer on split characters, chat message validation.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

#include "core/error.h"
#include "tests/tokenizer/test_files.h"
#include "tests/tokenizer/tiny_tokenizer.h"
#include "tokenizer/bpe.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/utf8.h"

namespace tandem::tokenizer {
namespace {

const std::string kFFFD(kReplacementChar);

TEST(TokenizerUtf8, ReplacesMaximalSubpartsLikePython) {
  // Expected values are Python's bytes.decode("utf-8", "replace").
  EXPECT_EQ(utf8_sanitize("abc"), "abc");
  EXPECT_EQ(utf8_sanitize("\x80"), kFFFD);
  EXPECT_EQ(utf8_sanitize("\xC0\x80"), kFFFD + kFFFD);
  EXPECT_EQ(utf8_sanitize("\xE0\x80\x80"), kFFFD + kFFFD + kFFFD);
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);  // a surrogate
  EXPECT_EQ(utf8_sanitize("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);
  EXPECT_EQ(utf8_sanitize("\xE2\x82" "a"), kFFFD + "a");
  EXPECT_EQ(utf8_sanitize("x\xF0\x9F\x98"), "x" + kFFFD);
  EXPECT_EQ(utf8_sanitize("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(utf8_sanitize("\xFF\xFE"), kFFFD + kFFFD);
  EXPECT_FALSE(utf8_valid("\xC2"));
  EXPECT_TRUE(utf8_valid("\xC2\xA9"));
  EXPECT_EQ(utf8_step("\xE2\x82", 0).kind, Utf8Kind::kTruncated);
}

TEST(TokenizerBpe, HeapAndScanMergeOrdersAgree) {
  const auto json = test::tiny_tokenizer_json(400, 11);
  const auto bpe = Bpe::from_json(json["model"], "tiny");
  std::mt19937 rng(3);
  for (int i = 0; i < 3000; ++i) {
    std::string word(1 + rng() % 60, ' ');
    for (char& c : word) c = "abcd "[rng() % 5];
    std::vector<int32_t> scan, heap;
    bpe->merge(word, scan, false);
    bpe->merge(word, heap, true);
    ASSERT_EQ(scan, heap) << '"' << word << '"';
    std::string joined;
    for (const int32_t id : scan) joined += bpe->id_to_token(id);
    std::string expected;
    for (const char c : word) utf8_append(expected, kByteLevel.byte_to_cp[static_cast<uint8_t>(c)]);
    ASSERT_EQ(joined, expected);
  }
}

class TinyTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir("tiny");
    test::write_file(dir_ / "tokenizer.json", test::tiny_tokenizer_json(300, 5).dump());
    test::write_file(dir_ / "tokenizer_config.json", test::tiny_tokenizer_config().dump());
    tok_ = std::make_unique<Tokenizer>(Tokenizer::load(dir_));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TinyTokenizer, BosAndSpecialTokenOptions) {
  const int32_t s = *tok_->token_to_id("<s>");
  const int32_t tool = *tok_->token_to_id("<tool>");
  EXPECT_TRUE(tok_->add_bos());
  auto ids = tok_->encode("ab<s>cd<tool>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), s);  // BOS
  EXPECT_EQ(std::count(ids.begin(), ids.end(), s), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tool), 1);

  EncodeOptions plain;
  plain.add_special_tokens = false;
  plain.parse_special = false;
  ids = tok_->encode("ab<s>cd<tool>", plain);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), s), 0);     // special: now plain text
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tool), 1);  // not special: still matched
  EXPECT_EQ(tok_->decode(ids), "ab<s>cd<tool>");
  EXPECT_EQ(tok_->decode(tok_->encode("ab<s>cd"), /*skip_special=*/true), "abcd");
}

TEST_F(TinyTokenizer, NoChatTemplateIsAClearErrorOnUse) {
  EXPECT_EQ(tok_->chat_template().format(), ChatFormat::kNone);
  try {
    tok_->apply_chat_template({{"user", "hi", {}}}, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no chat_template"), std::string::npos) << e.what();
  }
}

TEST(TokenizerDetokenizer, HoldsSplitCharactersAndFlushesTruncatedTail) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  const std::string text = "a😀b中";
  const auto ids = tok->encode(text, {.add_special_tokens = false});
  IncrementalDetokenizer detok(*tok);
  std::vector<std::string> chunks;
  for (const int32_t id : ids) chunks.push_back(detok.push(id));
  chunks.push_back(detok.finish());
  std::string joined;
  for (const auto& c : chunks) {
    EXPECT_TRUE(utf8_valid(c));
    joined += c;
  }
  EXPECT_EQ(joined, text);
  // A stream cut inside a character ends with one U+FFFD, as decode() gives.
  IncrementalDetokenizer cut(*tok);
  const auto emoji = tok->encode("😀", {.add_special_tokens = false});
  ASSERT_GE(emoji.size(), 2u);
  EXPECT_EQ(cut.push(emoji[0]), "");
  EXPECT_GT(cut.pending_bytes(), 0u);
  EXPECT_EQ(cut.finish(), kFFFD);
  EXPECT_EQ(tok->decode(std::vector<int32_t>{emoji[0]}), kFFFD);
}

TEST(TokenizerDeepSeekV3, BosSpecialTokensAndUnknownIds) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  EXPECT_EQ(tok->vocab_size(), 128815);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_TRUE(tok->add_bos());
  const auto with_bos = tok->encode("Hello world");
  const auto without = tok->encode("Hello world", {.add_special_tokens = false});
  ASSERT_EQ(with_bos.size(), without.size() + 1);
  EXPECT_EQ(with_bos[0], 0);
  EXPECT_EQ(tok->encode("<｜User｜>", {.add_special_tokens = false}),
            std::vector<int32_t>{128803});
  // Padding rows of the model's embedding (ids past the tokenizer) decode to nothing.
  EXPECT_EQ(tok->decode(std::vector<int32_t>{19923, 129000, -1}), "Hello");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{0, 19923, 1}), "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{0, 19923, 1}, true), "Hello");
  EXPECT_EQ(tok->id_to_token(128803), "<｜User｜>");
  EXPECT_EQ(tok->id_to_token(223), "Ġ");
}

TEST(TokenizerDeepSeekV3, InvalidUtf8IsReplacedNotFatal) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  const std::string bad = "ok\xFF\xC0\x80 \xE2\x82";
  const auto ids = tok->encode(bad, {.add_special_tokens = false});
  EXPECT_EQ(ids, tok->encode("ok" + kFFFD + kFFFD + kFFFD + " " + kFFFD,
                             {.add_special_tokens = false}));
}

TEST(TokenizerDeepSeekV3, LongInputsAreFine) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  for (const std::string& s : {std::string(200000, ' '), std::string(100000, 'a'),
                               std::string(50000, '\n') + "x"}) {
    const auto ids = tok->encode(s, {.add_special_tokens = false});
    EXPECT_EQ(tok->decode(ids), s);
  }
}

TEST(TokenizerChat, MessageValidation) {
  using nlohmann::json;
  EXPECT_THROW(chat_messages_from_json(json::object()), Error);
  EXPECT_THROW(chat_messages_from_json(json::parse(R"([{"role": "robot", "content": "x"}])")),
               Error);
  EXPECT_THROW(chat_messages_from_json(json::parse(R"([{"role": "user"}])")), Error);
  EXPECT_THROW(chat_messages_from_json(json::parse(R"([{"role": "user", "content": 3}])")), Error);
  EXPECT_THROW(chat_messages_from_json(json::parse(
                   R"([{"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}])")),
               Error);
  const auto ok = chat_messages_from_json(json::parse(
      R"([{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}])"));
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_FALSE(ok[0].content.has_value());
  EXPECT_EQ(ok[0].tool_calls.at(0).name, "f");
}

TEST(TokenizerChat, ContentWithToolCallsIsRefused) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  ChatMessage m{"assistant", "text", {ToolCall{"function", "f", "{}"}}};
  EXPECT_THROW(tok->apply_chat_template({m}, false), Error);
}

TEST(TokenizerThreads, ConcurrentEncodeAgrees) {
  TANDEM_REQUIRE_DEEPSEEK_V3(tok);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("line " + std::to_string(i * 7919) + " 中文 text\t😀");
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok->encode(t));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (tok->encode(texts[i]) != expected[i]) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace tandem::tokenizer
