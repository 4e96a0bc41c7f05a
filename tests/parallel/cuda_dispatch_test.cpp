// Expert parallelism on 2 GPUs (label cuda; skips with fewer than 2): the NCCL group's
// collectives, and GPU normal and low_latency dispatch+combine against the CPU in-process
// dispatchers on the same inputs, several steps in a row (low_latency's sequence numbers),
// with skewed expert loads and a rank without tokens. Normal: the grouped layout (counts,
// offsets, rows) bitwise, the combined output within 1e-5 (the GPU's scatter-add uses atomics,
// so its partial sums are added in another order). low_latency: the valid rows of the masked
// layout and the counts bitwise, the combined output bitwise (same ascending-expert order,
// unfused multiply-add). A low_latency step captured in a CUDA graph and replayed twice gives
// the eager result to the bit. More tokens than max_dispatch_tokens_per_rank is an error
// before any launch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device.h"
#include "ops/ops.h"
#include "parallel/dispatcher.h"
#include "parallel/in_process_group.h"
#include "parallel/nccl_group.h"

namespace tandem {
namespace {

constexpr int kRanks = 2;
constexpr int64_t kExperts = 16, kTopK = 4;

bool have_gpus() { return ops::cuda::available() && ops::cuda::device_count() >= kRanks; }

#define SKIP_WITHOUT_GPUS() \
  if (!have_gpus()) GTEST_SKIP() << "needs " << kRanks << " CUDA devices"

void expect_ok(const std::vector<Status>& status) {
  for (size_t r = 0; r < status.size(); ++r) {
    EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r].message();
  }
}

// One rank's inputs on the host: x (dtype), ids, weights, and `base` (what out holds before
// combine, e.g. the shared experts' output).
struct RankInput {
  Tensor x, ids, weights, base;
};

Tensor to_dtype(const Tensor& f32, DType dtype) {
  if (dtype == DType::kF32) return f32;
  Tensor out = Tensor::empty(f32.shape(), dtype);
  if (f32.numel() > 0) ops::convert(f32, out);
  return out;
}

Tensor as_f32(const Tensor& t) {
  if (t.dtype() == DType::kF32) return t;
  Tensor out = Tensor::empty(t.shape(), DType::kF32);
  if (t.numel() > 0) ops::convert(t, out);
  return out;
}

// Skewed routing: expert g drawn with weight 1 / (1 + g)^1.5 (rank 0's experts are hot).
std::vector<RankInput> make_inputs(const std::vector<int64_t>& tokens, int64_t hidden, DType dtype,
                                   uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  std::vector<double> popularity(kExperts);
  for (int64_t g = 0; g < kExperts; ++g) popularity[g] = 1.0 / std::pow(1.0 + double(g), 1.5);
  std::vector<RankInput> inputs;
  for (int64_t n : tokens) {
    Tensor x = Tensor::empty({n, hidden}, DType::kF32);
    RankInput in{Tensor(), Tensor::empty({n, kTopK}, DType::kI32),
                 Tensor::empty({n, kTopK}, DType::kF32), Tensor::empty({n, hidden}, DType::kF32)};
    for (int64_t i = 0; i < n * hidden; ++i) x.data<float>()[i] = normal(rng);
    for (int64_t i = 0; i < n * hidden; ++i) in.base.data<float>()[i] = normal(rng);
    in.x = to_dtype(x, dtype);
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> p = popularity;
      for (int64_t j = 0; j < kTopK; ++j) {
        std::discrete_distribution<int> pick(p.begin(), p.end());
        const int g = pick(rng);
        p[g] = 0.0;
        in.ids.data<int32_t>()[t * kTopK + j] = g;
        in.weights.data<float>()[t * kTopK + j] = uniform(rng);
      }
    }
    inputs.push_back(std::move(in));
  }
  return inputs;
}

// The test's expert g: y = x * (0.5 + 0.1 g) + 0.01 g in f32, on the valid rows of the layout.
Tensor fake_experts(const ExpertInput& in, const Tensor& x_host, const std::vector<int64_t>& counts,
                    const ExpertPlacement& placement, int rank) {
  const int64_t hidden = x_host.size(-1);
  const Tensor xf = as_f32(x_host.view({-1, hidden}));
  Tensor y = Tensor::zeros(x_host.shape(), DType::kF32);
  float* out = y.data<float>();
  for (int64_t e = 0; e < int64_t(counts.size()); ++e) {
    const int64_t g = placement.global_expert(rank, e);
    const int64_t first = in.mode == DispatchMode::kNormal ? in.offsets[e] : e * x_host.size(1);
    for (int64_t r = first; r < first + counts[e]; ++r) {
      for (int64_t d = 0; d < hidden; ++d) {
        out[r * hidden + d] = xf.data<float>()[r * hidden + d] * (0.5f + 0.1f * float(g)) + 0.01f * float(g);
      }
    }
  }
  return y;
}

