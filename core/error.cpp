#include "core/error.h"

#include <cstring>

namespace tandem {

[[noreturn]] void throw_error(const char* file, int line, const std::string& message) {
  // Keep only the path below the repository root so messages are short and stable.
  const char* short_file = file;
  for (const char* root : {"/core/", "/ops/", "/model/", "/runtime/", "/app/", "/tokenizer/",
                           "/server/", "/parallel/", "/disagg/", "/router/"}) {
    if (const char* p = std::strstr(file, root)) {
      short_file = p + 1;
      break;
    }
  }
  throw Error(fmt::format("{} ({}:{})", message, short_file, line));
}

}  // namespace tandem
