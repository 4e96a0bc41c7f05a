// The two Dispatcher implementations (dispatcher.h), made through make_dispatcher, and helpers
// they share. Private to parallel/.
#pragma once

#include "parallel/dispatcher.h"

namespace tandem::detail {

std::unique_ptr<Dispatcher> make_normal_dispatcher(ProcessGroup& group,
                                                   const ExpertPlacement& placement,
                                                   const DispatchOptions& options);
std::unique_ptr<Dispatcher> make_low_latency_dispatcher(ProcessGroup& group,
                                                        const ExpertPlacement& placement,
                                                        const DispatchOptions& options);
// The GPU low_latency dispatcher (cuda_low_latency.cpp; CUDA builds only).
std::unique_ptr<Dispatcher> make_cuda_low_latency_dispatcher(ProcessGroup& group,
                                                             const ExpertPlacement& placement,
                                                             const DispatchOptions& options);

// Checks dispatch's arguments against the options: x [T, H] f32 | bf16, topk_ids i32 [T, k],
// topk_weights f32 [T, k]; x on the group's device, the routing there or on the CPU.
void check_dispatch_args(const char* who, const DispatchOptions& options, const Tensor& x,
                         const Tensor& topk_ids, const Tensor& topk_weights, Device device);

// t itself when it is already on `device`, else a copy there.
inline Tensor to_device(const Tensor& t, Device device) {
  return t.device() == device ? t : t.to(device);
}

}  // namespace tandem::detail
