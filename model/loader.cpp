#include "model/loader.h"

#include <chrono>

#include "core/log.h"
#include "model/random_weights.h"

namespace tandem {

bool load_format_from_name(const std::string& name, LoadFormat* out) {
  if (name == "auto") *out = LoadFormat::kAuto;
  else if (name == "dummy") *out = LoadFormat::kDummy;
  else return false;
  return true;
}

LoadedModel load_model(const std::filesystem::path& model_dir, Device device, LoadFormat format) {
  const auto start = std::chrono::steady_clock::now();
  TANDEM_CHECK(std::filesystem::is_directory(model_dir), "model path {} is not a directory",
               model_dir.string());
  LoadedModel m;
  m.config = ModelConfig::from_json_file(model_dir / "config.json");
  TANDEM_LOG_INFO("model {}", m.config.summary());
  if (format == LoadFormat::kDummy) {
    m.model = std::make_unique<DeepseekV3Model>(m.config, load_dummy_weights(m.config, 0, device));
  } else {
    m.checkpoint = std::make_shared<Checkpoint>(Checkpoint::open(model_dir));
    m.checkpoint->prefetch();
    m.model =
        std::make_unique<DeepseekV3Model>(m.config, load_weights(m.config, *m.checkpoint, device));
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (m.checkpoint) {
    TANDEM_LOG_INFO("loaded {:.2f} GB in {:.1f} s", double(m.checkpoint->total_bytes()) / 1e9, secs);
  } else {
    TANDEM_LOG_INFO("made dummy weights on {} in {:.1f} s", device.name(), secs);
  }
  return m;
}

LoadedModel load_random_model(const ModelConfig& config, uint64_t seed, Device device) {
  LoadedModel m;
  m.config = config;
  m.model = std::make_unique<DeepseekV3Model>(m.config, load_dummy_weights(config, seed, device));
  return m;
}

}  // namespace tandem
