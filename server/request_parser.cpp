#include "server/request_parser.h"

#include <cmath>
#include <limits>

#include "tokenizer/chat_template.h"

namespace tandem::server {

using nlohmann::json;

namespace {

// Reads optional fields of one JSON object with type and range checks; keeps the first error.
// A field that is absent or null leaves its output untouched (the default).
class FieldReader {
 public:
  FieldReader(const json& object, std::optional<ApiError>& error)
      : object_(object), error_(error) {}

  bool has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }
  const json& at(const char* key) const { return object_[key]; }

  void number(const char* key, float& out) {
    if (error_ || !has(key)) return;
    const json& v = object_[key];
    if (!v.is_number() || !std::isfinite(v.get<double>())) return fail(key, "a number");
    const double d = v.get<double>();
    if (std::fabs(d) > 1e30) return fail(key, "a number of sensible size");
    out = float(d);
  }

  // Integers must be JSON integers within [lo, hi] (1.5 or 1e12 for an int32 are refused,
  // never truncated).
  template <class Int>
  void integer(const char* key, Int& out, int64_t lo = std::numeric_limits<int32_t>::min(),
               int64_t hi = std::numeric_limits<int32_t>::max()) {
    if (error_ || !has(key)) return;
    const json& v = object_[key];
    const bool integral = v.is_number_integer() ||
                          (v.is_number_float() && std::isfinite(v.get<double>()) &&
                           v.get<double>() == std::floor(v.get<double>()) &&
                           std::fabs(v.get<double>()) < 9e15);
    if (!integral) return fail(key, "an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)) return out_of_range(key, lo, hi);
    const int64_t i = v.is_number_float() ? int64_t(v.get<double>()) : v.get<int64_t>();
    if (i < lo || i > hi) return out_of_range(key, lo, hi);
    out = Int(i);
  }

  void boolean(const char* key, bool& out) {
    if (error_ || !has(key)) return;
    if (!object_[key].is_boolean()) return fail(key, "a boolean");
    out = object_[key].get<bool>();
  }

  void string(const char* key, std::string& out) {
    if (error_ || !has(key)) return;
    if (!object_[key].is_string()) return fail(key, "a string");
    out = object_[key].get<std::string>();
  }

  // A string or an array of strings (OpenAI's `stop`).
  void strings(const char* key, std::vector<std::string>& out, size_t max_count) {
    if (error_ || !has(key)) return;
    const json& v = object_[key];
    if (v.is_string()) {
      out = {v.get<std::string>()};
      return;
    }
    if (!v.is_array()) return fail(key, "a string or an array of strings");
    std::vector<std::string> list;
    for (const json& s : v) {
      if (!s.is_string()) return fail(key, "a string or an array of strings");
      list.push_back(s.get<std::string>());
    }
    if (list.size() > max_count) {
      error_ = bad_request(fmt::format("{}: at most {} entries, got {}", key, max_count, list.size()), key);
      return;
    }
    out = std::move(list);
  }

  void ints(const char* key, std::vector<int32_t>& out, size_t max_count) {
    if (error_ || !has(key)) return;
    const json& v = object_[key];
    if (!v.is_array()) return fail(key, "an array of integers");
    if (v.size() > max_count) {
      error_ = bad_request(fmt::format("{}: at most {} entries, got {}", key, max_count, v.size()), key);
      return;
    }
    std::vector<int32_t> list;
    list.reserve(v.size());
    for (const json& x : v) {
      if (!x.is_number_integer()) return fail(key, "an array of integers");
      const int64_t i = x.get<int64_t>();
      if (i < std::numeric_limits<int32_t>::min() || i > std::numeric_limits<int32_t>::max()) {
        return fail(key, "an array of 32-bit integers");
      }
      list.push_back(int32_t(i));
    }
    out = std::move(list);
  }

  void fail(const char* key, const char* expected) {
    error_ = bad_request(fmt::format("{}: expected {}, got {}", key, expected,
                                     object_[key].dump().substr(0, 64)), key);
  }

 private:
  void out_of_range(const char* key, int64_t lo, int64_t hi) {
    error_ = bad_request(fmt::format("{} must be an integer in [{}, {}], got {}", key, lo, hi,
                                     object_[key].dump().substr(0, 64)), key);
  }

  const json& object_;
  std::optional<ApiError>& error_;
};

constexpr size_t kMaxStopStrings = 32;
constexpr size_t kMaxStopTokenIds = 1024;

// The sampling fields OpenAI and SGLang share, with their OpenAI names.
void read_sampling(FieldReader& r, runtime::SamplingParams& p) {
  r.number("temperature", p.temperature);
  r.number("top_p", p.top_p);
  r.integer("top_k", p.top_k);
  r.number("min_p", p.min_p);
  r.number("presence_penalty", p.presence_penalty);
  r.number("frequency_penalty", p.frequency_penalty);
  r.number("repetition_penalty", p.repetition_penalty);
  r.integer("n", p.n);
  r.boolean("ignore_eos", p.ignore_eos);
  r.strings("stop", p.stop, kMaxStopStrings);
  r.ints("stop_token_ids", p.stop_token_ids, kMaxStopTokenIds);
  if (r.has("seed")) {
    uint64_t seed = 0;
    r.integer("seed", seed, 0, std::numeric_limits<int64_t>::max());
    p.seed = seed;
  }
}

// Fields that change what a request means and that tandem does not implement: refusing them
// is better than silently answering a different question.
std::optional<ApiError> refuse_unsupported(const json& body) {
  auto truthy = [&](const char* key) {
    if (!body.contains(key) || body[key].is_null()) return false;
    const json& v = body[key];
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_object() || v.is_array() || v.is_string()) return !v.empty();
    return true;
  };
  if (truthy("echo")) return bad_request("echo is not supported", "echo");
  if (truthy("suffix")) return bad_request("suffix is not supported", "suffix");
  if (truthy("logit_bias")) return bad_request("logit_bias is not supported", "logit_bias");
  if (truthy("tools")) return bad_request("tools are not supported", "tools");
  if (body.contains("best_of") && !body["best_of"].is_null() &&
      !(body["best_of"].is_number_integer() && body["best_of"].get<int64_t>() == 1)) {
    return bad_request("best_of other than 1 is not supported", "best_of");
  }
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const json& f = body["response_format"];
    if (!f.is_object() || f.value("type", std::string()) != "text") {
      return bad_request("response_format: only {\"type\": \"text\"} is supported",
                         "response_format");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> check_model(const json& body, const ParseContext& ctx) {
  if (!body.contains("model") || body["model"].is_null()) return std::nullopt;
  if (!body["model"].is_string()) return bad_request("model: expected a string", "model");
  const std::string model = body["model"].get<std::string>();
  if (model == ctx.model_name) return std::nullopt;
  ApiError e;
  e.http_status = 404;
  e.message = fmt::format("The model '{}' does not exist; this server serves '{}'", model,
                          ctx.model_name);
  e.param = "model";
  e.code = "model_not_found";
  return e;
}

// The limits every request must meet once its prompt is known: the sampling parameters'
// own validation, the context length (OpenAI's context_length_exceeded), the KV pool.
std::optional<ApiError> check_limits(const ParseContext& ctx, const char* prompt_field,
                                     const char* max_tokens_field, bool max_tokens_given,
                                     ParsedRequest* out) {
  runtime::SamplingParams& p = out->gen.params;
  const int64_t prompt = int64_t(out->gen.prompt_ids.size());
  if (prompt == 0) return bad_request(fmt::format("{}: empty prompt", prompt_field), prompt_field);
  const int64_t limit = std::min(ctx.context_length, ctx.kv_pool_tokens);
  if (prompt >= limit) {
    return bad_request(fmt::format("This model's maximum context length is {} tokens; the "
                                   "prompt has {} tokens", limit, prompt),
                       prompt_field, "context_length_exceeded");
  }
  if (!max_tokens_given) {
    p.max_tokens = int32_t(std::min<int64_t>(p.max_tokens, limit - prompt));
  } else if (prompt + p.max_tokens > limit && p.max_tokens >= 1) {
    return bad_request(fmt::format("This model's maximum context length is {} tokens; you "
                                   "requested {} tokens ({} in the prompt, {} for the "
                                   "completion)", limit, prompt + p.max_tokens, prompt,
                                   p.max_tokens),
                       max_tokens_field, "context_length_exceeded");
  }
  if (!p.stop.empty() && ctx.tokenizer == nullptr) {
    return bad_request("stop: stop strings need a tokenizer (the server runs with "
                       "--skip-tokenizer-init)", "stop");
  }
  if (Status s = p.validate(ctx.vocab_size); !s.ok()) {
    ApiError e = from_status(s);
    // SamplingParams names its own field; the request may have spelt it differently.
    if (e.param == std::string("max_tokens")) e.param = max_tokens_field;
    return e;
  }
  for (const int32_t id : out->gen.prompt_ids) {
    if (id < 0 || id >= ctx.vocab_size) {
      return bad_request(fmt::format("{}: token id {} is outside the vocabulary [0, {})",
                                     prompt_field, id, ctx.vocab_size), prompt_field);
    }
  }
  return std::nullopt;
}

std::optional<ApiError> need_object(const json& body) {
  if (!body.is_object()) return bad_request("the request body must be a JSON object");
  return std::nullopt;
}

std::optional<ApiError> read_stream_flags(FieldReader& r, const json& body, ParsedRequest* out,
                                          std::optional<ApiError>& error) {
  r.boolean("stream", out->stream);
  if (!error && r.has("stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) return bad_request("stream_options: expected an object", "stream_options");
    FieldReader sr(so, error);
    sr.boolean("include_usage", out->include_usage);
  }
  return error;
}

}  // namespace

std::optional<ApiError> parse_completion_request(const json& body, const ParseContext& ctx,
                                                 ParsedRequest* out) {
  if (auto e = need_object(body)) return e;
  if (auto e = check_model(body, ctx)) return e;
  if (auto e = refuse_unsupported(body)) return e;
  out->endpoint = Endpoint::kCompletions;
  runtime::SamplingParams& p = out->gen.params;
  std::optional<ApiError> error;
  FieldReader r(body, error);
  read_sampling(r, p);
  r.integer("max_tokens", p.max_tokens);
  if (r.has("logprobs")) {
    int32_t top = 0;
    r.integer("logprobs", top, 0, 20);
    p.logprobs = true;
    p.top_logprobs = top;
  }
  if (auto e = read_stream_flags(r, body, out, error)) return e;

  // prompt: "text", ["text"], [ids] or [[ids]]; one prompt per request.
  if (!body.contains("prompt") || body["prompt"].is_null()) {
    return bad_request("prompt is required", "prompt");
  }
  const json* prompt = &body["prompt"];
  if (prompt->is_array() && prompt->size() == 1 && ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    prompt = &(*prompt)[0];
  }
  if (prompt->is_string()) {
    if (ctx.tokenizer == nullptr) {
      return bad_request("prompt: text prompts need a tokenizer (the server runs with "
                         "--skip-tokenizer-init); send token ids", "prompt");
    }
    out->gen.prompt_ids = ctx.tokenizer->encode(prompt->get<std::string>());
  } else if (prompt->is_array() && (prompt->empty() || (*prompt)[0].is_number())) {
    json wrapper{{"prompt", *prompt}};
    FieldReader pr(wrapper, error);
    pr.ints("prompt", out->gen.prompt_ids, size_t(1) << 24);
    if (error) return error;
  } else if (prompt->is_array()) {
    return bad_request("prompt: one prompt per request (send a batch as separate requests)",
                       "prompt");
  } else {
    return bad_request("prompt: expected a string, an array of token ids, or a one-element "
                       "array of either", "prompt");
  }
  return check_limits(ctx, "prompt", "max_tokens", r.has("max_tokens"), out);
}

std::optional<ApiError> parse_chat_request(const json& body, const ParseContext& ctx,
                                           ParsedRequest* out) {
  if (auto e = need_object(body)) return e;
  if (auto e = check_model(body, ctx)) return e;
  if (auto e = refuse_unsupported(body)) return e;
  out->endpoint = Endpoint::kChat;
  runtime::SamplingParams& p = out->gen.params;
  // Chat's default is "as long as the context allows" (check_limits caps it).
  p.max_tokens = std::numeric_limits<int32_t>::max();
  std::optional<ApiError> error;
  FieldReader r(body, error);
  read_sampling(r, p);
  const bool has_mct = r.has("max_completion_tokens");
  const char* max_field = has_mct ? "max_completion_tokens" : "max_tokens";
  r.integer(max_field, p.max_tokens);
  r.boolean("logprobs", p.logprobs);
  r.integer("top_logprobs", p.top_logprobs, 0, 20);
  if (error) return error;
  if (p.top_logprobs > 0 && !p.logprobs) {
    return bad_request("top_logprobs requires logprobs: true", "top_logprobs");
  }
  if (auto e = read_stream_flags(r, body, out, error)) return e;

  if (ctx.tokenizer == nullptr) {
    return bad_request("chat needs a tokenizer (the server runs with --skip-tokenizer-init)",
                       "messages");
  }
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return bad_request("messages: expected a non-empty array of messages", "messages");
  }
  // Content given as parts ([{"type": "text", "text": ...}]) is joined into one string.
  json messages = body["messages"];
  for (json& m : messages) {
    if (!m.is_object() || !m.contains("content") || !m["content"].is_array()) continue;
    std::string text;
    for (const json& part : m["content"]) {
      if (!part.is_object() || part.value("type", std::string()) != "text" ||
          !part.contains("text") || !part["text"].is_string()) {
        return bad_request("messages: only text content parts are supported", "messages");
      }
      text += part["text"].get<std::string>();
    }
    m["content"] = text;
  }
  try {
    const std::vector<tokenizer::ChatMessage> chat = tokenizer::chat_messages_from_json(messages);
    out->gen.prompt_ids = ctx.tokenizer->encode_chat(chat, /*add_generation_prompt=*/true);
  } catch (const Error& e) {
    // The message may carry the source location of the check; the user needs the rest.
    std::string what = e.what();
    if (const size_t pos = what.find(": "); pos != std::string::npos && what.find(".cpp:") < pos) {
      what = what.substr(pos + 2);
    }
    return bad_request("messages: " + what, "messages");
  }
  return check_limits(ctx, "messages", max_field, p.max_tokens != std::numeric_limits<int32_t>::max(), out);
}

std::optional<ApiError> parse_generate_request(const json& body, const ParseContext& ctx,
                                               ParsedRequest* out) {
  if (auto e = need_object(body)) return e;
  out->endpoint = Endpoint::kGenerate;
  runtime::SamplingParams& p = out->gen.params;
  std::optional<ApiError> error;
  FieldReader r(body, error);
  r.boolean("stream", out->stream);
  r.string("rid", out->rid);
  r.boolean("return_logprob", p.logprobs);
  r.integer("top_logprobs_num", p.top_logprobs, 0, 20);
  if (error) return error;
  p.max_tokens = 128;  // SGLang's default max_new_tokens
  bool max_given = false;
  if (r.has("sampling_params")) {
    const json& sp = body["sampling_params"];
    if (!sp.is_object()) return bad_request("sampling_params: expected an object", "sampling_params");
    static const char* const kKnown[] = {
        "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "n", "ignore_eos", "stop", "stop_token_ids", "seed",
        "max_new_tokens", "skip_special_tokens"};
    for (auto it = sp.begin(); it != sp.end(); ++it) {
      bool known = false;
      for (const char* k : kKnown) known = known || it.key() == k;
      if (!known) {
        return bad_request(fmt::format("sampling_params: unknown parameter '{}'", it.key()),
                           "sampling_params");
      }
    }
    FieldReader sr(sp, error);
    read_sampling(sr, p);
    sr.integer("max_new_tokens", p.max_tokens);
    bool skip_special = true;  // accepted for SGLang compatibility; special tokens are skipped
    sr.boolean("skip_special_tokens", skip_special);
    max_given = sr.has("max_new_tokens");
    if (error) return error;
  }
  const bool has_ids = r.has("input_ids");
  const bool has_text = r.has("text");
  if (has_ids == has_text) return bad_request("give exactly one of input_ids and text", "input_ids");
  if (has_ids) {
    r.ints("input_ids", out->gen.prompt_ids, size_t(1) << 24);
    if (error) return error;
  } else {
    std::string text;
    r.string("text", text);
    if (error) return error;
    if (ctx.tokenizer == nullptr) {
      return bad_request("text: needs a tokenizer (the server runs with --skip-tokenizer-init)",
                         "text");
    }
    out->gen.prompt_ids = ctx.tokenizer->encode(text);
  }
  return check_limits(ctx, has_ids ? "input_ids" : "text", "max_new_tokens", max_given, out);
}

std::optional<ApiError> take_pd_bootstrap(json& body, std::optional<PdBootstrap>* out) {
  out->reset();
  if (!body.is_object()) return std::nullopt;  // the endpoint's parser says what is wrong
  static const char* const kFields[] = {"bootstrap_host", "bootstrap_port", "bootstrap_room"};
  int present = 0;
  for (const char* f : kFields) present += body.contains(f) ? 1 : 0;
  if (present == 0) return std::nullopt;
  for (const char* f : kFields) {
    if (!body.contains(f)) {
      return bad_request(fmt::format("{}: missing (bootstrap_host, bootstrap_port and "
                                     "bootstrap_room come together)", f), f);
    }
  }
  PdBootstrap b;
  const json& host = body["bootstrap_host"];
  if (!host.is_string() || host.get<std::string>().empty()) {
    return bad_request("bootstrap_host: expected a non-empty string", "bootstrap_host");
  }
  b.host = host.get<std::string>();
  const json& port = body["bootstrap_port"];
  if (!port.is_number_integer() || port.get<int64_t>() < 1 || port.get<int64_t>() > 65535) {
    return bad_request("bootstrap_port: expected an integer in [1, 65535]", "bootstrap_port");
  }
  b.port = int(port.get<int64_t>());
  const json& room = body["bootstrap_room"];
  if (room.is_number_unsigned()) {
    b.room = room.get<uint64_t>();
  } else if (room.is_number_integer() && room.get<int64_t>() >= 0) {
    b.room = uint64_t(room.get<int64_t>());
  } else {
    return bad_request("bootstrap_room: expected an integer in [0, 2^64)", "bootstrap_room");
  }
  for (const char* f : kFields) body.erase(f);
  *out = std::move(b);
  return std::nullopt;
}

}  // namespace tandem::server
