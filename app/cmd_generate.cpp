// tandem generate: offline generation through the runtime engine (scheduler, paged KV cache,
// prefix cache, sampler). One prompt (--prompt text or --prompt-ids) prints one JSON line;
// --prompts FILE (JSON lines) prints one JSON line per prompt, in input order.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/log.h"
#include "model/loader.h"
#include "runtime/engine.h"

namespace tandem::app {

namespace {

using json = nlohmann::json;
using namespace tandem::runtime;

struct GenerateOptions {
  std::string model_path;
  std::string prompt;
  std::string prompt_ids;
  std::string prompts_file;
  std::string tokenizer_dir;  // default: the model directory
  std::string device = "cpu";
  int32_t cuda_graph_max_bs = 256;
  std::string load_format = "auto";
  SamplingParams sampling;
  int32_t logprobs = -1;  // -1: none; N >= 0: each token's logprob and N alternatives
  int64_t seed = -1;
  int page_size = 16;
  int64_t max_total_tokens = 0;  // 0: enough for every prompt at once
  int max_running_requests = 256;
  int max_batch_tokens = 4096;
  std::string kv_dtype = "bf16";
  bool no_prefix_cache = false;
};

std::vector<int32_t> parse_ids(const std::string& text) {
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
    TANDEM_CHECK(used == item.size() && !item.empty() && v >= 0 && v <= INT32_MAX,
                 "--prompt-ids: '{}' is not a token id (expected a comma-separated list like 1,2,3)",
                 item);
    ids.push_back(int32_t(v));
  }
  TANDEM_CHECK(!ids.empty(), "--prompt-ids: empty prompt");
  return ids;
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) return Device::cuda(std::stoi(name.substr(5)));
  TANDEM_FAIL("--device: expected cpu, cuda or cuda:N, got '{}'", name);
}

// The tokenizer when one is needed (text prompts, stop strings) or present (for output text).
std::unique_ptr<tokenizer::Tokenizer> load_tokenizer(const GenerateOptions& o, bool required) {
  const std::filesystem::path dir = o.tokenizer_dir.empty() ? o.model_path : o.tokenizer_dir;
  if (!std::filesystem::exists(dir / "tokenizer.json")) {
    TANDEM_CHECK(!required,
                 "no tokenizer.json in {}: text prompts and stop strings need one (pass "
                 "--tokenizer DIR, or write one with `tandem make-model --tokenizer DIR`)",
                 dir.string());
    return nullptr;
  }
  return std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load(dir));
}

struct Job {
  GenerateRequest request;
  std::shared_ptr<RequestStream> stream;
  Status status;
};

json choice_json(const std::vector<int32_t>& ids, const std::string& text, FinishReason reason,
                 const std::vector<SampleResult>& lps, bool with_text, bool with_logprobs) {
  json c{{"token_ids", ids}, {"finish_reason", finish_reason_name(reason)}};
  if (with_text) c["text"] = text;
  if (with_logprobs) {
    json arr = json::array();
    for (const SampleResult& r : lps) {
      json top = json::array();
      for (const TokenLogprob& t : r.top) top.push_back({{"token_id", t.token}, {"logprob", t.logprob}});
      arr.push_back({{"token_id", r.token}, {"logprob", r.logprob}, {"top_logprobs", top}});
    }
    c["logprobs"] = arr;
  }
  return c;
}

// Reads a job's stream to the end; returns its JSON line (timings for single prompts).
json collect(Job& job, bool with_text) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto first = start;
  const size_t n = size_t(job.request.params.n);
  std::vector<std::vector<int32_t>> ids(n);
  std::vector<std::string> text(n);
  std::vector<std::vector<SampleResult>> lps(n);
  std::vector<FinishReason> reason(n, FinishReason::kNone);
  std::string error;
  StreamEvent ev;
  size_t total = 0;
  while (job.stream->next(ev)) {
    if (total == 0 && !ev.token_ids.empty()) first = clock::now();
    total += ev.token_ids.size();
    auto& out = ids[size_t(ev.index)];
    out.insert(out.end(), ev.token_ids.begin(), ev.token_ids.end());
    text[size_t(ev.index)] += ev.text;
    auto& l = lps[size_t(ev.index)];
    l.insert(l.end(), ev.logprobs.begin(), ev.logprobs.end());
    if (ev.finished) reason[size_t(ev.index)] = ev.finish_reason;
    if (!ev.error.empty()) error = ev.error;
  }
  const auto end = clock::now();
  const bool with_lp = job.request.params.logprobs;
  json j = choice_json(ids[0], text[0], reason[0], lps[0], with_text, with_lp);
  j["prompt_ids"] = job.request.prompt_ids;
  j["output_ids"] = ids[0];
  j["prompt_tokens"] = job.request.prompt_ids.size();
  j["completion_tokens"] = total;
  const double first_s = std::chrono::duration<double>(first - start).count();
  const double rest_s = std::chrono::duration<double>(end - first).count();
  j["prefill_ms"] = first_s * 1e3;
  j["decode_tokens_per_s"] = total > n && rest_s > 0 ? double(total - n) / rest_s : 0.0;
  if (n > 1) {
    j["choices"] = json::array();
    for (size_t i = 0; i < n; ++i) {
      j["choices"].push_back(choice_json(ids[i], text[i], reason[i],
                                         lps[i], with_text, with_lp));
    }
  }
  if (!error.empty()) j["error"] = error;
  return j;
}

