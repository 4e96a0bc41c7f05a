#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace tandem::tokenizer {

namespace {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  TANDEM_CHECK(std::filesystem::is_regular_file(path, ec), "tokenizer file not found: {}",
               path.string());
  std::ifstream in(path, std::ios::binary);
  TANDEM_CHECK(in.good(), "cannot open tokenizer file {}", path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    TANDEM_FAIL("{}: malformed JSON: {}", path.string(), e.what());
  }
}

// What tokenizers' ByteLevel decoder makes of a token: its characters mapped back to bytes, or
// its UTF-8 text as-is when some character is outside the byte-level alphabet (added tokens
// such as "<｜User｜>").
std::string byte_level_decode(std::string_view token) {
  if (!utf8_valid(token)) return std::string(token);
  std::string bytes;
  size_t pos = 0;
  while (pos < token.size()) {
    const uint32_t cp = utf8_decode_valid(token, pos);
    if (cp >= kByteLevel.cp_to_byte.size() || kByteLevel.cp_to_byte[cp] < 0) {
      return std::string(token);
    }
    bytes.push_back(static_cast<char>(kByteLevel.cp_to_byte[cp]));
  }
  return bytes;
}

std::string token_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return {};
}

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<Bpe> bpe;
  PreTokenizer pre;
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // normalized=false tokens, matched on the input
  AddedTokenMatcher normalized_matcher;  // normalized=true tokens, matched in what remains
  std::vector<std::string> token_bytes;  // by id
  std::vector<uint8_t> special;          // by id
  std::vector<int32_t> added_index;      // by id: index into `added` or -1
  std::optional<int32_t> bos, eos;
  bool add_bos = false, add_eos = false;
  ChatTemplate chat;

  void load_added_tokens(const nlohmann::json& root, const std::string& file);
  void load_config(const nlohmann::json& config, const std::string& file);
  void check_decoder_and_post_processor(const nlohmann::json& root, const std::string& file);
  std::optional<int32_t> find_id(std::string_view text) const;

  template <typename Fn>
  static void split_added(std::string_view text, const AddedTokenMatcher& matcher,
                          bool parse_special, std::vector<int32_t>& ids, Fn&& on_gap) {
    size_t pos = 0, from = 0;
    while (auto m = matcher.find(text, from)) {
      from = m->end;
      // A special token that is not to be parsed stays in the text, and (as in tokenizers'
      // non-overlapping search) the search resumes after it.
      if (m->special && !parse_special) continue;
      if (m->begin > pos) on_gap(text.substr(pos, m->begin - pos));
      ids.push_back(m->id);
      pos = m->end;
    }
    if (pos < text.size()) on_gap(text.substr(pos));
  }
};

void Tokenizer::Impl::load_added_tokens(const nlohmann::json& root, const std::string& file) {
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return;
  TANDEM_CHECK(root["added_tokens"].is_array(), "{}: added_tokens is not an array", file);
  for (const auto& t : root["added_tokens"]) {
    TANDEM_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer() &&
                     t.contains("content") && t["content"].is_string(),
                 "{}: an added token lacks an integer id or a string content", file);
    AddedToken token;
    token.id = t["id"].get<int32_t>();
    token.content = t["content"].get<std::string>();
    token.special = t.value("special", false);
    token.normalized = t.value("normalized", !token.special);
    TANDEM_CHECK(token.id >= 0, "{}: added token \"{}\" has a negative id", file, token.content);
    TANDEM_CHECK(!t.value("lstrip", false) && !t.value("rstrip", false) &&
                     !t.value("single_word", false),
                 "{}: added token \"{}\" uses lstrip/rstrip/single_word, which are not supported",
                 file, token.content);
    added.push_back(std::move(token));
  }
  std::vector<const AddedToken*> raw, normalized;
  for (const AddedToken& t : added) (t.normalized ? normalized : raw).push_back(&t);
  raw_matcher.build(raw);
  normalized_matcher.build(normalized);
}

void Tokenizer::Impl::check_decoder_and_post_processor(const nlohmann::json& root,
                                                       const std::string& file) {
  const auto& decoder = root.contains("decoder") ? root["decoder"] : nlohmann::json();
  const std::string decoder_type = decoder.is_object() ? decoder.value("type", "") : "";
  TANDEM_CHECK(decoder_type == "ByteLevel", "{}: decoder \"{}\" is not supported (only ByteLevel)",
               file, decoder.is_null() ? "null" : decoder_type);
  // BOS/EOS come from tokenizer_config.json; a post-processor may only restate that.
  const auto& post = root.contains("post_processor") ? root["post_processor"] : nlohmann::json();
  if (post.is_null()) return;
  const std::string post_type = post.value("type", "");
  TANDEM_CHECK(post_type == "ByteLevel" || post_type == "TemplateProcessing",
               "{}: post_processor \"{}\" is not supported (ByteLevel or TemplateProcessing)",
               file, post_type);
}

std::optional<int32_t> Tokenizer::Impl::find_id(std::string_view text) const {
  for (const AddedToken& t : added) {
    if (t.content == text) return t.id;
  }
  return bpe->token_to_id(text);
}

