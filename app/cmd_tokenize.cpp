// `tandem tokenize`: the tokenizer for scripts. One input line, one output line:
//   (default)  text line            -> JSON array of ids
//   --json     JSON string line     -> JSON array of ids (text that contains newlines)
//   --decode   JSON array of ids    -> JSON string of text
//   --chat     JSON array of {role, content} messages -> JSON array of prompt ids (chat
//              template applied, generation prompt added unless --no-generation-prompt)
// Stops at the first bad line with "line N: why" on stderr and exit code 1.
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>
#include <string>

#include "app/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace tandem::app {

namespace {

struct TokenizeOptions {
  std::string tokenizer_dir;
  bool decode = false;
  bool chat = false;
  bool json_input = false;
  bool no_bos = false;
  bool plain_special = false;
  bool skip_special = false;
  bool no_generation_prompt = false;
};

std::string process_line(const tokenizer::Tokenizer& tok, const TokenizeOptions& o,
                         const std::string& line) {
  if (o.decode) {
    const auto ids = nlohmann::json::parse(line);
    TANDEM_CHECK(ids.is_array(), "expected a JSON array of token ids");
    std::vector<int32_t> values;
    for (const auto& id : ids) {
      TANDEM_CHECK(id.is_number_integer(), "token ids must be integers, got {}", id.dump());
      values.push_back(id.get<int32_t>());
    }
    return nlohmann::json(tok.decode(values, o.skip_special)).dump();
  }
  if (o.chat) {
    const auto messages = tokenizer::chat_messages_from_json(nlohmann::json::parse(line));
    return nlohmann::json(tok.encode_chat(messages, !o.no_generation_prompt)).dump();
  }
  tokenizer::EncodeOptions options;
  options.add_special_tokens = !o.no_bos;
  options.parse_special = !o.plain_special;
  if (o.json_input) {
    const auto text = nlohmann::json::parse(line);
    TANDEM_CHECK(text.is_string(), "expected a JSON string");
    return nlohmann::json(tok.encode(text.get_ref<const std::string&>(), options)).dump();
  }
  return nlohmann::json(tok.encode(line, options)).dump();
}

int run_tokenize(const TokenizeOptions& o) {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  try {
    tokenizer::LoadOptions load;
    // Only --chat needs the template; the other modes work for any chat_template.
    load.allow_unsupported_chat_template = !o.chat;
    tok = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load(o.tokenizer_dir, load));
  } catch (const std::exception& e) {
    std::cerr << "tandem tokenize: " << e.what() << "\n";
    return 1;
  }
  std::string line;
  for (int64_t n = 1; std::getline(std::cin, line); ++n) {
    try {
      std::cout << process_line(*tok, o, line) << '\n' << std::flush;
    } catch (const std::exception& e) {
      std::cerr << "tandem tokenize: line " << n << ": " << e.what() << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Encode text lines from stdin to JSON id arrays (or --decode, --chat)");
  cmd->add_option("--tokenizer", o->tokenizer_dir,
                  "Folder with tokenizer.json and tokenizer_config.json")->required();
  auto* decode = cmd->add_flag("--decode", o->decode,
                               "Input: JSON arrays of ids; output: JSON strings of text");
  auto* chat = cmd->add_flag("--chat", o->chat,
                             "Input: JSON arrays of {role, content} messages; output: prompt ids");
  cmd->add_flag("--json", o->json_input, "Input lines are JSON strings (text with newlines)");
  cmd->add_flag("--no-bos", o->no_bos,
                "Do not add BOS/EOS (by default as tokenizer_config.json says)");
  cmd->add_flag("--plain-special", o->plain_special,
                "Encode special-token text in the input as plain text");
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave out special tokens");
  cmd->add_flag("--no-generation-prompt", o->no_generation_prompt,
                "With --chat: do not end with the assistant prompt");
  decode->excludes(chat);
  cmd->callback([o, &exit_code] { exit_code = run_tokenize(*o); });
}

}  // namespace tandem::app
