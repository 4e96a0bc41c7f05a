// Request bodies of the three generation endpoints, parsed and checked into a GenerateRequest:
//   POST /v1/completions       (OpenAI legacy completions; SGLang's extra sampling fields)
//   POST /v1/chat/completions  (OpenAI chat; the model's chat template renders the prompt)
//   POST /generate             (SGLang's native API: input_ids or text, sampling_params)
// Every failure is an ApiError naming the field at fault. The prompt is tokenized here, on the
// connection's thread, so the context-length check can answer before the engine sees it.
// Thread-safe: pure functions of their arguments (the tokenizer is const and thread-safe).
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "server/api_error.h"
#include "tokenizer/tokenizer.h"

namespace tandem::server {

enum class Endpoint { kCompletions, kChat, kGenerate };

struct ParseContext {
  std::string model_name;
  const tokenizer::Tokenizer* tokenizer = nullptr;  // null with --skip-tokenizer-init
  int64_t vocab_size = 0;
  int64_t context_length = 0;  // prompt + output tokens of one sequence
  int64_t kv_pool_tokens = 0;  // a sequence can never hold more than the whole pool
};

// The fields `tandem router` adds for a PD pair (docs/disagg.md "HTTP"): the prefill server's
// bootstrap endpoint and the room id both sides share.
struct PdBootstrap {
  std::string host;
  int port = 0;
  uint64_t room = 0;
};

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  runtime::GenerateRequest gen;  // prompt_ids always filled
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage
  std::string rid;               // /generate's "rid"; empty: the server makes one
  std::optional<PdBootstrap> bootstrap;  // set on --role prefill|decode servers only
};

// Takes "bootstrap_host", "bootstrap_port" and "bootstrap_room" out of `body` (all three or
// none); *out stays empty when none is there. An ApiError names a missing or bad field.
std::optional<ApiError> take_pd_bootstrap(nlohmann::json& body, std::optional<PdBootstrap>* out);

// `body` is the parsed JSON of the request.
std::optional<ApiError> parse_completion_request(const nlohmann::json& body,
                                                 const ParseContext& ctx, ParsedRequest* out);
std::optional<ApiError> parse_chat_request(const nlohmann::json& body, const ParseContext& ctx,
                                           ParsedRequest* out);
std::optional<ApiError> parse_generate_request(const nlohmann::json& body,
                                               const ParseContext& ctx, ParsedRequest* out);

}  // namespace tandem::server
