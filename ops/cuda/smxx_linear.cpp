// Host launchers of smxx_linear.cu: linear (one GEMM) and head_matmul (one GEMM per head).
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  OpContext ctx(out);
  GemmParams p{};
  p.x = cptr<float>(x);
  p.x_stride = x.stride(0);
  p.w = w.weight.raw_data();
  p.w_dtype = w.weight.dtype();
  p.w_stride = w.weight.stride(0);
  if (w.is_fp8()) {
    TANDEM_CHECK(w.scale_inv.stride(1) == 1, "linear: scale_inv rows must be contiguous");
    p.scale_inv = cptr<float>(w.scale_inv);
    p.scale_stride = w.scale_inv.stride(0);
  }
  p.out = mptr<float>(out);
  p.out_stride = out.stride(0);
  p.m = x.size(0);
  p.n = w.out_features();
  p.k = w.in_features();
  p.batch = 1;
  launch_gemm_f32(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear");
}

void head_matmul(const Tensor& x, const Tensor& w, Tensor& out) {
  TANDEM_CHECK(out.stride(2) == 1, "head_matmul: out must be contiguous in its last dimension");
  OpContext ctx(out);
  GemmParams p{};
  p.x = cptr<float>(x);
  p.x_stride = x.stride(0);
  p.x_batch_stride = x.stride(1);
  p.w = w.raw_data();
  p.w_dtype = w.dtype();
  p.w_stride = w.stride(1);
  p.w_batch_stride = w.stride(0);
  p.out = mptr<float>(out);
  p.out_stride = out.stride(0);
  p.out_batch_stride = out.stride(1);
  p.m = x.size(0);
  p.n = w.size(1);
  p.k = w.size(2);
  p.batch = x.size(1);
  TANDEM_CHECK(p.batch <= 65535, "head_matmul: {} heads exceed the grid", p.batch);
  launch_gemm_f32(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("head_matmul");
}

}  // namespace tandem::ops::cuda
