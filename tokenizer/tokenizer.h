// tandem's tokenizer: byte-level BPE loaded from a Hugging Face tokenizer.json (as DeepSeek-V3/R1
// and V2 ship it) plus tokenizer_config.json (BOS/EOS policy, chat template).
//
// encode: invalid UTF-8 in the input is replaced (each maximal ill-formed subpart becomes one
// U+FFFD, as Python's errors="replace"), then added/special tokens are matched, the rest is
// split by the pre-tokenizer regexes and merged by BPE. Ids match the `tokenizers` library.
// decode: bytes of every token concatenated, ill-formed UTF-8 replaced by U+FFFD (as
// tokenizers' ByteLevel decoder); ids outside the vocabulary are skipped, like tokenizers does.
//
// Thread-safe: every const method may be called from any number of threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/chat_template.h"

namespace tandem::tokenizer {

struct LoadOptions {
  // By default a chat_template that tandem does not implement fails the load. With this set
  // the load succeeds and only apply_chat_template() fails (for tools that never chat).
  bool allow_unsupported_chat_template = false;
};

struct EncodeOptions {
  // Prepend BOS / append EOS as tokenizer_config.json's add_bos_token / add_eos_token say.
  bool add_special_tokens = true;
  // Match the text of special tokens (special: true) in the input. False treats it as plain
  // text (tokenizers' encode_special_tokens); non-special added tokens still match.
  bool parse_special = true;
};

class Tokenizer {
 public:
  // Loads DIR/tokenizer.json and DIR/tokenizer_config.json. Throws tandem::Error naming the
  // file for a missing or unreadable file, malformed JSON or an unsupported feature.
  static Tokenizer load(const std::filesystem::path& dir, const LoadOptions& options = {});
  static Tokenizer load_files(const std::filesystem::path& tokenizer_json,
                              const std::filesystem::path& tokenizer_config,
                              const LoadOptions& options = {});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Appends to `ids` (no allocation of a new vector; for hot paths).
  void encode_into(std::string_view text, const EncodeOptions& options,
                   std::vector<int32_t>& ids) const;

  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The raw bytes one token contributes to decode (may be part of a UTF-8 character); empty
  // for an id that has no token.
  std::string_view token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;

  // Added tokens by their text; vocabulary tokens in byte-level form ("Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for an unknown id
  // One past the largest id (model configs may have a larger, padded vocab_size).
  int32_t vocab_size() const;
  const std::vector<AddedToken>& added_tokens() const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool add_bos() const;
  bool add_eos() const;

  const ChatTemplate& chat_template() const;
  // The prompt text / ids for a conversation. Ids come from encoding the text with special
  // tokens parsed and no extra BOS (the template writes it), as transformers does.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) const;
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                   bool add_generation_prompt) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::tokenizer
