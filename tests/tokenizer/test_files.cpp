#include "tests/tokenizer/test_files.h"

#include <cstdlib>
#include <memory>
#include "tests/common/tokenizer_dir.h"

namespace tandem::tokenizer::test {

std::optional<std::filesystem::path> deepseek_v3_dir() {
  return tandem::test::deepseek_v3_tokenizer_dir();
}

const Tokenizer* deepseek_v3() {
  static const std::unique_ptr<Tokenizer> tokenizer = []() -> std::unique_ptr<Tokenizer> {
    const auto dir = deepseek_v3_dir();
    if (!dir) return nullptr;
    return std::make_unique<Tokenizer>(Tokenizer::load(*dir));
  }();
  return tokenizer.get();
}

std::filesystem::path golden_dir() {
  return std::filesystem::path(TANDEM_SOURCE_DIR) / "tests" / "data" / "tokenizer";
}

}  // namespace tandem::tokenizer::test

#include <unistd.h>

#include "tests/tokenizer/tiny_tokenizer.h"

namespace tandem::tokenizer::test {

std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tandem_tokenizer_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace tandem::tokenizer::test
