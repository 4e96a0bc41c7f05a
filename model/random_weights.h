// Deterministic random weights for `tandem make-model` and `--load-format dummy`
// (load_dummy_weights in model/weights.h makes them on the target device).
// Element i of tensor `name` depends only on (seed, name, i), so generation runs in parallel
// and any subset of the tensors (one rank's experts) can be made on its own.
// Scales: linear weights uniform with std 1/sqrt(in), embeddings std 1, norms 1 +- 0.1,
// router std 1/sqrt(hidden), correction bias std 0.1 — activations stay of order 1.
#pragma once

#include <cstdint>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "model/weights.h"

namespace tandem {

struct RandomWeight {
  Tensor weight;     // bf16, f32 (router bias) or f8_e4m3
  Tensor scale_inv;  // f32 block scales when weight is f8_e4m3
};

// fp8: linear weights as f8_e4m3 with 128x128 block scales, as DeepSeek-V3 ships them.
// Made on `device` (ops::fill_random): the same bits on the CPU and on a GPU.
RandomWeight random_weight(const WeightSpec& spec, bool fp8, uint64_t seed,
                           Device device = Device::cpu());
// The dtype random_weight gives `spec`'s weight.
DType random_weight_dtype(const WeightSpec& spec, bool fp8);

struct MakeModelOptions {
  std::filesystem::path out_dir;
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 4ull << 30;
};

// Writes config.json and the safetensors checkpoint for `config_json` (fp8 when it has a
// quantization_config) with a progress bar. Returns the bytes written.
uint64_t make_random_checkpoint(const nlohmann::json& config_json, const MakeModelOptions& options);

}  // namespace tandem
