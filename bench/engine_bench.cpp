// Host work of one engine decode step, the part of a GPU decode step spent outside the
// kernels: scheduling, the per-row sampling parameters (RowSampling, with penalty entries for
// penalized requests), and processing the step's tokens (Sampler::accept, detokenization with
// DeepSeek-V3's tokenizer, stop checks, stream events), with a runner that "samples on the
// device" instantly. B requests decode together; every step each emits one token, which a
// reader takes off its stream (as the HTTP side would). Prints microseconds per step and per
// sequence; there is no in-process peer (the reference servers are Python), so the ratio
// printed is to a 1 ms budget, about 8% of a batch-64 V3-width step on an H100.
#include <benchmark/benchmark.h>

#include <memory>
#include <optional>

#include "runtime/engine.h"
#include "tests/common/tokenizer_dir.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace tandem;
using namespace tandem::runtime;

// Every sampled row is "sampled on the device": the next token cycles through ordinary text
// ids, so the detokenizer and the stop checker do their usual work.
class DeviceTokensRunner : public ModelRunner {
 public:
  Tensor run(const Decision& d, const Scheduler&) override {
    return Tensor::zeros({int64_t(d.seqs.size()), 8}, DType::kF32);
  }
  StepOutput step(const Decision& d, const Scheduler&, std::span<const RowSampling> sampling) override {
    const size_t n = d.seqs.size();
    StepOutput out = StepOutput::unfilled(n);
    for (size_t i = 0; i < n; ++i) {
      if (!d.seqs[i].sample) continue;
      if (!sampling[i].device) throw std::runtime_error("engine_bench: a row needs host sampling");
      out.token[i] = int32_t(1000 + (counter_++ * 7919) % 30000);
    }
    return out;
  }

 private:
  int64_t counter_ = 0;
};

const tokenizer::Tokenizer* shared_tokenizer() {
  static const std::optional<tokenizer::Tokenizer> tok = []() -> std::optional<tokenizer::Tokenizer> {
    const auto dir = test::deepseek_v3_tokenizer_dir();
    if (!dir) return std::nullopt;
    return tokenizer::Tokenizer::load(*dir);
  }();
  return tok ? &*tok : nullptr;
}

// Args: batch, penalties (0/1: every request has repetition, frequency and presence penalties).
void BM_EngineDecodeStep(benchmark::State& state) {
  const int32_t batch = int32_t(state.range(0));
  const bool penalties = state.range(1) != 0;
  const tokenizer::Tokenizer* tok = shared_tokenizer();
  if (tok == nullptr) {
    state.SkipWithError("DeepSeek-V3 tokenizer files not found (set TANDEM_TOKENIZER_DIR)");
    return;
  }
  ModelConfig mc;
  mc.vocab_size = 129280;
  mc.max_position_embeddings = 1 << 20;
  mc.eos_token_ids = {1};
  EngineConfig ec;
  ec.scheduler.page_size = 16;
  ec.scheduler.max_total_tokens = int64_t(batch) * 70000;
  ec.scheduler.max_batch_tokens = 8192;
  ec.scheduler.max_running_requests = batch;
  ec.kv_dtype = DType::kF32;
  Engine engine(mc, std::make_unique<DeviceTokensRunner>(), tok, ec);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int32_t i = 0; i < batch; ++i) {
    GenerateRequest r;
    for (int j = 0; j < 512; ++j) r.prompt_ids.push_back(1000 + (i * 131 + j * 17) % 30000);
    r.params.max_tokens = 60000;
    r.params.ignore_eos = true;
    r.params.stop = {"\n\n\n\n"};  // a stop string the checker has to watch for
    if (penalties) {
      r.params.repetition_penalty = 1.1f;
      r.params.frequency_penalty = 0.2f;
      r.params.presence_penalty = 0.1f;
    }
    std::shared_ptr<RequestStream> s;
    if (!engine.submit(r, &s).ok()) {
      state.SkipWithError("submit failed");
      return;
    }
    streams.push_back(s);
  }
  StreamEvent ev;
  auto drain = [&] {
    for (auto& s : streams)
      while (s->try_next(ev)) {}
  };
  for (int i = 0; i < 100; ++i) {  // prefills, then into steady decoding
    engine.step();
    drain();
  }
  for (auto _ : state) {
    engine.step();
    drain();
  }
  using benchmark::Counter;
  state.counters["us_per_seq"] =
      Counter(double(state.iterations()) * batch, Counter::kIsRate | Counter::kInvert);
  state.counters["x_under_1ms"] = Counter(1e-3 * double(state.iterations()), Counter::kIsRate);
}

BENCHMARK(BM_EngineDecodeStep)
    ->Args({64, 0})
    ->Args({256, 0})
    ->Args({256, 1})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
