// Chat templates, implemented natively (no jinja at run time). The template of a model is
// recognised by the FNV-1a hash of the exact `chat_template` string in tokenizer_config.json;
// a template that is not recognised is refused at load (see Tokenizer::load), so a prompt is
// never rendered in a format the model was not trained on.
//
// Supported: DeepSeek-V3 (also shipped with DeepSeek-V3-0324): system prompts (all system
// messages joined by "\n\n" and put first), user and assistant turns, assistant tool calls
// (content null + tool_calls) and tool results, the generation prompt; rendered exactly as
// the jinja template does, its quirks included (docs/tokenizer.md lists them).
// Thread-safe: immutable after construction.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::tokenizer {

struct ToolCall {
  std::string type = "function";
  std::string name;
  std::string arguments;  // JSON text, as in the OpenAI API
};

struct ChatMessage {
  std::string role;                    // system, user, assistant or tool
  std::optional<std::string> content;  // null only for an assistant turn with tool calls
  std::vector<ToolCall> tool_calls;
};

// Parses a JSON array of {role, content[, tool_calls]} messages; throws tandem::Error saying
// which message is malformed.
std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& messages);

enum class ChatFormat { kNone, kUnsupported, kDeepSeekV3 };

uint64_t fnv1a64(std::string_view s);

class ChatTemplate {
 public:
  ChatTemplate() = default;
  // `config` is tokenizer_config.json; `file` names it in messages.
  static ChatTemplate from_config(const nlohmann::json& config, const std::string& file);

  ChatFormat format() const { return format_; }
  std::string_view name() const;
  // Why rendering is not possible (empty when it is).
  const std::string& problem() const { return problem_; }

  // The prompt text. Throws tandem::Error when the format is kNone/kUnsupported or a message
  // cannot be expressed in this template.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  std::string render_deepseek_v3(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const;

  ChatFormat format_ = ChatFormat::kNone;
  std::string bos_token_;
  std::string problem_ = "tokenizer has no chat template";
};

}  // namespace tandem::tokenizer
