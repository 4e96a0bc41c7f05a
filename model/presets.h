// Built-in model shapes for `tandem make-model` and --load-format dummy: the published
// DeepSeek-V3 and DeepSeek-V2-Lite config.json values, and `tiny`, the embedded default of
// the quick start (DeepSeek-V3's architecture and vocabulary at toy width), and `mini`, tiny
// with a 512-token vocabulary for unit tests.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tandem {

// The config.json of a preset ("tiny", "v2-lite", "v3"); throws naming the valid presets.
nlohmann::json preset_config_json(const std::string& preset);
std::vector<std::string> preset_names();

}  // namespace tandem
