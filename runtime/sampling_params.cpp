#include "runtime/sampling_params.h"

#include <cmath>

namespace tandem::runtime {

namespace {
Status invalid(std::string message) { return {StatusCode::kInvalidArgument, std::move(message)}; }
}  // namespace

Status SamplingParams::validate(int64_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return invalid(fmt::format("temperature must be >= 0, got {}", temperature));
  }
  if (top_k < -1) return invalid(fmt::format("top_k must be -1 (off) or >= 1, got {}", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return invalid(fmt::format("top_p must be in (0, 1], got {}", top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return invalid(fmt::format("min_p must be in [0, 1], got {}", min_p));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return invalid(fmt::format("repetition_penalty must be > 0, got {}", repetition_penalty));
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return invalid(fmt::format("frequency_penalty must be in [-2, 2], got {}", frequency_penalty));
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return invalid(fmt::format("presence_penalty must be in [-2, 2], got {}", presence_penalty));
  }
  if (max_tokens < 1) return invalid(fmt::format("max_tokens must be >= 1, got {}", max_tokens));
  if (n < 1 || n > 128) return invalid(fmt::format("n must be in [1, 128], got {}", n));
  if (top_logprobs < 0 || top_logprobs > 20) {
    return invalid(fmt::format("top_logprobs must be in [0, 20], got {}", top_logprobs));
  }
  for (const int32_t id : stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return invalid(fmt::format("stop_token_ids: {} is outside the vocabulary [0, {})", id,
                                 vocab_size));
    }
  }
  for (const std::string& s : stop) {
    if (s.empty()) return invalid("stop: empty stop string");
  }
  return {};
}

Status SamplingParams::from_json(const nlohmann::json& j, SamplingParams& out) {
  if (!j.is_object()) return invalid("sampling parameters must be a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    try {
      if (key == "temperature") out.temperature = v.get<float>();
      else if (key == "top_k") out.top_k = v.get<int32_t>();
      else if (key == "top_p") out.top_p = v.get<float>();
      else if (key == "min_p") out.min_p = v.get<float>();
      else if (key == "repetition_penalty") out.repetition_penalty = v.get<float>();
      else if (key == "frequency_penalty") out.frequency_penalty = v.get<float>();
      else if (key == "presence_penalty") out.presence_penalty = v.get<float>();
      else if (key == "seed") out.seed = v.is_null() ? std::nullopt : std::optional(v.get<uint64_t>());
      else if (key == "max_tokens") out.max_tokens = v.get<int32_t>();
      else if (key == "stop_token_ids") out.stop_token_ids = v.get<std::vector<int32_t>>();
      else if (key == "stop") {
        out.stop = v.is_string() ? std::vector<std::string>{v.get<std::string>()}
                                 : v.get<std::vector<std::string>>();
      }
      else if (key == "ignore_eos") out.ignore_eos = v.get<bool>();
      else if (key == "n") out.n = v.get<int32_t>();
      else if (key == "logprobs") out.logprobs = v.get<bool>();
      else if (key == "top_logprobs") out.top_logprobs = v.get<int32_t>();
      else return invalid(fmt::format("unknown sampling parameter '{}'", key));
    } catch (const nlohmann::json::exception&) {
      return invalid(fmt::format("{}: wrong type ({})", key, v.dump()));
    }
  }
  return {};
}

}  // namespace tandem::runtime
