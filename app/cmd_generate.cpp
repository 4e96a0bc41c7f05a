// tandem generate: greedy generation from token ids on the CPU backend, the smallest proof
// that the engine loop works (prefill once, then one decode step per token over the cache).
#include <chrono>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/log.h"
#include "model/loader.h"

namespace tandem::app {

namespace {

struct GenerateOptions {
  std::string model_path;
  std::string prompt_ids;
  int max_tokens = 16;
  int page_size = 16;
  bool ignore_eos = false;
};

std::vector<int32_t> parse_ids(const std::string& text, int64_t vocab) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TANDEM_CHECK(used == item.size() && !item.empty(),
                 "--prompt-ids: '{}' is not an integer (expected a comma-separated list like 1,2,3)",
                 item);
    TANDEM_CHECK(v >= 0 && v < vocab, "--prompt-ids: token id {} is outside the vocabulary [0, {})",
                 v, vocab);
    ids.push_back(int32_t(v));
  }
  TANDEM_CHECK(!ids.empty(), "--prompt-ids: empty prompt");
  return ids;
}

int32_t argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) best = row[i] > row[best] ? i : best;
  return int32_t(best);
}

int run_generate(const GenerateOptions& o) {
  LoadedModel m = load_model(o.model_path);
  const ModelConfig& c = m.config;
  const std::vector<int32_t> prompt = parse_ids(o.prompt_ids, c.vocab_size);
  const int64_t total = int64_t(prompt.size()) + o.max_tokens;
  TANDEM_CHECK(total <= c.max_position_embeddings,
               "prompt ({}) + --max-tokens ({}) exceeds the context length {}", prompt.size(),
               o.max_tokens, c.max_position_embeddings);
  const int64_t pages = (total + o.page_size - 1) / o.page_size;
  KvCache cache = KvCache::create(c, pages, o.page_size, DType::kF32);
  SequenceStep seq;
  for (int64_t p = 0; p < pages; ++p) seq.pages.push_back(int32_t(p));

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  seq.new_tokens = prompt;
  Tensor logits = m.model->forward(ForwardBatch::build(ForwardMode::kExtend, {seq}, o.page_size), cache);
  const auto t1 = clock::now();
  std::vector<int32_t> output{argmax(logits.data<float>(), c.vocab_size)};
  seq.cached_len = int64_t(prompt.size());
  auto is_eos = [&](int32_t t) {
    for (int64_t e : c.eos_token_ids) if (e == t) return true;
    return false;
  };
  while (int(output.size()) < o.max_tokens && (o.ignore_eos || !is_eos(output.back()))) {
    seq.new_tokens = {output.back()};
    logits = m.model->forward(ForwardBatch::build(ForwardMode::kDecode, {seq}, o.page_size), cache);
    ++seq.cached_len;
    output.push_back(argmax(logits.data<float>(), c.vocab_size));
  }
  const auto t2 = clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  nlohmann::json result{{"prompt_ids", prompt},
                        {"output_ids", output},
                        {"prompt_tokens", prompt.size()},
                        {"completion_tokens", output.size()},
                        {"prefill_ms", prefill_s * 1e3},
                        {"decode_tokens_per_s",
                         output.size() > 1 ? double(output.size() - 1) / decode_s : 0.0}};
  std::printf("%s\n", result.dump().c_str());
  TANDEM_LOG_INFO("prefill {} tokens in {:.1f} ms; decoded {} tokens at {:.1f} tokens/s",
                  prompt.size(), prefill_s * 1e3, output.size() - 1,
                  result["decode_tokens_per_s"].get<double>());
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, int& exit_code) {
  auto opts = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Greedy generation from token ids on the CPU backend; prints one JSON line");
  cmd->add_option("--model-path", opts->model_path,
                  "Model directory (config.json + safetensors), e.g. from `tandem make-model`")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt-ids", opts->prompt_ids, "Prompt token ids, comma-separated: 1,2,3")
      ->required();
  cmd->add_option("--max-tokens", opts->max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--page-size", opts->page_size, "KV cache page size in tokens (1-64)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--ignore-eos", opts->ignore_eos, "Keep generating after an end-of-sequence token");
  cmd->callback([opts, &exit_code] { exit_code = run_generate(*opts); });
}

}  // namespace tandem::app