std::vector<Job> read_jobs(const GenerateOptions& o, const SamplingParams& base,
                           const tokenizer::Tokenizer* tok) {
  std::vector<Job> jobs;
  auto encode = [&](const std::string& text) {
    TANDEM_CHECK(tok != nullptr, "text prompts need a tokenizer");
    return tok->encode(text);
  };
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    TANDEM_CHECK(in.good(), "--prompts: cannot read {}", o.prompts_file);
    std::string line;
    for (int lineno = 1; std::getline(in, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        TANDEM_FAIL("{}:{}: not JSON: {}", o.prompts_file, lineno, e.what());
      }
      TANDEM_CHECK(j.is_object() && (j.contains("prompt") || j.contains("prompt_ids")),
                   "{}:{}: expected an object with \"prompt\" or \"prompt_ids\"", o.prompts_file,
                   lineno);
      Job job;
      job.request.params = base;
      if (j.contains("prompt_ids")) {
        job.request.prompt_ids = j["prompt_ids"].get<std::vector<int32_t>>();
      } else {
        job.request.prompt_ids = encode(j["prompt"].get<std::string>());
      }
      j.erase("prompt");
      j.erase("prompt_ids");
      job.status = SamplingParams::from_json(j, job.request.params);
      jobs.push_back(std::move(job));
    }
    return jobs;
  }
  Job job;
  job.request.params = base;
  job.request.prompt_ids = o.prompt.empty() ? parse_ids(o.prompt_ids) : encode(o.prompt);
  jobs.push_back(std::move(job));
  return jobs;
}

int run_generate(GenerateOptions o) {
  SamplingParams params = o.sampling;
  if (o.seed >= 0) params.seed = uint64_t(o.seed);
  if (o.logprobs >= 0) {
    params.logprobs = true;
    params.top_logprobs = o.logprobs;
  }
  const bool need_tokenizer = !o.prompt.empty() || !params.stop.empty();
  std::unique_ptr<tokenizer::Tokenizer> tok = load_tokenizer(o, need_tokenizer);
  if (!o.prompts_file.empty() && !tok) {
    // Lines with text prompts need a tokenizer; say so up front rather than per line.
    std::ifstream in(o.prompts_file);
    std::string all((std::istreambuf_iterator<char>(in)), {});
    if (all.find("\"prompt\"") != std::string::npos) load_tokenizer(o, true);
  }
  std::vector<Job> jobs = read_jobs(o, params, tok.get());

  const Device device = parse_device(o.device);
  LoadFormat format = LoadFormat::kAuto;
  TANDEM_CHECK(load_format_from_name(o.load_format, &format),
               "--load-format: expected auto or dummy, got '{}'", o.load_format);
  LoadedModel m = load_model(o.model_path, device, format);

  EngineConfig config;
  config.scheduler.page_size = o.page_size;
  config.scheduler.max_running_requests = o.max_running_requests;
  config.scheduler.max_batch_tokens = o.max_batch_tokens;
  config.scheduler.enable_prefix_cache = !o.no_prefix_cache;
  config.kv_dtype = o.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;
  int64_t total = o.max_total_tokens;
  if (total == 0) {  // room for every prompt and its completions at once
    for (const Job& j : jobs) {
      total += (int64_t(j.request.prompt_ids.size()) + j.request.params.max_tokens) * j.request.params.n;
    }
    total = std::min<int64_t>(total, int64_t(1) << 20);
    total = (total + o.page_size - 1) / o.page_size * o.page_size;  // whole pages
  }
  config.scheduler.max_total_tokens = total;
  if (Status s = config.validate(); !s.ok()) TANDEM_FAIL("{}", s.message());

  TANDEM_CHECK(o.cuda_graph_max_bs >= 0 && o.cuda_graph_max_bs <= 4096,
               "--cuda-graph-max-bs: expected 0..4096, got {}", o.cuda_graph_max_bs);
  auto runner = std::make_unique<DeepseekRunner>(
      *m.model, config.scheduler.num_pages(), o.page_size, config.kv_dtype, device,
      std::min<int32_t>(o.cuda_graph_max_bs, o.max_running_requests));
  Engine engine(m.config, std::move(runner), tok.get(), config);
  engine.start();
  for (Job& j : jobs) {
    if (j.status.ok()) j.status = engine.submit(j.request, &j.stream);
  }
  int exit_code = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& j = jobs[i];
    json line;
    if (!j.status.ok()) {
      TANDEM_CHECK(!o.prompts_file.empty(), "{}", j.status.message());
      line = {{"error", j.status.message()}};
      exit_code = 1;
    } else {
      line = collect(j, tok != nullptr);
      if (line.contains("error")) exit_code = 1;
    }
    if (!o.prompts_file.empty()) line["index"] = i;
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  engine.stop();
  const EngineStats st = engine.stats();
  TANDEM_LOG_INFO("{} prompts: {} tokens in, {} out in {} steps; {} preemptions; {} prefix-cache "
                  "hit tokens", jobs.size(), st.prompt_tokens, st.generated_tokens, st.steps,
                  st.preemptions, st.prefix_hit_tokens);
  return exit_code;
}

}  // namespace