// What one rank saw in one step, on the host.
struct StepResult {
  std::vector<int64_t> counts, offsets;
  Tensor x;    // the expert input layout
  Tensor out;  // f32 [T, H] after combine
};

// Copies, also where the tensor is already there (Tensor::to shares the buffer then): the CPU
// dispatchers reuse their buffers and combine adds into `out`, and the inputs serve both runs.
Tensor copy_to(const Tensor& t, Device dev) { return t.device() == dev ? t.clone() : t.to(dev); }

StepResult run_step(Dispatcher& d, ProcessGroup& group, const ExpertPlacement& placement,
                    const RankInput& in) {
  const Device dev = group.device();
  const Tensor x = copy_to(in.x, dev), ids = copy_to(in.ids, dev), weights = copy_to(in.weights, dev);
  const ExpertInput& ei = d.dispatch(x, ids, weights);
  StepResult r;
  r.counts = ei.counts;
  r.offsets = ei.offsets;
  if (ei.counts_device.defined()) {
    const Tensor c = ei.counts_device.to(Device::cpu());
    for (size_t e = 0; e < r.counts.size(); ++e) r.counts[e] = c.data<int32_t>()[e];
  }
  r.x = copy_to(ei.x, Device::cpu());
  const Tensor y = fake_experts(ei, r.x, r.counts, placement, group.rank()).to(dev);
  Tensor out = copy_to(in.base, dev);
  d.combine(y, out);
  r.out = copy_to(out, Device::cpu());
  return r;
}

DispatchOptions options_for(int64_t hidden, DType dtype, int64_t max_tokens) {
  DispatchOptions o;
  o.hidden = hidden;
  o.top_k = kTopK;
  o.max_dispatch_tokens_per_rank = max_tokens;
  o.dtype = dtype;
  return o;
}

// results[rank][step] of `steps` (inputs[step][rank]) through `mode`, on the CPU world or GPUs.
using Results = std::vector<std::vector<StepResult>>;
Results run_steps(bool gpu, DispatchMode mode, const std::vector<std::vector<RankInput>>& steps,
                  const DispatchOptions& options) {
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  Results results(kRanks);
  auto body = [&](ProcessGroup& group) {
    auto d = make_dispatcher(mode, group, placement, options);
    for (const auto& inputs : steps) {
      results[group.rank()].push_back(run_step(*d, group, placement, inputs[group.rank()]));
    }
  };
  if (gpu) {
    expect_ok(run_nccl_ranks(kRanks, body));
  } else {
    InProcessWorld world(kRanks);
    expect_ok(world.run(body));
  }
  return results;
}

size_t row_bytes(const Tensor& t) { return size_t(t.size(-1)) * dtype_size_bytes(t.dtype()); }

void expect_same_steps(DispatchMode mode, const Results& cpu, const Results& gpu, double out_tol) {
  ASSERT_EQ(cpu.size(), gpu.size());
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(cpu[r].size(), gpu[r].size()) << "rank " << r;
    for (size_t s = 0; s < cpu[r].size(); ++s) {
      const StepResult& a = cpu[r][s];
      const StepResult& b = gpu[r][s];
      SCOPED_TRACE("rank " + std::to_string(r) + " step " + std::to_string(s));
      ASSERT_EQ(a.counts, b.counts);
      EXPECT_EQ(a.offsets, b.offsets);
      ASSERT_EQ(a.x.shape(), b.x.shape());
      const size_t rb = row_bytes(a.x);
      for (size_t e = 0; e < a.counts.size(); ++e) {
        const int64_t first = mode == DispatchMode::kNormal ? a.offsets[e] : int64_t(e) * a.x.size(1);
        const char* pa = static_cast<const char*>(a.x.raw_data()) + first * rb;
        const char* pb = static_cast<const char*>(b.x.raw_data()) + first * rb;
        EXPECT_EQ(std::memcmp(pa, pb, size_t(a.counts[e]) * rb), 0) << "expert rows of local " << e;
      }
      ASSERT_EQ(a.out.shape(), b.out.shape());
      double max_diff = 0.0;
      for (int64_t i = 0; i < a.out.numel(); ++i) {
        const float u = a.out.data<float>()[i], v = b.out.data<float>()[i];
        ASSERT_TRUE(std::isfinite(v)) << "out[" << i << "] = " << v;
        max_diff = std::max(max_diff, double(std::fabs(u - v)));
      }
      if (out_tol == 0.0) {
        EXPECT_EQ(std::memcmp(a.out.raw_data(), b.out.raw_data(), a.out.nbytes()), 0)
            << "combined output not bitwise equal (max |diff| " << max_diff << ")";
      } else {
        EXPECT_LE(max_diff, out_tol);
      }
    }
  }
}

