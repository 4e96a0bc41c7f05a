#include "parallel/memory_plan.h"

#include <fmt/format.h>

#include <regex>

#include "core/error.h"

#include "model/weights.h"

namespace tandem {

namespace {

// Bytes of one tensor as the checkpoint stores it (fp8 linears carry 128x128 fp32 scales).
uint64_t stored_bytes(const WeightSpec& s, bool fp8) {
  uint64_t n = 1;
  for (int64_t d : s.shape) n *= uint64_t(d);
  switch (s.kind) {
    case WeightKind::kLinear: {
      if (!fp8) return 2 * n;
      const uint64_t b = 128, blocks = ((uint64_t(s.shape[0]) + b - 1) / b) *
                                       ((uint64_t(s.shape[1]) + b - 1) / b);
      return n + 4 * blocks;
    }
    case WeightKind::kRouterBias: return 4 * n;
    default: return 2 * n;
  }
}

}  // namespace

MemoryPlan plan_memory(const ModelConfig& c, const ExpertPlacement& placement,
                       const MemoryPlanOptions& o) {
  TANDEM_CHECK(placement.num_experts() == c.n_routed_experts,
               "memory plan: placement has {} experts, the model {}", placement.num_experts(),
               c.n_routed_experts);
  const int ranks = placement.num_ranks();
  MemoryPlan plan;
  plan.kv_bytes_per_token = uint64_t(c.num_hidden_layers) * uint64_t(c.kv_cache_dim()) *
                            uint64_t(o.kv_bytes_per_value);
  plan.ranks.resize(size_t(ranks));
  static const std::regex expert_re(R"(\.mlp\.experts\.(\d+)\.)");
  for (const WeightSpec& s : weight_specs(c)) {
    const uint64_t bytes = stored_bytes(s, c.quantization.enabled);
    plan.total_weight_bytes += bytes;
    std::smatch m;
    if (std::regex_search(s.name, m, expert_re)) {
      plan.ranks[size_t(placement.location(std::stoll(m[1])).rank)].expert_bytes += bytes;
    } else {
      for (RankMemoryPlan& r : plan.ranks) r.replicated_bytes += bytes;
    }
  }
  const double budget = o.mem_fraction * double(o.gpu_bytes);
  for (int r = 0; r < ranks; ++r) {
    RankMemoryPlan& p = plan.ranks[size_t(r)];
    p.rank = r;
    p.local_experts_per_layer = placement.num_local_experts(r);
    const double left = budget - double(p.weight_bytes());
    p.kv_bytes = left > 0 ? uint64_t(left) : 0;
    p.kv_tokens = plan.kv_bytes_per_token ? int64_t(p.kv_bytes / plan.kv_bytes_per_token) : 0;
  }
  return plan;
}

bool MemoryPlan::fits() const {
  for (const RankMemoryPlan& r : ranks) {
    if (r.kv_tokens <= 0) return false;
  }
  return !ranks.empty();
}

std::string MemoryPlan::table() const {
  std::string out = fmt::format(
      "checkpoint {:.1f} GB; KV cache {} bytes per token\n{:>4} {:>9} {:>13} {:>12} {:>11} "
      "{:>11} {:>12}\n",
      double(total_weight_bytes) / 1e9, kv_bytes_per_token, "rank", "experts", "replicated GB",
      "experts GB", "weights GB", "KV GB", "KV tokens");
  for (const RankMemoryPlan& r : ranks) {
    out += fmt::format("{:>4} {:>9} {:>13.1f} {:>12.1f} {:>11.1f} {:>11.1f} {:>12}\n", r.rank,
                       r.local_experts_per_layer, double(r.replicated_bytes) / 1e9,
                       double(r.expert_bytes) / 1e9, double(r.weight_bytes()) / 1e9,
                       double(r.kv_bytes) / 1e9, r.kv_tokens);
  }
  return out;
}

}  // namespace tandem
