// CUDA graph decode (runtime/cuda_graph_runner.h) against eager decode on the GPU, on a small
// random model: logits of every batch size of the ladder (padded rows included) within bf16
// tolerance of the eager step of the same sequences, and an engine serving through the graphs
// to completion. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/loader.h"
#include "model/presets.h"
#include "ops/cuda/cuda_ops.h"
#include "runtime/cuda_graph_runner.h"
#include "runtime/engine.h"

namespace tandem::runtime {
namespace {

const Device kGpu = Device::cuda(0);

LoadedModel& mini_model() {
  static LoadedModel m = [] {
    const ModelConfig cfg = ModelConfig::from_json_string(preset_config_json("mini").dump(), "mini");
    return load_random_model(cfg, 7, kGpu);
  }();
  return m;
}

class CudaGraphs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
};

// Relative L2 distance of two logit matrices and how many rows disagree on the argmax where
// the reference's top-2 margin is clear.
void compare(const Tensor& got_t, const Tensor& ref_t, const std::string& label) {
  const Tensor got = got_t.to(Device::cpu()), ref = ref_t.to(Device::cpu());
  ASSERT_EQ(got.shape(), ref.shape()) << label;
  const int64_t rows = ref.size(0), vocab = ref.size(1);
  double num = 0, den = 0;
  int64_t flips = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = got.data<float>() + r * vocab;
    const float* f = ref.data<float>() + r * vocab;
    int64_t ga = 0, fa = 0, f2 = -1;
    for (int64_t v = 0; v < vocab; ++v) {
      ASSERT_TRUE(std::isfinite(g[v])) << label << " row " << r;
      num += double(g[v] - f[v]) * double(g[v] - f[v]);
      den += double(f[v]) * double(f[v]);
      if (g[v] > g[ga]) ga = v;
      if (f[v] > f[fa]) { f2 = fa; fa = v; } else if (f2 < 0 || f[v] > f[f2]) { f2 = v; }
    }
    if (ga != fa && f[fa] - f[f2] > 0.05f) ++flips;
  }
  const double rel = std::sqrt(num / den);
  std::printf("GRAPH %s rel_l2=%.3e argmax flips=%lld\n", label.c_str(), rel, (long long)flips);
  EXPECT_LE(rel, 2e-2) << label;
  EXPECT_EQ(flips, 0) << label;
}

TEST_F(CudaGraphs, DecodeMatchesEagerForEveryBatchSize) {
  LoadedModel& m = mini_model();
  const int64_t ps = 16, pages = 400;
  KvCache cache = KvCache::create(m.config, pages + 1, ps, DType::kBF16, kGpu);
  DecodeGraphOptions o;
  o.max_batch = 24;
  o.max_pages = 16;
  o.scratch_page = int32_t(pages);
  DecodeGraphs graphs(*m.model, cache, kGpu, o);
  ASSERT_EQ(graphs.batch_sizes(), (std::vector<int32_t>{1, 2, 4, 8, 16, 24}));

  // 24 sequences of random lengths, prefilled eagerly, on distinct pages.
  std::mt19937 rng(3);
  const uint32_t vocab = uint32_t(m.config.vocab_size);
  std::vector<SequenceStep> seqs(24);
  int32_t next_page = 0;
  for (SequenceStep& s : seqs) {
    const int64_t len = 3 + int64_t(rng() % 150);
    for (int64_t i = 0; i < len; ++i) s.new_tokens.push_back(int32_t(1 + rng() % (vocab - 1)));
    for (int64_t p = 0; p * ps < len + 40; ++p) s.pages.push_back(next_page++);
  }
  ASSERT_LE(next_page, pages);
  m.model->forward(ForwardBatch::build(ForwardMode::kExtend, seqs, ps, kGpu), cache);
  for (SequenceStep& s : seqs) {
    s.cached_len = int64_t(s.new_tokens.size());
    s.new_tokens = {int32_t(1 + rng() % (vocab - 1))};
  }
  // Every size, and sizes between the ladder's (padded): the graph's step, then the eager
  // step of the same sequences (both write the new token's KV into the same slot first).
  for (int64_t b : {1, 2, 3, 4, 7, 8, 13, 16, 17, 24}) {
    std::vector<SequenceStep> step(seqs.begin(), seqs.begin() + b);
    const Tensor g = graphs.run(step).clone();
    const Tensor e = m.model->forward(ForwardBatch::build(ForwardMode::kDecode, step, ps, kGpu), cache);
    compare(g, e, "batch " + std::to_string(b));
  }
  EXPECT_EQ(graphs.replays(), 10);
  EXPECT_FALSE(graphs.fits(25, 1));
  EXPECT_FALSE(graphs.fits(1, 17));
}

TEST_F(CudaGraphs, EngineServesThroughGraphs) {
  LoadedModel& m = mini_model();
  EngineConfig config;
  config.scheduler.page_size = 16;
  config.scheduler.max_total_tokens = 16 * 512;
  config.scheduler.max_running_requests = 64;
  auto runner = std::make_unique<DeepseekRunner>(*m.model, config.scheduler.num_pages(),
                                                 config.scheduler.page_size, DType::kBF16, kGpu,
                                                 /*cuda_graph_max_bs=*/32);
  const DeepseekRunner* r = runner.get();
  Engine engine(m.config, std::move(runner), nullptr, config);
  std::mt19937 rng(9);
  const uint32_t vocab = uint32_t(m.config.vocab_size);
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<int32_t> lengths;
  for (int i = 0; i < 40; ++i) {
    GenerateRequest req;
    for (int t = 0; t < 5 + int(rng() % 80); ++t) req.prompt_ids.push_back(int32_t(1 + rng() % (vocab - 1)));
    req.params.temperature = 0;
    req.params.max_tokens = 3 + int32_t(rng() % 20);
    req.params.ignore_eos = true;
    lengths.push_back(req.params.max_tokens);
    std::shared_ptr<RequestStream> s;
    ASSERT_TRUE(engine.submit(req, &s).ok());
    streams.push_back(s);
  }
  engine.run_until_idle();
  for (size_t i = 0; i < streams.size(); ++i) {
    StreamEvent ev;
    size_t n = 0;
    std::string error;
    while (streams[i]->next(ev)) {
      n += ev.token_ids.size();
      if (ev.finished) error = ev.error;
    }
    EXPECT_EQ(error, "");
    EXPECT_EQ(n, size_t(lengths[i])) << "request " << i;
  }
  ASSERT_NE(r->graphs(), nullptr);
  EXPECT_GT(r->graphs()->replays(), 0);
}

}  // namespace
}  // namespace tandem::runtime