void Tokenizer::Impl::load_config(const nlohmann::json& config, const std::string& file) {
  TANDEM_CHECK(config.is_object(), "{}: expected a JSON object", file);
  auto resolve = [&](const char* key) -> std::optional<int32_t> {
    if (!config.contains(key) || config[key].is_null()) return std::nullopt;
    const std::string text = token_text(config[key]);
    const auto id = find_id(text);
    TANDEM_CHECK(id.has_value(), "{}: {} \"{}\" is not a token of tokenizer.json", file, key,
                 text);
    return id;
  };
  bos = resolve("bos_token");
  eos = resolve("eos_token");
  add_bos = config.value("add_bos_token", false);
  add_eos = config.value("add_eos_token", false);
  TANDEM_CHECK(!add_bos || bos, "{}: add_bos_token is true but there is no bos_token", file);
  TANDEM_CHECK(!add_eos || eos, "{}: add_eos_token is true but there is no eos_token", file);
  chat = ChatTemplate::from_config(config, file);
}

Tokenizer Tokenizer::load(const std::filesystem::path& dir, const LoadOptions& options) {
  return load_files(dir / "tokenizer.json", dir / "tokenizer_config.json", options);
}

Tokenizer Tokenizer::load_files(const std::filesystem::path& tokenizer_json,
                                const std::filesystem::path& tokenizer_config,
                                const LoadOptions& options) {
  const std::string file = tokenizer_json.string();
  const nlohmann::json root = read_json_file(tokenizer_json);
  const nlohmann::json config = read_json_file(tokenizer_config);
  TANDEM_CHECK(root.is_object(), "{}: expected a JSON object", file);

  auto impl = std::make_unique<Impl>();
  try {
    impl->bpe = Bpe::from_json(root.contains("model") ? root["model"] : nlohmann::json(), file);
    impl->pre = PreTokenizer::from_json(
        root.contains("normalizer") ? root["normalizer"] : nlohmann::json(),
        root.contains("pre_tokenizer") ? root["pre_tokenizer"] : nlohmann::json(), file);
    impl->check_decoder_and_post_processor(root, file);
    impl->load_added_tokens(root, file);
  } catch (const nlohmann::json::exception& e) {
    TANDEM_FAIL("{}: unexpected structure: {}", file, e.what());
  }
  int32_t id_end = impl->bpe->id_end();
  for (const AddedToken& t : impl->added) id_end = std::max(id_end, t.id + 1);
  impl->token_bytes.resize(id_end);
  impl->special.assign(id_end, 0);
  impl->added_index.assign(id_end, -1);
  for (int32_t id = 0; id < impl->bpe->id_end(); ++id) {
    impl->token_bytes[id] = byte_level_decode(impl->bpe->id_to_token(id));
  }
  // Added tokens take precedence over a vocabulary entry of the same id, as in tokenizers.
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& t = impl->added[i];
    impl->token_bytes[t.id] = byte_level_decode(t.content);
    impl->special[t.id] = t.special;
    impl->added_index[t.id] = static_cast<int32_t>(i);
  }

  const std::string config_file = tokenizer_config.string();
  try {
    impl->load_config(config, config_file);
  } catch (const nlohmann::json::exception& e) {
    TANDEM_FAIL("{}: unexpected structure: {}", config_file, e.what());
  }
  if (impl->chat.format() == ChatFormat::kUnsupported && !options.allow_unsupported_chat_template) {
    TANDEM_FAIL("{}", impl->chat.problem());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  encode_into(text, options, ids);
  return ids;
}

void Tokenizer::encode_into(std::string_view text, const EncodeOptions& options,
                            std::vector<int32_t>& ids) const {
  const Impl& im = *impl_;
  std::string sanitized;
  if (!utf8_valid(text)) {
    sanitized = utf8_sanitize(text);
    text = sanitized;
  }
  if (options.add_special_tokens && im.add_bos) ids.push_back(*im.bos);
  thread_local std::vector<std::string_view> pieces;
  auto encode_plain = [&](std::string_view plain) {
    pieces.clear();
    im.pre.split(plain, pieces);
    for (const std::string_view piece : pieces) im.bpe->encode_piece(piece, ids);
  };
  Impl::split_added(text, im.raw_matcher, options.parse_special, ids, [&](std::string_view gap) {
    Impl::split_added(gap, im.normalized_matcher, options.parse_special, ids, encode_plain);
  });
  if (options.add_special_tokens && im.add_eos) ids.push_back(*im.eos);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    bytes.append(token_bytes(id));
  }
  return utf8_valid(bytes) ? bytes : utf8_sanitize(bytes);
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return impl_->token_bytes[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->find_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  if (impl_->added_index[id] >= 0) return impl_->added[impl_->added_index[id]].content;
  return impl_->bpe->id_to_token(id);
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->token_bytes.size()); }
const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
const ChatTemplate& Tokenizer::chat_template() const { return impl_->chat; }

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  return impl_->chat.render(messages, add_generation_prompt);
}

std::vector<int32_t> Tokenizer::encode_chat(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt) const {
  EncodeOptions options;
  options.add_special_tokens = false;
  return encode(apply_chat_template(messages, add_generation_prompt), options);
}

}  // namespace tandem::tokenizer
