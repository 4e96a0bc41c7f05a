// Loading a model directory (config.json + safetensors) into a runnable model, with a
// progress bar over the checkpoint bytes.
#pragma once

#include <filesystem>
#include <memory>

#include "model/checkpoint.h"
#include "model/deepseek_v3.h"

namespace tandem {

struct LoadedModel {
  ModelConfig config;
  std::shared_ptr<Checkpoint> checkpoint;  // keeps the mapped weights alive; null for dummy
  std::unique_ptr<DeepseekV3Model> model;
};

enum class LoadFormat {
  kAuto,   // the safetensors checkpoint in the model directory
  kDummy,  // random weights from config.json alone, as `make-model --seed 0` would write them
};

// Parses --load-format ("auto", "dummy"); false when unknown.
bool load_format_from_name(const std::string& name, LoadFormat* out);

// Throws tandem::Error naming the file when config.json or a tensor is missing or wrong.
LoadedModel load_model(const std::filesystem::path& model_dir, Device device = Device::cpu(),
                       LoadFormat format = LoadFormat::kAuto);

// A model of `config` with the random weights make-model writes for `seed`, in memory (no
// files): for tests and benchmarks.
LoadedModel load_random_model(const ModelConfig& config, uint64_t seed,
                              Device device = Device::cpu());

}  // namespace tandem
