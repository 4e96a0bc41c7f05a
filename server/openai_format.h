// The JSON the three generation endpoints answer with: OpenAI completions and chat
// completions (whole responses and SSE chunks, usage, logprobs in each API's own shape) and
// SGLang's /generate output. Pure functions of a Generation's state.
// Thread-safe: yes (the tokenizer they read is const).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "server/generation.h"

namespace tandem::server {

// "stop", "length", "abort" (null while unfinished).
nlohmann::json finish_reason_json(const Choice& choice);
nlohmann::json usage_json(const Generation& g);

// Whole (non-streaming) responses.
nlohmann::json completion_response(const Generation& g, const tokenizer::Tokenizer* tok);
nlohmann::json chat_response(const Generation& g, const tokenizer::Tokenizer* tok);
nlohmann::json generate_response(const Generation& g, size_t index);

// The SSE chunks for one stream event (possibly none: a token whose text is not complete
// yet). `first` marks the first event of the choice (chat sends the role then).
std::vector<nlohmann::json> completion_chunks(const Generation& g, const runtime::StreamEvent& ev,
                                              const tokenizer::Tokenizer* tok);
std::vector<nlohmann::json> chat_chunks(const Generation& g, const runtime::StreamEvent& ev,
                                        bool first, const tokenizer::Tokenizer* tok);
// The final chunk with usage and no choices (stream_options.include_usage).
nlohmann::json usage_chunk(const Generation& g);

// "data: <json>\n\n"
std::string sse(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// A token's text for logprobs: its bytes with ill-formed UTF-8 replaced.
std::string token_text(const tokenizer::Tokenizer* tok, int32_t id);

}  // namespace tandem::server
