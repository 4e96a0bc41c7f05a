// EP dispatch/combine benchmark on 2 GPUs (not a ctest; tools/device/ep_cycle.sh runs it):
//  normal:      4096 tokens per rank, hidden 7168 bf16, top-8 of 256 experts, uniform routing;
//  low_latency: 128 tokens per rank, the same shape.
// Reports microseconds per dispatch and per combine (median of the iterations, the slower
// rank), the bytes that cross NVLink (rows whose destination is the other rank: bf16 rows
// out, f32 rows back), their rate in GB/s and its ratio to the cudaMemcpyPeerAsync GPU0->GPU1
// bandwidth measured in the same run. Table last.
//
// Usage: ep_bench [--iters N] [--normal-tokens T] [--ll-tokens T]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>

#include "ops/cuda/device.h"
#include "parallel/dispatcher.h"
#include "parallel/nccl_group.h"

namespace tandem {
namespace {

constexpr int kRanks = 2;
constexpr int64_t kHidden = 7168, kExperts = 256, kTopK = 8;

struct Options {
  int iters = 20;
  int64_t normal_tokens = 4096, ll_tokens = 128;
};

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// GB/s of cudaMemcpyPeerAsync from GPU `src` to GPU `dst`, 256 MiB copies; with `both`, the
// reverse copy runs at the same time on the other GPU's stream (per-direction rate).
double peer_copy_gbps(int src, int dst, bool both) {
  const size_t bytes = size_t(256) << 20;
  void *a = nullptr, *b = nullptr, *c = nullptr, *d = nullptr;
  cudaSetDevice(src);
  cuda_ok(cudaMalloc(&a, bytes), "cudaMalloc");
  cuda_ok(cudaMalloc(&d, bytes), "cudaMalloc");
  cudaStream_t s1, s2;
  cudaStreamCreate(&s1);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaSetDevice(dst);
  cuda_ok(cudaMalloc(&b, bytes), "cudaMalloc");
  cuda_ok(cudaMalloc(&c, bytes), "cudaMalloc");
  cudaStreamCreate(&s2);
  const int reps = 10;
  for (int warm = 0; warm < 2; ++warm) {
    cuda_ok(cudaMemcpyPeerAsync(b, dst, a, src, bytes, s1), "cudaMemcpyPeerAsync");
  }
  cudaStreamSynchronize(s1);
  cudaSetDevice(src);
  cudaEventRecord(e0, s1);
  for (int i = 0; i < reps; ++i) {
    cudaSetDevice(src);
    cudaMemcpyPeerAsync(b, dst, a, src, bytes, s1);
    if (both) {
      cudaSetDevice(dst);
      cudaMemcpyPeerAsync(d, src, c, dst, bytes, s2);
    }
  }
  cudaSetDevice(src);
  cudaEventRecord(e1, s1);
  cudaEventSynchronize(e1);
  cudaStreamSynchronize(s2);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(a);
  cudaFree(d);
  cudaSetDevice(dst);
  cudaFree(b);
  cudaFree(c);
  return double(bytes) * reps / (ms * 1e-3) / 1e9;
}

struct Inputs {
  Tensor x, ids, weights;          // on the rank's GPU
  int64_t remote_rows = 0;         // tokens with an expert on the other rank (normal's rows)
  int64_t local_rows = 0;          // tokens with an expert on this rank
  int64_t remote_pairs = 0;        // (token, expert) pairs on the other rank (low_latency's rows)
};

Inputs make_inputs(int rank, int64_t tokens, Device dev) {
  std::mt19937 rng(1234 + rank);
  std::vector<float> x(size_t(tokens * kHidden));
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  std::vector<int32_t> ids(size_t(tokens * kTopK));
  std::vector<float> w(ids.size(), 0.125f);
  Inputs in;
  std::vector<int32_t> all(kExperts);
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);  // uniform: k distinct experts
    bool remote = false, local = false;
    for (int64_t j = 0; j < kTopK; ++j) {
      ids[t * kTopK + j] = all[j];
      const bool other = all[j] / (kExperts / kRanks) != rank;
      in.remote_pairs += other;
      remote |= other;
      local |= !other;
    }
    in.remote_rows += remote;
    in.local_rows += local;
  }
  const Tensor xf = Tensor::from_vector(x, {tokens, kHidden});
  Tensor xb = Tensor::empty({tokens, kHidden}, DType::kBF16);
  for (int64_t i = 0; i < xf.numel(); ++i) xb.data<bf16>()[i] = f32_to_bf16(x[i]);
  in.x = xb.to(dev);
  in.ids = Tensor::from_vector(ids, {tokens, kTopK}).to(dev);
  in.weights = Tensor::from_vector(w, {tokens, kTopK}).to(dev);
  return in;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Timing {
  double dispatch_us = 0, combine_us = 0;
  double rows_a2a_us = 0;  // normal: the NCCL all_to_all of the dispatch's rows alone
  int64_t dispatch_bytes = 0, combine_bytes = 0;  // crossing NVLink, per rank (one direction)
};

// Times `iters` dispatch+combine pairs of `mode` on one rank. normal: host wall clock around
// each call plus a device synchronize (its host layout work is part of its cost);
// low_latency: CUDA events around the enqueued kernels (no host sync inside).
Timing bench_mode(ProcessGroup& g, DispatchMode mode, int64_t tokens, int iters) {
  const Device dev = g.device();
  const int me = g.rank();
  const ExpertPlacement placement = ExpertPlacement::contiguous(kExperts, kRanks);
  DispatchOptions o;
  o.hidden = kHidden;
  o.top_k = kTopK;
  o.max_dispatch_tokens_per_rank = tokens;
  o.dtype = DType::kBF16;
  auto d = make_dispatcher(mode, g, placement, o);
  const Inputs in = make_inputs(me, tokens, dev);
  Tensor out = Tensor::zeros({tokens, kHidden}, DType::kF32, dev);
  Tensor y;
  std::vector<double> dispatch_us, combine_us;
  const int total = iters + 3;  // the first 3 are warm-up
  if (mode == DispatchMode::kNormal) {
    for (int i = 0; i < total; ++i) {
      g.barrier();
      auto t0 = std::chrono::steady_clock::now();
      const ExpertInput& ei = d->dispatch(in.x, in.ids, in.weights);
      ops::cuda::synchronize(dev.index);
      auto t1 = std::chrono::steady_clock::now();
      if (!y.defined() || y.shape() != ei.x.shape()) y = Tensor::zeros(ei.x.shape(), DType::kF32, dev);
      g.barrier();
      auto t2 = std::chrono::steady_clock::now();
      d->combine(y, out);
      ops::cuda::synchronize(dev.index);
      auto t3 = std::chrono::steady_clock::now();
      if (i >= 3) {
        dispatch_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        combine_us.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
      }
    }
  } else {
    // Back-to-back steps, events between the enqueued kernels: the ranks pace each other
    // through the flags, so no host barrier's jitter lands in the timings.
    const ExpertInput& first = d->dispatch(in.x, in.ids, in.weights);
    y = Tensor::zeros(first.x.shape(), DType::kF32, dev);
    d->combine(y, out);
    ops::cuda::synchronize(dev.index);
    g.barrier();
    const cudaStream_t stream = ops::cuda::current_stream(dev.index);
    std::vector<cudaEvent_t> ev(size_t(3 * total));
    for (cudaEvent_t& e : ev) cuda_ok(cudaEventCreate(&e), "cudaEventCreate");
    for (int i = 0; i < total; ++i) {
      cudaEventRecord(ev[3 * i], stream);
      d->dispatch(in.x, in.ids, in.weights);
      cudaEventRecord(ev[3 * i + 1], stream);
      d->combine(y, out);
      cudaEventRecord(ev[3 * i + 2], stream);
    }
    ops::cuda::synchronize(dev.index);
    for (int i = 3; i < total; ++i) {
      float a = 0, b = 0;
      cudaEventElapsedTime(&a, ev[3 * i], ev[3 * i + 1]);
      cudaEventElapsedTime(&b, ev[3 * i + 1], ev[3 * i + 2]);
      dispatch_us.push_back(a * 1e3);
      combine_us.push_back(b * 1e3);
    }
    for (cudaEvent_t e : ev) cudaEventDestroy(e);
  }
  ops::cuda::synchronize(dev.index);
  Timing t;
  if (mode == DispatchMode::kNormal) {
    // The transport alone: the same rows per destination as the dispatch, one all_to_all.
    const std::vector<int64_t> send_rows = {me == 0 ? in.local_rows : in.remote_rows,
                                            me == 0 ? in.remote_rows : in.local_rows};
    const std::vector<int64_t> all = g.all_gather(send_rows);
    const std::vector<int64_t> recv_rows = {all[me], all[2 + me]};
    Tensor send = Tensor::zeros({send_rows[0] + send_rows[1], kHidden}, DType::kBF16, dev);
    Tensor recv = Tensor::empty({recv_rows[0] + recv_rows[1], kHidden}, DType::kBF16, dev);
    std::vector<double> a2a;
    for (int i = 0; i < total; ++i) {
      g.barrier();
      auto t0 = std::chrono::steady_clock::now();
      all_to_all_rows(g, send, send_rows, recv, recv_rows);
      ops::cuda::synchronize(dev.index);
      auto t1 = std::chrono::steady_clock::now();
      if (i >= 3) a2a.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    t.rows_a2a_us = median(a2a);
  }
  t.dispatch_us = median(dispatch_us);
  t.combine_us = median(combine_us);
  const int64_t rows = mode == DispatchMode::kNormal ? in.remote_rows : in.remote_pairs;
  t.dispatch_bytes = rows * kHidden * 2;
  t.combine_bytes = rows * kHidden * 4;
  return t;
}

int run(const Options& opt) {
  if (ops::cuda::device_count() < kRanks) {
    std::fprintf(stderr, "ep_bench: needs %d GPUs, found %d\n", kRanks, ops::cuda::device_count());
    return 2;
  }
  for (int a = 0; a < kRanks; ++a) {
    cudaSetDevice(a);
    for (int b = 0; b < kRanks; ++b) {
      if (a != b && cudaDeviceEnablePeerAccess(b, 0) != cudaSuccess) cudaGetLastError();
    }
  }
  const double peer_uni = peer_copy_gbps(0, 1, false);
  const double peer_bi = peer_copy_gbps(0, 1, true);
  std::printf("cudaMemcpyPeerAsync GPU0->GPU1: %.1f GB/s one direction, %.1f GB/s per direction "
              "with both at once\n", peer_uni, peer_bi);

  Timing results[2][kRanks];
  const auto status = run_nccl_ranks(kRanks, [&](ProcessGroup& g) {
    results[0][g.rank()] = bench_mode(g, DispatchMode::kNormal, opt.normal_tokens, opt.iters);
    results[1][g.rank()] = bench_mode(g, DispatchMode::kLowLatency, opt.ll_tokens, opt.iters);
  });
  for (int r = 0; r < kRanks; ++r) {
    if (!status[r].ok()) {
      std::fprintf(stderr, "ep_bench: %s\n", status[r].message().c_str());
      return 1;
    }
  }
  std::printf("\n| mode | tokens/rank | step | us (slower rank) | MB over NVLink per rank | GB/s "
              "| vs peer copy (%.0f GB/s) | vs bidirectional (%.0f GB/s) |\n", peer_uni, peer_bi);
  std::printf("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
  const char* names[2] = {"normal", "low_latency"};
  const int64_t tokens[2] = {opt.normal_tokens, opt.ll_tokens};
  const char* steps[3] = {"dispatch", "combine", "rows all_to_all only (NCCL)"};
  for (int m = 0; m < 2; ++m) {
    for (int step = 0; step < (m == 0 ? 3 : 2); ++step) {
      double us = 0;
      int64_t bytes = 0;
      for (int r = 0; r < kRanks; ++r) {
        const Timing& t = results[m][r];
        us = std::max(us, step == 0 ? t.dispatch_us : step == 1 ? t.combine_us : t.rows_a2a_us);
        bytes = std::max(bytes, step == 1 ? t.combine_bytes : t.dispatch_bytes);
      }
      const double gbps = double(bytes) / (us * 1e-6) / 1e9;
      std::printf("| %s | %lld | %s | %.1f | %.2f | %.1f | %.0f%% | %.0f%% |\n", names[m],
                  (long long)tokens[m], steps[step], us, bytes / 1e6, gbps,
                  100.0 * gbps / peer_uni, 100.0 * gbps / peer_bi);
    }
  }
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  tandem::Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> long long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "ep_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--iters") {
      opt.iters = int(value());
    } else if (a == "--normal-tokens") {
      opt.normal_tokens = value();
    } else if (a == "--ll-tokens") {
      opt.ll_tokens = value();
    } else {
      std::fprintf(stderr, "ep_bench: unknown flag %s (--iters, --normal-tokens, --ll-tokens)\n",
                   a.c_str());
      return 2;
    }
  }
  if (opt.iters < 1 || opt.normal_tokens < 1 || opt.ll_tokens < 1) {
    std::fprintf(stderr, "ep_bench: --iters, --normal-tokens and --ll-tokens must be >= 1\n");
    return 2;
  }
  try {
    return tandem::run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ep_bench: %s\n", e.what());
    return 1;
  }
}
