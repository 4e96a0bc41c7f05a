// Where tests find DeepSeek-V3's real tokenizer files: TANDEM_TOKENIZER_DIR, else
// ${TANDEM_SOURCE_DIR}/../shared/data/deepseek-v3 (beside the checkout, as on CI). nullopt when
// tokenizer.json is not there, so a test can skip saying so.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <optional>

namespace tandem::test {

inline std::optional<std::filesystem::path> deepseek_v3_tokenizer_dir() {
  std::filesystem::path dir;
  if (const char* env = std::getenv("TANDEM_TOKENIZER_DIR"); env != nullptr && *env != '\0') {
    dir = env;
  } else {
    dir = std::filesystem::path(TANDEM_SOURCE_DIR) / ".." / "shared" / "data" / "deepseek-v3";
  }
  if (!std::filesystem::exists(dir / "tokenizer.json")) return std::nullopt;
  return dir;
}

}  // namespace tandem::test