TEST(NcclGroup, Collectives) {
  SKIP_WITHOUT_GPUS();
  std::vector<std::vector<int32_t>> received(kRanks);
  std::vector<std::vector<int64_t>> gathered(kRanks);
  expect_ok(run_nccl_ranks(kRanks, [&](ProcessGroup& g) {
    const int me = g.rank();
    EXPECT_EQ(g.device(), Device::cuda(me));
    gathered[me] = g.all_gather({int64_t(10 * me + 1), int64_t(-me)});
    g.barrier();
    // Rank s sends s * 3 + d values to rank d (rank 0 sends none to itself), value 1000 s + i.
    std::vector<int32_t> send;
    std::vector<int64_t> send_rows, recv_rows;
    for (int d = 0; d < kRanks; ++d) {
      send_rows.push_back(me * 3 + d);
      for (int i = 0; i < me * 3 + d; ++i) send.push_back(1000 * me + i);
      recv_rows.push_back(d * 3 + me);
    }
    int64_t total = 0;
    for (int64_t n : recv_rows) total += n;
    const Tensor s = Tensor::from_vector(send, {int64_t(send.size())}).to(g.device());
    Tensor r = Tensor::empty({total}, DType::kI32, g.device());
    all_to_all_rows(g, s, send_rows, r, recv_rows);
    const Tensor h = r.to(Device::cpu());
    received[me].assign(h.data<int32_t>(), h.data<int32_t>() + total);
  }));
  for (int me = 0; me < kRanks; ++me) {
    EXPECT_EQ(gathered[me], (std::vector<int64_t>{1, 0, 11, -1}));
    std::vector<int32_t> want;
    for (int s = 0; s < kRanks; ++s) {
      for (int i = 0; i < s * 3 + me; ++i) want.push_back(1000 * s + i);
    }
    EXPECT_EQ(received[me], want) << "rank " << me;
  }
}

struct DispatchCase {
  DType dtype;
  int64_t hidden;
};

class CudaDispatch : public ::testing::TestWithParam<DispatchCase> {};

// Three steps; rank 1 has no tokens in the second.
std::vector<std::vector<RankInput>> three_steps(int64_t hidden, DType dtype) {
  return {make_inputs({37, 11}, hidden, dtype, 1), make_inputs({23, 0}, hidden, dtype, 2),
          make_inputs({48, 48}, hidden, dtype, 3)};
}

TEST_P(CudaDispatch, NormalEqualsCpu) {
  SKIP_WITHOUT_GPUS();
  const DispatchCase c = GetParam();
  const auto steps = three_steps(c.hidden, c.dtype);
  const DispatchOptions o = options_for(c.hidden, c.dtype, 48);
  const Results cpu = run_steps(false, DispatchMode::kNormal, steps, o);
  const Results gpu = run_steps(true, DispatchMode::kNormal, steps, o);
  expect_same_steps(DispatchMode::kNormal, cpu, gpu, 1e-5);
}

TEST_P(CudaDispatch, LowLatencyEqualsCpuBitwise) {
  SKIP_WITHOUT_GPUS();
  const DispatchCase c = GetParam();
  const auto steps = three_steps(c.hidden, c.dtype);
  const DispatchOptions o = options_for(c.hidden, c.dtype, 48);  // step 3: M tokens on each rank
  const Results cpu = run_steps(false, DispatchMode::kLowLatency, steps, o);
  const Results gpu = run_steps(true, DispatchMode::kLowLatency, steps, o);
  expect_same_steps(DispatchMode::kLowLatency, cpu, gpu, 0.0);
}

// bf16 with 16-byte rows (vector copies), f32 with a width that is not (4-byte copies).
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaDispatch,
                         ::testing::Values(DispatchCase{DType::kBF16, 256},
                                           DispatchCase{DType::kF32, 42}),
                         [](const auto& info) {
                           return std::string(dtype_name(info.param.dtype)) + "_h" +
                                  std::to_string(info.param.hidden);
                         });

