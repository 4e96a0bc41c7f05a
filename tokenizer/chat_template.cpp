#include "tokenizer/chat_template.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tandem::tokenizer {

namespace {

// FNV-1a of DeepSeek-V3's chat_template string (tokenizer_config.json, 2,301 bytes).
constexpr uint64_t kDeepSeekV3TemplateHash = 0xebe3604156dc466aULL;

// Literal token texts of the DeepSeek-V3 template ("｜" is U+FF5C, "▁" is U+2581).
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kToolSep = "<｜tool▁sep｜>";
constexpr std::string_view kOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kOutputEnd = "<｜tool▁output▁end｜>";

std::string token_content(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return {};
}

void append_tool_call(std::string& out, const ToolCall& call) {
  out.append(call.type).append(kToolSep).append(call.name).append("\n```json\n");
  out.append(call.arguments).append("\n```").append(kCallEnd);
}

}  // namespace

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& messages) {
  TANDEM_CHECK(messages.is_array(), "a conversation must be a JSON array of messages, got {}",
               messages.type_name());
  std::vector<ChatMessage> result;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    TANDEM_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(),
                 "message {} needs a string \"role\"", i);
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    TANDEM_CHECK(msg.role == "system" || msg.role == "user" || msg.role == "assistant" ||
                     msg.role == "tool",
                 "message {}: role \"{}\" is not one of system, user, assistant, tool", i,
                 msg.role);
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      TANDEM_CHECK(msg.role == "assistant" && m["tool_calls"].is_array(),
                   "message {}: tool_calls must be an array on an assistant message", i);
      for (const auto& call : m["tool_calls"]) {
        const bool ok = call.is_object() && call.contains("function") &&
                        call["function"].is_object() && call["function"].contains("name") &&
                        call["function"]["name"].is_string() &&
                        call["function"].contains("arguments") &&
                        call["function"]["arguments"].is_string();
        TANDEM_CHECK(ok, "message {}: a tool call needs function.name and function.arguments "
                     "as strings (arguments is JSON text)", i);
        ToolCall tc;
        tc.type = call.value("type", std::string("function"));
        tc.name = call["function"]["name"].get<std::string>();
        tc.arguments = call["function"]["arguments"].get<std::string>();
        msg.tool_calls.push_back(std::move(tc));
      }
    }
    const bool has_content = m.contains("content") && !m["content"].is_null();
    if (has_content) {
      TANDEM_CHECK(m["content"].is_string(), "message {}: content must be a string", i);
      msg.content = m["content"].get<std::string>();
    } else {
      TANDEM_CHECK(msg.role == "assistant" && !msg.tool_calls.empty(),
                   "message {}: content is missing or null (allowed only for an assistant "
                   "message with tool_calls)", i);
    }
    result.push_back(std::move(msg));
  }
  return result;
}

ChatTemplate ChatTemplate::from_config(const nlohmann::json& config, const std::string& file) {
  ChatTemplate t;
  if (config.contains("bos_token")) t.bos_token_ = token_content(config["bos_token"]);
  if (!config.contains("chat_template") || config["chat_template"].is_null()) {
    t.format_ = ChatFormat::kNone;
    t.problem_ = fmt::format("{} has no chat_template", file);
    return t;
  }
  if (!config["chat_template"].is_string()) {
    t.format_ = ChatFormat::kUnsupported;
    t.problem_ = fmt::format("{}: chat_template is not a single string (named templates are not "
                             "supported)", file);
    return t;
  }
  const auto& text = config["chat_template"].get_ref<const std::string&>();
  const uint64_t hash = fnv1a64(text);
  if (hash == kDeepSeekV3TemplateHash) {
    t.format_ = ChatFormat::kDeepSeekV3;
    t.problem_.clear();
    return t;
  }
  t.format_ = ChatFormat::kUnsupported;
  t.problem_ = fmt::format(
      "{}: chat_template (fnv1a64 {:016x}, {} bytes) is not one tandem implements; supported: "
      "DeepSeek-V3. See docs/tokenizer.md to add one", file, hash, text.size());
  return t;
}

std::string_view ChatTemplate::name() const {
  switch (format_) {
    case ChatFormat::kDeepSeekV3: return "deepseek-v3";
    case ChatFormat::kUnsupported: return "unsupported";
    case ChatFormat::kNone: break;
  }
  return "none";
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  switch (format_) {
    case ChatFormat::kDeepSeekV3: return render_deepseek_v3(messages, add_generation_prompt);
    case ChatFormat::kNone:
    case ChatFormat::kUnsupported: break;
  }
  TANDEM_FAIL("cannot apply the chat template: {}", problem_);
}

// Mirrors the jinja template line by line, quirks included: `is_first` and `is_output_first`
// are never reset, so only the first tool-call turn opens with <｜Assistant｜> and the
// tool-calls block; a turn's closing tokens follow only its second and later calls.
std::string ChatTemplate::render_deepseek_v3(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt) const {
  std::string system_prompt;
  bool first_system = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!first_system) system_prompt.append("\n\n");
    system_prompt.append(*m.content);
    first_system = false;
  }
  std::string out = bos_token_ + system_prompt;
  bool is_first = false, is_tool = false, is_output_first = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      is_tool = false;
      out.append(kUser).append(*m.content);
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& call : m.tool_calls) {
        if (!is_first) {
          out.append(kAssistant).append(kCallsBegin).append(kCallBegin);
          append_tool_call(out, call);
          is_first = true;
        } else {
          out.append("\n").append(kCallBegin);
          append_tool_call(out, call);
          out.append(kCallsEnd).append(kEndOfSentence);
        }
      }
    } else if (m.role == "assistant") {
      // The template would drop the calls of a turn that also has text: refuse instead.
      TANDEM_CHECK(m.tool_calls.empty(), "message {}: the DeepSeek-V3 template cannot express an "
                   "assistant turn with both content and tool_calls (set content to null)", i);
      if (is_tool) {
        out.append(kOutputsEnd).append(*m.content).append(kEndOfSentence);
        is_tool = false;
      } else {
        out.append(kAssistant).append(*m.content).append(kEndOfSentence);
      }
    } else if (m.role == "tool") {
      is_tool = true;
      if (is_output_first) {
        out.append(kOutputsBegin).append(kOutputBegin).append(*m.content).append(kOutputEnd);
        is_output_first = false;
      } else {
        out.append("\n").append(kOutputBegin).append(*m.content).append(kOutputEnd);
      }
    }
  }
  if (is_tool) out.append(kOutputsEnd);
  if (add_generation_prompt && !is_tool) out.append(kAssistant);
  return out;
}

}  // namespace tandem::tokenizer
