#include <gtest/gtest.h>

#include <cstdio>

#include "core/error.h"
#include "model/presets.h"
#include "parallel/memory_plan.h"

namespace tandem {
namespace {

ModelConfig v3() { return ModelConfig::from_json_string(preset_config_json("v3").dump(), "v3"); }

// Full DeepSeek-V3 (fp8, 61 layers, 256 experts) on 8 H200s with --ep 8 and DP attention.
TEST(MemoryPlan, DeepSeekV3OnEightH200s) {
  const ModelConfig c = v3();
  const MemoryPlan p = plan_memory(c, ExpertPlacement::contiguous(256, 8),
                                   {uint64_t(141e9), 0.88, 2});
  // The checkpoint: about 671B parameters, nearly all fp8 (the published files are ~690 GB
  // with the MTP layer, which this config does not load).
  EXPECT_NEAR(double(p.total_weight_bytes) / 1e9, 680.0, 20.0);
  // 61 layers x 576 values x 2 bytes.
  EXPECT_EQ(p.kv_bytes_per_token, 61u * 576u * 2u);
  ASSERT_EQ(p.ranks.size(), 8u);
  uint64_t experts = 0;
  for (const RankMemoryPlan& r : p.ranks) {
    EXPECT_EQ(r.local_experts_per_layer, 32);
    EXPECT_EQ(r.replicated_bytes, p.ranks[0].replicated_bytes);
    EXPECT_EQ(r.expert_bytes, p.ranks[0].expert_bytes);
    experts += r.expert_bytes;
  }
  // Routed experts: 58 MoE layers x 256 x 3 x 7168 x 2048 fp8 bytes plus scales.
  const double expert_bytes = 58.0 * 256 * 3 * 7168 * 2048 * (1.0 + 4.0 / (128 * 128));
  EXPECT_NEAR(double(experts), expert_bytes, 1e6);
  EXPECT_EQ(experts + p.ranks[0].replicated_bytes, p.total_weight_bytes);
  EXPECT_TRUE(p.fits());
  EXPECT_GT(p.ranks[0].kv_tokens, 100000);  // room for a decode batch of 2k-token requests
  std::printf("%s", p.table().c_str());
  EXPECT_NE(p.table().find("KV tokens"), std::string::npos);
}

TEST(MemoryPlan, TooSmallAGpuDoesNotFitAndPlacementMustMatch) {
  const ModelConfig c = v3();
  EXPECT_FALSE(plan_memory(c, ExpertPlacement::contiguous(256, 2), {uint64_t(141e9), 0.88, 2}).fits());
  EXPECT_THROW(plan_memory(c, ExpertPlacement::contiguous(64, 8), {uint64_t(141e9), 0.88, 2}), Error);
}

}  // namespace
}  // namespace tandem
