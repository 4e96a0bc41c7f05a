// Host launcher of smxx_activation.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void silu_and_mul(const Tensor& gate_up, Tensor& out) {
  OpContext ctx(out);
  SiluAndMulParams p{};
  p.gate_up = gate_up.raw_data();
  p.in_dtype = gate_up.dtype();
  p.in_stride = gate_up.stride(0);
  p.out = out.raw_data();
  p.out_dtype = out.dtype();
  p.out_stride = out.stride(0);
  p.rows = out.size(0);
  p.n = out.size(1);
  launch_silu_and_mul(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("silu_and_mul");
}

}  // namespace tandem::ops::cuda
