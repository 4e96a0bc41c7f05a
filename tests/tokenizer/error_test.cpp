// Bad tokenizer files give errors that name the file and say what is wrong.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"
#include "tests/tokenizer/test_files.h"
#include "tests/tokenizer/tiny_tokenizer.h"

namespace tandem::tokenizer {
namespace {

class BadTokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    json_ = test::tiny_tokenizer_json(50, 1);
    config_ = test::tiny_tokenizer_config();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes both files and expects load() to throw a message containing every `parts`.
  void expect_load_error(std::initializer_list<std::string> parts) {
    test::write_file(dir_ / "tokenizer.json", json_.dump());
    test::write_file(dir_ / "tokenizer_config.json", config_.dump());
    expect_error(parts);
  }
  void expect_error(std::initializer_list<std::string> parts) {
    try {
      Tokenizer::load(dir_);
      FAIL() << "load succeeded; expected an error";
    } catch (const Error& e) {
      for (const auto& p : parts) {
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
            << "message lacks \"" << p << "\": " << e.what();
      }
    }
  }
  std::string json_path() const { return (dir_ / "tokenizer.json").string(); }
  std::string config_path() const { return (dir_ / "tokenizer_config.json").string(); }

  std::filesystem::path dir_;
  nlohmann::json json_, config_;
};

TEST_F(BadTokenizerFiles, ValidFilesLoad) {
  test::write_file(dir_ / "tokenizer.json", json_.dump());
  test::write_file(dir_ / "tokenizer_config.json", config_.dump());
  EXPECT_NO_THROW(Tokenizer::load(dir_));
}

TEST_F(BadTokenizerFiles, MissingTokenizerJson) {
  test::write_file(dir_ / "tokenizer_config.json", config_.dump());
  expect_error({"not found", json_path()});
}

TEST_F(BadTokenizerFiles, MissingConfig) {
  test::write_file(dir_ / "tokenizer.json", json_.dump());
  expect_error({"not found", config_path()});
}

TEST_F(BadTokenizerFiles, MissingDirectory) {
  dir_ /= "does_not_exist";
  expect_error({"not found", json_path()});
}

TEST_F(BadTokenizerFiles, MalformedJson) {
  test::write_file(dir_ / "tokenizer.json", json_.dump().substr(0, 500));
  test::write_file(dir_ / "tokenizer_config.json", config_.dump());
  expect_error({json_path(), "malformed JSON"});
}

TEST_F(BadTokenizerFiles, MalformedConfigJson) {
  test::write_file(dir_ / "tokenizer.json", json_.dump());
  test::write_file(dir_ / "tokenizer_config.json", "{\"add_bos_token\": tru");
  expect_error({config_path(), "malformed JSON"});
}

TEST_F(BadTokenizerFiles, UnknownModelType) {
  json_["model"]["type"] = "WordPiece";
  expect_load_error({json_path(), "WordPiece", "not supported"});
}

TEST_F(BadTokenizerFiles, MissingModel) {
  json_.erase("model");
  expect_load_error({json_path(), "model"});
}

TEST_F(BadTokenizerFiles, WrongTypesInsideModel) {
  json_["model"]["vocab"] = nlohmann::json::array();
  expect_load_error({json_path(), "vocab"});
}

TEST_F(BadTokenizerFiles, MergeOfUnknownTokens) {
  json_["model"]["merges"].push_back("zz qq");
  expect_load_error({json_path(), "merge", "missing from the vocabulary"});
}

TEST_F(BadTokenizerFiles, UnsupportedNormalizer) {
  json_["normalizer"] = {{"type", "NFKC"}};
  expect_load_error({json_path(), "normalizer", "NFKC"});
}

TEST_F(BadTokenizerFiles, UnsupportedPreTokenizer) {
  json_["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_load_error({json_path(), "Whitespace"});
}

TEST_F(BadTokenizerFiles, BadRegex) {
  json_["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", nlohmann::json::array({
      {{"type", "Split"}, {"pattern", {{"Regex", "([a-z"}}}, {"behavior", "Isolated"}},
      {{"type", "ByteLevel"}, {"use_regex", false}}})}};
  expect_load_error({"regex does not compile", "([a-z"});
}

TEST_F(BadTokenizerFiles, MissingByte) {
  json_["model"]["vocab"].erase("Ġ");
  expect_load_error({json_path(), "byte 0x20"});
}

TEST_F(BadTokenizerFiles, UnsupportedDecoder) {
  json_["decoder"] = {{"type", "WordPiece"}};
  expect_load_error({json_path(), "decoder"});
}

TEST_F(BadTokenizerFiles, BosTokenNotInVocabulary) {
  config_["bos_token"] = "<nope>";
  expect_load_error({config_path(), "<nope>"});
}

TEST_F(BadTokenizerFiles, UnknownChatTemplateFailsLoadUnlessAllowed) {
  config_["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}";
  expect_load_error({config_path(), "chat_template", "not one tandem implements"});
  LoadOptions options;
  options.allow_unsupported_chat_template = true;
  const Tokenizer tok = Tokenizer::load(dir_, options);
  EXPECT_EQ(tok.chat_template().format(), ChatFormat::kUnsupported);
  EXPECT_THROW(tok.apply_chat_template({{"user", "hi", {}}}, true), Error);
}

}  // namespace
}  // namespace tandem::tokenizer
