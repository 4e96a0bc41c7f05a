// Encode throughput of tandem's tokenizer on DeepSeek-V3's tokenizer.json, in MB/s of UTF-8
// input. The peer (Hugging Face `tokenizers` on the same text, same machine) is measured by
// bench/tokenizer_peer.py, which also runs this binary and prints the ratio:
//   python3 bench/tokenizer_peer.py --cpp-bench build/bench/bench/tokenizer_bench
// The text: the golden strings of tests/data/tokenizer/encode_cases.jsonl (English, Chinese,
// code, numbers, emoji, mixed scripts, whitespace), joined by "\n" into documents of >= 16 KiB,
// built identically by the peer script.
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "tokenizer/tokenizer.h"

namespace {

using tandem::tokenizer::EncodeOptions;
using tandem::tokenizer::Tokenizer;

constexpr size_t kDocBytes = 16384;

std::filesystem::path tokenizer_dir() {
  if (const char* env = std::getenv("TANDEM_TOKENIZER_DIR"); env && *env) return env;
  return std::filesystem::path(TANDEM_SOURCE_DIR) / ".." / "shared" / "data" / "deepseek-v3";
}

const std::vector<std::string>& documents() {
  static const std::vector<std::string> docs = [] {
    const std::set<std::string> categories = {"english", "chinese", "code", "numbers",
                                              "emoji", "mixed", "whitespace"};
    std::ifstream in(std::filesystem::path(TANDEM_SOURCE_DIR) / "tests/data/tokenizer/encode_cases.jsonl");
    std::vector<std::string> result;
    std::string doc, line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("t") || !categories.count(j["c"].get<std::string>())) continue;
      if (!doc.empty()) doc += '\n';
      doc += j["t"].get<std::string>();
      if (doc.size() >= kDocBytes) result.push_back(std::move(doc)), doc.clear();
    }
    if (!doc.empty()) result.push_back(std::move(doc));
    return result;
  }();
  return docs;
}

const Tokenizer& tokenizer() {
  static const Tokenizer tok = Tokenizer::load(tokenizer_dir());
  return tok;
}

int64_t total_bytes() {
  int64_t n = 0;
  for (const auto& d : documents()) n += static_cast<int64_t>(d.size());
  return n;
}

// One pass over all documents per iteration. With ->Threads(k), every thread does a full pass,
// so the aggregate rate is k passes' bytes over the wall time.
void BM_Encode(benchmark::State& state) {
  const Tokenizer& tok = tokenizer();
  const auto& docs = documents();
  EncodeOptions options;
  options.add_special_tokens = false;
  std::vector<int32_t> ids;
  int64_t tokens = 0;
  for (auto _ : state) {
    for (const auto& d : docs) {
      ids.clear();
      tok.encode_into(d, options, ids);
      tokens += static_cast<int64_t>(ids.size());
    }
  }
  state.SetBytesProcessed(state.iterations() * total_bytes());
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsRate);
  state.counters["MB_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * total_bytes()) / 1e6, benchmark::Counter::kIsRate);
}

void BM_Decode(benchmark::State& state) {
  const Tokenizer& tok = tokenizer();
  std::vector<std::vector<int32_t>> encoded;
  for (const auto& d : documents()) encoded.push_back(tok.encode(d, {.add_special_tokens = false}));
  for (auto _ : state) {
    for (const auto& ids : encoded) benchmark::DoNotOptimize(tok.decode(ids));
  }
  state.SetBytesProcessed(state.iterations() * total_bytes());
}

}  // namespace

BENCHMARK(BM_Encode)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_Encode)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0)
    ->Threads(static_cast<int>(std::max(2u, std::thread::hardware_concurrency())));
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);

BENCHMARK_MAIN();