TEST(CudaLowLatency, OverCapacityIsAnErrorBeforeAnyLaunch) {
  SKIP_WITHOUT_GPUS();
  const auto inputs = make_inputs({9, 9}, 64, DType::kBF16, 4);
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  const auto status = run_nccl_ranks(kRanks, [&](ProcessGroup& g) {
    auto d = make_dispatcher(DispatchMode::kLowLatency, g, placement, options_for(64, DType::kBF16, 8));
    const RankInput& in = inputs[g.rank()];
    d->dispatch(in.x.to(g.device()), in.ids.to(g.device()), in.weights.to(g.device()));
  });
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_FALSE(status[r].ok()) << "rank " << r;
    EXPECT_NE(status[r].message().find("max_dispatch_tokens_per_rank = 8"), std::string::npos)
        << status[r].message();
  }
}

// dispatch -> identity experts (convert) -> combine, captured once, replayed twice: each replay
// gives the eager step's output bitwise, and that equals the CPU's sum.
TEST(CudaLowLatency, GraphCaptureReplaysBitwise) {
  SKIP_WITHOUT_GPUS();
  constexpr int64_t kHidden = 128, kMax = 16;
  const auto inputs = make_inputs({13, 5}, kHidden, DType::kBF16, 5);
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  std::vector<Tensor> eager(kRanks), replay1(kRanks), replay2(kRanks);
  expect_ok(run_nccl_ranks(kRanks, [&](ProcessGroup& g) {
    const int me = g.rank();
    const Device dev = g.device();
    const RankInput& in = inputs[me];
    auto d = make_dispatcher(DispatchMode::kLowLatency, g, placement,
                             options_for(kHidden, DType::kBF16, kMax));
    const Tensor x = in.x.to(dev), ids = in.ids.to(dev), weights = in.weights.to(dev);
    const Tensor base = in.base.to(dev);
    Tensor out = Tensor::empty(base.shape(), DType::kF32, dev);
    const int64_t locals = placement.num_local_experts(me);
    Tensor y = Tensor::zeros({locals, kRanks * kMax, kHidden}, DType::kF32, dev);
    auto step = [&] {
      out.copy_from(base);
      const ExpertInput& ei = d->dispatch(x, ids, weights);
      Tensor flat_y = y.view({-1, kHidden});
      ops::convert(ei.x.view({-1, kHidden}), flat_y);
      d->combine(y, out);
    };
    step();
    eager[me] = out.to(Device::cpu());
    ops::cuda::GraphPool pool(dev.index);
    ops::cuda::CudaGraph graph;
    {
      ops::cuda::ScopedGraphPool scoped(pool);
      graph.begin_capture(dev.index);
      step();
      graph.end_capture();
    }
    graph.replay();
    replay1[me] = out.to(Device::cpu());
    graph.replay();
    replay2[me] = out.to(Device::cpu());
  }));
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(eager[r].defined() && replay2[r].defined()) << "rank " << r;
    EXPECT_EQ(std::memcmp(eager[r].raw_data(), replay1[r].raw_data(), eager[r].nbytes()), 0);
    EXPECT_EQ(std::memcmp(eager[r].raw_data(), replay2[r].raw_data(), eager[r].nbytes()), 0);
    // The identity experts' sum on the host: base + sum_j w_j * x, ascending expert order.
    const RankInput& in = inputs[r];
    const Tensor xf = as_f32(in.x);
    double max_diff = 0.0;
    for (int64_t t = 0; t < in.x.size(0); ++t) {
      std::vector<std::pair<int32_t, float>> picks;
      for (int64_t j = 0; j < kTopK; ++j) {
        picks.push_back({in.ids.data<int32_t>()[t * kTopK + j], in.weights.data<float>()[t * kTopK + j]});
      }
      std::sort(picks.begin(), picks.end());
      for (int64_t h = 0; h < kHidden; ++h) {
        float acc = in.base.data<float>()[t * kHidden + h];
        for (const auto& [g, w] : picks) acc += w * xf.data<float>()[t * kHidden + h];
        max_diff = std::max(max_diff, double(std::fabs(acc - eager[r].data<float>()[t * kHidden + h])));
      }
    }
    EXPECT_LE(max_diff, 1e-5) << "rank " << r;
  }
}

}  // namespace
}  // namespace tandem
