#include "server/openai_format.h"

namespace tandem::server {

using nlohmann::json;

json finish_reason_json(const Choice& c) {
  if (!c.finished) return nullptr;
  return std::string(runtime::finish_reason_name(c.finish_reason));
}

json usage_json(const Generation& g) {
  const int64_t completion = g.completion_tokens();
  return json{{"prompt_tokens", g.prompt_tokens()},
              {"completion_tokens", completion},
              {"total_tokens", g.prompt_tokens() + completion}};
}

std::string token_text(const tokenizer::Tokenizer* tok, int32_t id) {
  if (tok == nullptr) return "";
  const int32_t ids[1] = {id};
  return tok->decode(ids);  // decode replaces ill-formed UTF-8 with U+FFFD
}

namespace {

json token_bytes_json(const tokenizer::Tokenizer* tok, int32_t id) {
  json bytes = json::array();
  if (tok == nullptr) return bytes;
  for (const char c : tok->token_bytes(id)) bytes.push_back(int(static_cast<unsigned char>(c)));
  return bytes;
}

// Legacy completions logprobs: parallel arrays; top_logprobs as {token: logprob} maps.
json completion_logprobs(std::span<const runtime::SampleResult> lps, const tokenizer::Tokenizer* tok,
                         int64_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const runtime::SampleResult& r : lps) {
    const std::string text = token_text(tok, r.token);
    tokens.push_back(text);
    token_logprobs.push_back(r.logprob);
    json alts = json::object();
    for (const runtime::TokenLogprob& t : r.top) alts[token_text(tok, t.token)] = t.logprob;
    top.push_back(std::move(alts));
    offsets.push_back(text_offset);
    text_offset += int64_t(text.size());
  }
  return json{{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top},
              {"text_offset", offsets}};
}

// Chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}.
json chat_logprobs(std::span<const runtime::SampleResult> lps, const tokenizer::Tokenizer* tok) {
  json content = json::array();
  for (const runtime::SampleResult& r : lps) {
    json top = json::array();
    for (const runtime::TokenLogprob& t : r.top) {
      top.push_back(json{{"token", token_text(tok, t.token)},
                         {"logprob", t.logprob},
                         {"bytes", token_bytes_json(tok, t.token)}});
    }
    content.push_back(json{{"token", token_text(tok, r.token)},
                           {"logprob", r.logprob},
                           {"bytes", token_bytes_json(tok, r.token)},
                           {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}};
}

json envelope(const Generation& g, const char* object) {
  return json{{"id", g.id()},
              {"object", object},
              {"created", g.created_unix_s()},
              {"model", g.model_name()}};
}

}  // namespace

json completion_response(const Generation& g, const tokenizer::Tokenizer* tok) {
  json choices = json::array();
  for (size_t i = 0; i < g.choices().size(); ++i) {
    const Choice& c = g.choices()[i];
    choices.push_back(json{
        {"index", i},
        {"text", c.text},
        {"logprobs", g.request().gen.params.logprobs ? completion_logprobs(c.logprobs, tok, 0)
                                                     : json(nullptr)},
        {"finish_reason", finish_reason_json(c)}});
  }
  json r = envelope(g, "text_completion");
  r["choices"] = std::move(choices);
  r["usage"] = usage_json(g);
  return r;
}

json chat_response(const Generation& g, const tokenizer::Tokenizer* tok) {
  json choices = json::array();
  for (size_t i = 0; i < g.choices().size(); ++i) {
    const Choice& c = g.choices()[i];
    choices.push_back(json{
        {"index", i},
        {"message", {{"role", "assistant"}, {"content", c.text}}},
        {"logprobs", g.request().gen.params.logprobs ? chat_logprobs(c.logprobs, tok) : json(nullptr)},
        {"finish_reason", finish_reason_json(c)}});
  }
  json r = envelope(g, "chat.completion");
  r["choices"] = std::move(choices);
  r["usage"] = usage_json(g);
  return r;
}

json generate_response(const Generation& g, size_t index) {
  const Choice& c = g.choices()[index];
  json finish = nullptr;
  if (c.finished) finish = json{{"type", runtime::finish_reason_name(c.finish_reason)}};
  json meta{{"id", g.id()},
            {"finish_reason", finish},
            {"prompt_tokens", g.prompt_tokens()},
            {"completion_tokens", c.token_ids.size()}};
  if (g.request().gen.params.logprobs) {
    json lps = json::array(), tops = json::array();
    for (const runtime::SampleResult& r : c.logprobs) {
      lps.push_back(json::array({r.logprob, r.token, nullptr}));
      json top = json::array();
      for (const runtime::TokenLogprob& t : r.top) top.push_back(json::array({t.logprob, t.token, nullptr}));
      tops.push_back(std::move(top));
    }
    meta["output_token_logprobs"] = std::move(lps);
    if (g.request().gen.params.top_logprobs > 0) meta["output_top_logprobs"] = std::move(tops);
  }
  json out{{"text", c.text}, {"output_ids", c.token_ids}, {"meta_info", std::move(meta)}};
  if (g.choices().size() > 1) out["index"] = index;
  return out;
}

std::vector<json> completion_chunks(const Generation& g, const runtime::StreamEvent& ev,
                                    const tokenizer::Tokenizer* tok) {
  const Choice& c = g.choices()[size_t(ev.index)];
  const bool want_logprobs = g.request().gen.params.logprobs;
  if (ev.text.empty() && !ev.finished && !(want_logprobs && !ev.logprobs.empty())) return {};
  json chunk = envelope(g, "text_completion");
  // Offsets of this chunk's tokens within the choice's text so far.
  const int64_t offset = int64_t(c.text.size() - ev.text.size());
  chunk["choices"] = json::array({json{
      {"index", ev.index},
      {"text", ev.text},
      {"logprobs", want_logprobs ? completion_logprobs(ev.logprobs, tok, offset) : json(nullptr)},
      {"finish_reason", ev.finished ? finish_reason_json(c) : json(nullptr)}}});
  if (g.request().include_usage) chunk["usage"] = nullptr;
  return {std::move(chunk)};
}

std::vector<json> chat_chunks(const Generation& g, const runtime::StreamEvent& ev, bool first,
                              const tokenizer::Tokenizer* tok) {
  const Choice& c = g.choices()[size_t(ev.index)];
  const bool want_logprobs = g.request().gen.params.logprobs;
  std::vector<json> out;
  auto chunk = [&](json delta, json logprobs, json finish) {
    json j = envelope(g, "chat.completion.chunk");
    j["choices"] = json::array({json{{"index", ev.index},
                                     {"delta", std::move(delta)},
                                     {"logprobs", std::move(logprobs)},
                                     {"finish_reason", std::move(finish)}}});
    if (g.request().include_usage) j["usage"] = nullptr;
    out.push_back(std::move(j));
  };
  if (first) chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
  const bool has_logprobs = want_logprobs && !ev.logprobs.empty();
  if (ev.text.empty() && !ev.finished && !has_logprobs) return out;
  json delta = json::object();
  if (!ev.text.empty() || has_logprobs) delta["content"] = ev.text;
  chunk(std::move(delta), has_logprobs ? chat_logprobs(ev.logprobs, tok) : json(nullptr),
        ev.finished ? finish_reason_json(c) : json(nullptr));
  return out;
}

json usage_chunk(const Generation& g) {
  json j = envelope(g, g.request().endpoint == Endpoint::kChat ? "chat.completion.chunk"
                                                               : "text_completion");
  j["choices"] = json::array();
  j["usage"] = usage_json(g);
  return j;
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace tandem::server