void add_generate_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<GenerateOptions>();
  o->sampling.temperature = 0.0f;  // greedy unless asked: reproducible command-line runs
  SamplingParams& p = o->sampling;
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate from a prompt (or a JSON-lines file of prompts); prints JSON lines");
  cmd->add_option("--model-path", o->model_path,
                  "Model directory (config.json + safetensors), e.g. from `tandem make-model`")
      ->required()
      ->check(CLI::ExistingDirectory);
  auto* prompt = cmd->add_option("--prompt", o->prompt, "Prompt text (needs a tokenizer)");
  auto* ids = cmd->add_option("--prompt-ids", o->prompt_ids, "Prompt token ids, comma-separated: 1,2,3");
  auto* file = cmd->add_option("--prompts", o->prompts_file,
                               "JSON lines: {\"prompt\": ...} or {\"prompt_ids\": [...]}, plus "
                               "optional sampling parameters per line")
                   ->check(CLI::ExistingFile);
  prompt->excludes(ids)->excludes(file);
  ids->excludes(file);
  cmd->add_option("--tokenizer", o->tokenizer_dir,
                  "Directory with tokenizer.json (default: the model directory)");
  cmd->add_option("--device", o->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--cuda-graph-max-bs", o->cuda_graph_max_bs,
                  "CUDA: decode batches up to this size replay CUDA graphs (0: off)")
      ->capture_default_str();
  cmd->add_option("--load-format", o->load_format,
                  "auto: the safetensors checkpoint; dummy: random weights from config.json alone")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "dummy"}));
  // Sampling (runtime/sampling_params.h).
  cmd->add_option("--max-tokens", p.max_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", p.temperature, "0 is greedy")->capture_default_str();
  cmd->add_option("--top-k", p.top_k, "Keep the k most likely tokens (-1: all)")->capture_default_str();
  cmd->add_option("--top-p", p.top_p, "Nucleus sampling mass, (0, 1]")->capture_default_str();
  cmd->add_option("--min-p", p.min_p, "Drop tokens below min-p times the top probability")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", p.repetition_penalty, "> 1 discourages repeats")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", p.frequency_penalty, "[-2, 2], per occurrence")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", p.presence_penalty, "[-2, 2], once per seen token")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Sampling seed (reproducible); default random");
  cmd->add_option("--stop", p.stop, "Stop string (repeatable; needs a tokenizer)");
  cmd->add_option("--stop-token-ids", p.stop_token_ids, "Stop token ids, comma-separated")
      ->delimiter(',');
  cmd->add_flag("--ignore-eos", p.ignore_eos, "Keep generating after an end-of-sequence token");
  cmd->add_option("--n", p.n, "Completions per prompt")->capture_default_str();
  cmd->add_option("--logprobs", o->logprobs,
                  "Report each token's logprob and this many top alternatives (0-20)");
  // Engine (runtime/scheduler.h).
  cmd->add_option("--page-size", o->page_size, "KV cache page size in tokens (1-64)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--max-total-tokens", o->max_total_tokens,
                  "KV pool size in tokens (default: enough for every prompt at once)");
  cmd->add_option("--max-running-requests", o->max_running_requests, "Requests decoding at once")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", o->max_batch_tokens,
                  "Tokens per step; longer prompts are prefilled in chunks")
      ->capture_default_str();
  cmd->add_option("--kv-dtype", o->kv_dtype, "KV cache dtype: bf16 or f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "f32"}));
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache, "Disable the radix prefix cache");
  cmd->callback([o, cmd, &exit_code] {
    if (cmd->count("--prompt") + cmd->count("--prompt-ids") + cmd->count("--prompts") == 0) {
      throw CLI::RequiredError("--prompt, --prompt-ids or --prompts");
    }
    exit_code = run_generate(*o);
  });
}

}  // namespace tandem::app
