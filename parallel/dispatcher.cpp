#include "parallel/dispatcher.h"

#include "parallel/dispatcher_impl.h"

namespace tandem {

std::string_view dispatch_mode_name(DispatchMode mode) {
  return mode == DispatchMode::kNormal ? "normal" : "low_latency";
}

Tensor ExpertInput::expert_rows(const Tensor& t, int64_t e) const {
  TANDEM_CHECK(e >= 0 && e < num_local_experts(), "expert_rows: local expert {} of {}", e,
               num_local_experts());
  if (mode == DispatchMode::kNormal) {
    TANDEM_CHECK(int64_t(offsets.size()) == num_local_experts() + 1,
                 "expert_rows: no normal dispatch has filled this input");
    TANDEM_CHECK(t.dim() == 2 && t.size(0) == offsets.back(),
                 "expert_rows: {} does not have the normal layout [{}, H]", t.describe(),
                 offsets.back());
    return t.slice(0, offsets[e], offsets[e + 1]);
  }
  TANDEM_CHECK(t.dim() == 3 && t.size(0) == num_local_experts() && t.size(1) == x.size(1),
               "expert_rows: {} does not have the masked layout {}", t.describe(),
               shape_str(x.shape()));
  TANDEM_CHECK(counts[e] >= 0, "expert_rows: the counts of this low_latency input are on the "
               "device (counts_device); copy them to the host first");
  return t.select(0, e).slice(0, 0, counts[e]);
}

std::unique_ptr<Dispatcher> make_dispatcher(DispatchMode mode, ProcessGroup& group,
                                            const ExpertPlacement& placement,
                                            const DispatchOptions& options) {
  TANDEM_CHECK(placement.num_ranks() == group.size(),
               "dispatcher: placement over {} ranks, group of {}", placement.num_ranks(),
               group.size());
  TANDEM_CHECK(options.hidden >= 1 && options.top_k >= 1 && options.top_k <= placement.num_experts(),
               "dispatcher: hidden {} and top_k {} for {} experts", options.hidden, options.top_k,
               placement.num_experts());
  if (mode == DispatchMode::kNormal) return detail::make_normal_dispatcher(group, placement, options);
  if (group.device().is_cuda()) {
#ifdef TANDEM_WITH_CUDA
    return detail::make_cuda_low_latency_dispatcher(group, placement, options);
#else
    TANDEM_FAIL("dispatcher: a group on {} needs the CUDA build", group.device().name());
#endif
  }
  return detail::make_low_latency_dispatcher(group, placement, options);
}

namespace detail {

void check_dispatch_args(const char* who, const DispatchOptions& o, const Tensor& x,
                         const Tensor& topk_ids, const Tensor& topk_weights, Device device) {
  TANDEM_CHECK(x.dim() == 2 && x.size(1) == o.hidden && x.is_contiguous() &&
                   (x.dtype() == DType::kF32 || x.dtype() == DType::kBF16),
               "{}: x must be contiguous f32 | bf16 [T, {}], got {}", who, o.hidden, x.describe());
  const int64_t t = x.size(0);
  TANDEM_CHECK(topk_ids.dim() == 2 && topk_ids.size(0) == t && topk_ids.size(1) == o.top_k &&
                   topk_ids.dtype() == DType::kI32 && topk_ids.is_contiguous(),
               "{}: topk_ids must be i32 [{}, {}], got {}", who, t, o.top_k, topk_ids.describe());
  TANDEM_CHECK(topk_weights.dim() == 2 && topk_weights.size(0) == t &&
                   topk_weights.size(1) == o.top_k && topk_weights.dtype() == DType::kF32 &&
                   topk_weights.is_contiguous(),
               "{}: topk_weights must be f32 [{}, {}], got {}", who, t, o.top_k,
               topk_weights.describe());
  TANDEM_CHECK(x.device() == device, "{}: x on {}, the group runs on {}", who, x.device().name(),
               device.name());
  TANDEM_CHECK((topk_ids.device() == device || topk_ids.device().is_cpu()) &&
                   (topk_weights.device() == device || topk_weights.device().is_cpu()),
               "{}: topk_ids on {} and topk_weights on {}, the group runs on {}", who,
               topk_ids.device().name(), topk_weights.device().name(), device.name());
}

}  // namespace detail
}  // namespace tandem
