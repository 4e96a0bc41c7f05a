// tandem make-model: writes a deterministic random checkpoint of a preset's shape (tiny,
// v2-lite, v3), optionally with fewer layers or FP8 weights, in the official layout.
#include <chrono>
#include <filesystem>
#include <fstream>

#include "app/commands.h"
#include "core/log.h"
#include "model/presets.h"
#include "model/random_weights.h"

namespace tandem::app {

namespace {

struct MakeModelArgs {
  std::string preset = "tiny";
  int layers = 0;
  std::string dtype = "bf16";
  std::string out;
  uint64_t seed = 0;
  double shard_gb = 4.0;
  std::string tokenizer;  // copy tokenizer.json (+ tokenizer_config.json) from here
  bool config_only = false;
};

int run_make_model(const MakeModelArgs& a) {
  nlohmann::json config = preset_config_json(a.preset);
  if (a.layers > 0) {
    config["num_hidden_layers"] = a.layers;
    const int dense = config["first_k_dense_replace"].get<int>();
    // Keep at least one MoE layer when there is room, so every preset exercises routing.
    if (dense >= a.layers) config["first_k_dense_replace"] = std::max(0, a.layers - 1);
  }
  if (a.dtype == "fp8") {
    config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                     {"fmt", "e4m3"},
                                     {"quant_method", "fp8"},
                                     {"weight_block_size", {128, 128}}};
  } else {
    config.erase("quantization_config");
  }
  const auto start = std::chrono::steady_clock::now();
  MakeModelOptions options{a.out, a.seed, uint64_t(a.shard_gb * 1e9)};
  uint64_t bytes = 0;
  if (a.config_only) {  // for --load-format dummy: the weights are made at load time
    std::filesystem::create_directories(a.out);
    std::ofstream f(std::filesystem::path(a.out) / "config.json");
    f << config.dump(2) << "\n";
    TANDEM_CHECK(f.good(), "--out: cannot write {}/config.json", a.out);
  } else {
    bytes = make_random_checkpoint(config, options);
  }
  if (!a.tokenizer.empty()) {
    const std::filesystem::path from = a.tokenizer;
    TANDEM_CHECK(std::filesystem::exists(from / "tokenizer.json"), "--tokenizer: no tokenizer.json in {}",
                 from.string());
    for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
      if (std::filesystem::exists(from / name)) {
        std::filesystem::copy_file(from / name, std::filesystem::path(a.out) / name,
                                   std::filesystem::copy_options::overwrite_existing);
      }
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  TANDEM_LOG_INFO("wrote {:.2f} GB to {} in {:.1f} s", double(bytes) / 1e9, a.out, secs);
  return 0;
}

}  // namespace

void add_make_model_command(CLI::App& app, int& exit_code) {
  auto a = std::make_shared<MakeModelArgs>();
  CLI::App* cmd = app.add_subcommand(
      "make-model", "Write a deterministic random checkpoint of a preset's shape");
  cmd->add_option("--preset", a->preset, "Model shape: tiny, v2-lite or v3")
      ->capture_default_str()
      ->check(CLI::IsMember(preset_names()));
  cmd->add_option("--layers", a->layers,
                  "Number of layers (default: the preset's; the first stays dense)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--dtype", a->dtype, "Weight format: bf16, or fp8 (e4m3, 128x128 block scales)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp8"}));
  cmd->add_option("--out", a->out, "Output directory (created if missing)")->required();
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  cmd->add_flag("--config-only", a->config_only,
                "Write only config.json (and the tokenizer): a model for --load-format dummy");
  cmd->add_option("--shard-gb", a->shard_gb, "Maximum shard size in GB")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 1000.0));
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Copy tokenizer.json and tokenizer_config.json from this directory (the tiny "
                  "preset has DeepSeek-V3's vocabulary, so its tokenizer fits)");
  cmd->callback([a, &exit_code] { exit_code = run_make_model(*a); });
}

}  // namespace tandem::app
