// SamplingParams: how one request's tokens are chosen and when it stops (the OpenAI / vLLM
// parameters). validate() rejects bad values with the parameter named, as an HTTP 400 would.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tandem::runtime {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy (argmax)
  int32_t top_k = -1;        // -1 or 0: all tokens
  float top_p = 1.0f;        // nucleus: smallest set with this much probability, (0, 1]
  float min_p = 0.0f;        // drop tokens below min_p * p(most likely), [0, 1]
  // Penalties over the request's tokens: repetition divides positive logits (multiplies
  // negative ones) of tokens in prompt or output (CTRL, arXiv:1909.05858); frequency subtracts
  // count-in-output times the value; presence subtracts the value once per seen output token.
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::optional<uint64_t> seed;  // reproducible sampling; unset: a random seed per request
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings; the text ends before the first match
  bool ignore_eos = false;
  int32_t n = 1;                  // completions per prompt, sampled in parallel
  bool logprobs = false;          // logprob of each sampled token
  int32_t top_logprobs = 0;       // and of the n most likely alternatives, 0..20

  bool greedy() const { return temperature == 0.0f; }
  // InvalidArgument naming the parameter at fault; vocab_size bounds stop_token_ids.
  Status validate(int64_t vocab_size) const;
  // Reads the fields present in `j` (the OpenAI names) over the values already in `out`;
  // InvalidArgument for an unknown key or a wrong type.
  static Status from_json(const nlohmann::json& j, SamplingParams& out);
};

}  // namespace tandem::runtime
