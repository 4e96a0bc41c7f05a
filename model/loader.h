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
  std::shared_ptr<Checkpoint> checkpoint;  // keeps the mapped weights alive
  std::unique_ptr<DeepseekV3Model> model;
};

// Throws tandem::Error naming the file when config.json or a tensor is missing or wrong.
LoadedModel load_model(const std::filesystem::path& model_dir, Device device = Device::cpu());

}  // namespace tandem
