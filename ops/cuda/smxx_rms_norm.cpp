// Host launchers of smxx_rms_norm.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {

void norm(Tensor* residual, const Tensor& x, const Tensor& weight, double eps, Tensor& out,
          const char* op) {
  TANDEM_CHECK(weight.is_contiguous(), "{}: weight must be contiguous", op);
  OpContext ctx(out);
  RmsNormParams p{};
  p.x = x.raw_data();
  p.x_dtype = x.dtype();
  p.x_stride = x.stride(0);
  p.residual = residual ? mptr<float>(*residual) : nullptr;
  p.residual_stride = residual ? residual->stride(0) : 0;
  p.weight = weight.raw_data();
  p.weight_dtype = weight.dtype();
  p.out = out.raw_data();
  p.out_dtype = out.dtype();
  p.out_stride = out.stride(0);
  p.rows = x.size(0);
  p.n = x.size(1);
  p.eps = float(eps);
  launch_rms_norm(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK(op);
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  norm(nullptr, x, weight, eps, out, "rms_norm");
}

void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out) {
  norm(&residual, x, weight, eps, out, "add_rms_norm");
}

}  // namespace tandem::ops::cuda
