// Host launcher of smxx_random.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void fill_random(Tensor& out, uint64_t key, float amplitude, float offset) {
  OpContext ctx(out);
  FillRandomParams p{};
  p.out = out.raw_data();
  p.dtype = out.dtype();
  p.numel = out.numel();
  p.key = key;
  p.amplitude = amplitude;
  p.offset = offset;
  launch_fill_random(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("fill_random");
}

}  // namespace tandem::ops::cuda
