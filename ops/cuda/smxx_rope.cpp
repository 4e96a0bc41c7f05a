// Host launcher of smxx_rope.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave) {
  OpContext ctx(x);
  RopeParams p{};
  p.x = x.raw_data();
  p.x_dtype = x.dtype();
  p.stride_t = x.stride(0);
  p.stride_h = x.stride(1);
  p.positions = cptr<int32_t>(positions);
  p.inv_freq = cptr<float>(inv_freq);
  p.tokens = x.size(0);
  p.heads = x.size(1);
  p.dim = x.size(2);
  p.attention_factor = attention_factor;
  p.interleave = interleave;
  launch_rope(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace tandem::ops::cuda
