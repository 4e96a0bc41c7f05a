// Where the tokenizer tests find their inputs: the real DeepSeek-V3 tokenizer files (outside
// the repository) and the golden data made by tools/tokenizer/make_reference.py.
#pragma once

#include <filesystem>
#include <optional>

#include "tokenizer/tokenizer.h"

namespace tandem::tokenizer::test {

// TANDEM_TOKENIZER_DIR, else ${TANDEM_SOURCE_DIR}/../shared/data/deepseek-v3; nullopt when
// tokenizer.json is not there.
std::optional<std::filesystem::path> deepseek_v3_dir();

// Loaded once and shared by the tests (loading parses a 7.8 MB JSON file).
const Tokenizer* deepseek_v3();

std::filesystem::path golden_dir();

}  // namespace tandem::tokenizer::test

#define TANDEM_REQUIRE_DEEPSEEK_V3(tok)                                                     \
  const ::tandem::tokenizer::Tokenizer* tok = ::tandem::tokenizer::test::deepseek_v3();     \
  if (tok == nullptr) {                                                                     \
    GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found: set TANDEM_TOKENIZER_DIR to a " \
                    "folder with tokenizer.json and tokenizer_config.json";                 \
  }
