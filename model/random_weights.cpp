#include "model/random_weights.h"

#include <array>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "core/log.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "model/safetensors_writer.h"
#include "ops/ops.h"
#include "ops/random_bits.h"

namespace tandem {

namespace {

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

float spec_std(const WeightSpec& spec) {
  switch (spec.kind) {
    case WeightKind::kLinear: return 1.0f / std::sqrt(float(spec.shape[1]));
    case WeightKind::kRouter: return 1.0f / std::sqrt(float(spec.shape[1]));
    case WeightKind::kEmbedding: return spec.name == "lm_head.weight"
                                            ? 1.0f / std::sqrt(float(spec.shape[1]))
                                            : 1.0f;
    case WeightKind::kNorm: return 0.1f;
    case WeightKind::kRouterBias: return 0.1f;
  }
  return 1.0f;
}

}  // namespace

DType random_weight_dtype(const WeightSpec& spec, bool fp8) {
  if (fp8 && spec.kind == WeightKind::kLinear) return DType::kF8E4M3;
  return spec.kind == WeightKind::kRouterBias ? DType::kF32 : DType::kBF16;
}

RandomWeight random_weight(const WeightSpec& spec, bool fp8, uint64_t seed, Device device) {
  const uint64_t key = ops::splitmix64(seed ^ hash_name(spec.name));
  const float std_dev = spec_std(spec);
  const float amplitude = std_dev * std::sqrt(3.0f);  // uniform(-a, a) has std a / sqrt(3)
  RandomWeight out;
  const DType dtype = random_weight_dtype(spec, fp8);
  if (dtype == DType::kF8E4M3) {
    // Uniform codes over [-448, 448) with one scale per block: amplitude / 448.
    out.weight = Tensor::empty(spec.shape, DType::kF8E4M3, device);
    ops::fill_random(out.weight, key, kFp8E4M3Max, 0.0f);
    const int64_t b = LinearWeight::kBlock;
    const Shape scale_shape{(spec.shape[0] + b - 1) / b, (spec.shape[1] + b - 1) / b};
    out.scale_inv = Tensor::from_vector(
                        std::vector<float>(size_t(scale_shape[0] * scale_shape[1]),
                                           amplitude / kFp8E4M3Max),
                        scale_shape)
                        .to(device);
    return out;
  }
  out.weight = Tensor::empty(spec.shape, dtype, device);
  ops::fill_random(out.weight, key, amplitude, spec.kind == WeightKind::kNorm ? 1.0f : 0.0f);
  return out;
}

uint64_t make_random_checkpoint(const nlohmann::json& config_json, const MakeModelOptions& opt) {
  const ModelConfig config = ModelConfig::from_json_string(config_json.dump(), "preset config");
  std::filesystem::create_directories(opt.out_dir);
  {
    std::ofstream f(opt.out_dir / "config.json");
    TANDEM_CHECK(f.good(), "cannot write {}", (opt.out_dir / "config.json").string());
    f << config_json.dump(2) << "\n";
  }
  const std::vector<WeightSpec> specs = weight_specs(config);
  uint64_t total = 0;
  for (const WeightSpec& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    const bool q = config.quantization.enabled && s.kind == WeightKind::kLinear;
    total += uint64_t(n) * (q ? 1 : s.kind == WeightKind::kRouterBias ? 4 : 2);
  }
  TANDEM_LOG_INFO("writing {} tensors ({:.2f} GB) of {} to {}", specs.size(), double(total) / 1e9,
                  config.summary(), opt.out_dir.string());
  // Generation (CPU-bound, on the thread pool) runs one thread ahead of the writer (I/O-bound),
  // with at most kAheadBytes generated and not yet handed to the writer.
  constexpr uint64_t kAheadBytes = 1ull << 30;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::pair<std::string, Tensor>> ready;
  uint64_t ready_bytes = 0;
  bool producer_done = false, aborted = false;
  std::exception_ptr producer_error;
  std::thread producer([&] {
    try {
      for (const WeightSpec& s : specs) {
        RandomWeight w = random_weight(s, config.quantization.enabled, opt.seed);
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, [&] { return ready_bytes < kAheadBytes || aborted; });
        if (aborted) break;
        ready_bytes += w.weight.nbytes();
        ready.emplace_back(s.name, w.weight);
        if (w.scale_inv.defined()) ready.emplace_back(s.name + "_scale_inv", w.scale_inv);
        cv.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      producer_error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mutex);
    producer_done = true;
    cv.notify_all();
  });
  ShardedCheckpointWriter writer(opt.out_dir, opt.max_shard_bytes);
  ProgressBar progress("make-model", total);
  try {
    for (;;) {
      std::pair<std::string, Tensor> item;
      {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, [&] { return !ready.empty() || producer_done; });
        if (ready.empty()) break;
        item = std::move(ready.front());
        ready.pop_front();
        if (item.first.find("_scale_inv") == std::string::npos) ready_bytes -= item.second.nbytes();
        cv.notify_all();
      }
      writer.add(item.first, item.second);
      if (item.first.find("_scale_inv") == std::string::npos) progress.advance(item.second.nbytes());
    }
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      aborted = true;
      cv.notify_all();
    }
    producer.join();
    throw;
  }
  producer.join();
  if (producer_error) std::rethrow_exception(producer_error);
  writer.finish();
  progress.finish();
  return total;
}

}  // namespace tandem
