// CUDA graph decode (runtime/cuda_graph_runner.h) against eager decode on the GPU, on a small
// random model: logits of every batch size of the ladder (padded rows included) within bf16
// tolerance of the eager step of the same sequences, an engine serving through the graphs
// to completion, and an engine sampling on the GPU (ops::sample_tokens after the replay) giving
// the tokens of one that copies every row to the host Sampler. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

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

// The runner behind the engine's step() with every row sent to the host Sampler (the path
// before GPU sampling): ModelRunner's default step() over run().
class HostSamplingRunner : public ModelRunner {
 public:
  explicit HostSamplingRunner(std::unique_ptr<DeepseekRunner> inner) : inner_(std::move(inner)) {}
  Tensor run(const Decision& d, const Scheduler& s) override { return inner_->run(d, s); }

 private:
  std::unique_ptr<DeepseekRunner> inner_;
};

// Same requests through two engines: greedy ones and seeded sampled ones (top-k, top-p, min-p)
// give the same tokens whether the GPU or the host samples them.
TEST_F(CudaGraphs, DeviceSamplingGivesTheHostSamplersTokens) {
  LoadedModel& m = mini_model();
  EngineConfig config;
  config.scheduler.page_size = 16;
  config.scheduler.max_total_tokens = 16 * 512;
  config.scheduler.max_running_requests = 64;
  auto make_runner = [&] {
    return std::make_unique<DeepseekRunner>(*m.model, config.scheduler.num_pages(),
                                            config.scheduler.page_size, DType::kBF16, kGpu,
                                            /*cuda_graph_max_bs=*/32);
  };
  int64_t device_rows = -1;  // read while the engine (and the runner) still live
  auto serve = [&](std::unique_ptr<ModelRunner> runner, const DeepseekRunner* probe) {
    Engine engine(m.config, std::move(runner), nullptr, config);
    std::mt19937 rng(17);
    const uint32_t vocab = uint32_t(m.config.vocab_size);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (int i = 0; i < 24; ++i) {
      GenerateRequest req;
      for (int t = 0; t < 5 + int(rng() % 60); ++t) req.prompt_ids.push_back(int32_t(1 + rng() % (vocab - 1)));
      req.params.max_tokens = 12;
      req.params.ignore_eos = true;
      req.params.logprobs = true;
      if (i % 2 == 0) {
        req.params.temperature = 0;
      } else {
        req.params.temperature = 0.9f;
        req.params.seed = 100 + uint64_t(i);
        if (i % 3 == 0) req.params.top_k = 20;
        if (i % 4 == 1) req.params.top_p = 0.8f;
        if (i % 5 == 2) req.params.min_p = 0.05f;
      }
      std::shared_ptr<RequestStream> s;
      EXPECT_TRUE(engine.submit(req, &s).ok());
      streams.push_back(s);
    }
    engine.run_until_idle();
    if (probe != nullptr) device_rows = probe->device_sampled_rows();
    std::vector<std::vector<int32_t>> out(streams.size());
    std::vector<std::vector<float>> lps(streams.size());
    for (size_t i = 0; i < streams.size(); ++i) {
      StreamEvent ev;
      while (streams[i]->next(ev)) {
        EXPECT_EQ(ev.error, "");
        out[i].insert(out[i].end(), ev.token_ids.begin(), ev.token_ids.end());
        for (const SampleResult& r : ev.logprobs) lps[i].push_back(r.logprob);
      }
    }
    return std::make_pair(out, lps);
  };
  auto device_runner = make_runner();
  const DeepseekRunner* dev = device_runner.get();
  const auto [dev_tokens, dev_lps] = serve(std::move(device_runner), dev);
  EXPECT_GT(device_rows, 0);
  const auto [host_tokens, host_lps] =
      serve(std::make_unique<HostSamplingRunner>(make_runner()), nullptr);
  ASSERT_EQ(dev_tokens.size(), host_tokens.size());
  int same = 0;
  for (size_t i = 0; i < dev_tokens.size(); ++i) {
    EXPECT_EQ(dev_tokens[i].size(), 12u) << "request " << i;
    same += dev_tokens[i] == host_tokens[i];
    if (i % 2 == 0) EXPECT_EQ(dev_tokens[i], host_tokens[i]) << "greedy request " << i;
    for (size_t t = 0; t < std::min(dev_lps[i].size(), host_lps[i].size()); ++t) {
      if (dev_tokens[i][t] != host_tokens[i][t]) break;
      EXPECT_NEAR(dev_lps[i][t], host_lps[i][t], 1e-3) << "request " << i << " token " << t;
    }
  }
  std::printf("GRAPH device vs host sampling: %d of %zu requests token for token\n", same,
              dev_tokens.size());
  // Sampled requests agree too, unless the two engines' logits differ in rounding (the MoE
  // sums with atomics) right where a draw falls: allow one.
  EXPECT_GE(same, int(dev_tokens.size()) - 1);
}

}  // namespace
}  // namespace tandem::runtime
