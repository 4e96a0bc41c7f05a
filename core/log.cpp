#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace tandem {

bool log_init(std::string_view level) {
  std::string name(level);
  if (name.empty()) {
    const char* env = std::getenv("TANDEM_LOG_LEVEL");
    name = env ? env : "info";
  }
  const auto parsed = spdlog::level::from_str(name);
  if (parsed == spdlog::level::off && name != "off") return false;
  auto logger = spdlog::stderr_color_mt("tandem");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%L%$ %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return true;
}

}  // namespace tandem
