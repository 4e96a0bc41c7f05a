// Logging through spdlog: one logger, level from --log-level or TANDEM_LOG_LEVEL
// (trace, debug, info, warn, error, off). Messages go to stderr so stdout stays for results.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace tandem {

// Sets up the stderr logger; returns false if `level` is not a known level name.
bool log_init(std::string_view level);

}  // namespace tandem

#define TANDEM_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define TANDEM_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define TANDEM_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define TANDEM_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
