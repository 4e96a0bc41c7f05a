// Host launcher of smxx_moe_route.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
               Tensor& topk_ids, Tensor& topk_weights) {
  const int64_t experts = logits.size(1);
  const int64_t n_group = params.grouped ? params.n_group : 1;
  // Two f32 rows of scores plus the group table live in shared memory (48 KiB by default).
  TANDEM_CHECK((2 * experts + 2 * n_group) * 4 <= 48 * 1024,
               "moe_route: {} experts exceed the kernel's shared memory", experts);
  TANDEM_CHECK(!(params.grouped && params.group_by_top2 && params.topk_group < params.n_group) ||
                   experts / params.n_group >= 2,
               "moe_route: top-2 group scores need at least 2 experts per group, got {}",
               experts / params.n_group);
  OpContext ctx(logits);
  MoeRouteParams p{};
  p.logits = cptr<float>(logits);
  p.logits_stride = logits.stride(0);
  p.bias = bias.defined() ? cptr<float>(bias) : nullptr;
  p.topk_ids = mptr<int32_t>(topk_ids);
  p.ids_stride = topk_ids.stride(0);
  p.topk_weights = mptr<float>(topk_weights);
  p.weights_stride = topk_weights.stride(0);
  p.tokens = logits.size(0);
  p.experts = experts;
  p.top_k = params.top_k;
  p.n_group = n_group;
  p.topk_group = params.grouped ? params.topk_group : 1;
  p.sigmoid = params.sigmoid;
  p.group_by_top2 = params.group_by_top2;
  p.grouped = params.grouped;
  p.norm_topk_prob = params.norm_topk_prob;
  p.routed_scaling_factor = float(params.routed_scaling_factor);
  launch_moe_route(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_route");
}

}  // namespace tandem::ops::cuda
