// Host launchers of smxx_linear.cu: linear (one GEMM) and head_matmul (one GEMM per head).
#include "ops/cuda/cublaslt_gemm.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {

Tensor cast_rows(const Tensor& src, DType dtype, const OpContext& ctx) {
  Tensor dst = Tensor::empty(src.shape(), dtype, src.device());
  CastRowsParams p{src.raw_data(), src.dtype(), src.stride(0), dst.raw_data(), dtype,
                   dst.stride(0), src.size(0), src.size(1)};
  launch_cast_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (cast)");
  return dst;
}

void cast_rows_into(const Tensor& src, Tensor& dst, const OpContext& ctx) {
  CastRowsParams p{src.raw_data(), src.dtype(), src.stride(0), dst.raw_data(), dst.dtype(),
                   dst.stride(0), src.size(0), src.size(1)};
  launch_cast_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (cast)");
}

}  // namespace

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  OpContext ctx(out);
  if (x.dtype() == DType::kBF16 && w.weight.dtype() == DType::kBF16 && x.size(1) > 0) {
    // Tensor cores through cuBLASLt, f32 accumulation, one rounding into a bf16 out.
    LtGemm g{x.raw_data(), x.stride(0), w.weight.raw_data(), w.weight.stride(0),
             out.raw_data(), x.size(0) == 1 ? out.size(1) : out.stride(0), out.dtype(),
             x.size(0), w.out_features(), w.in_features()};
    if (x.size(0) == 1) g.ldx = x.size(1);  // a single row: any stride is valid
    cublaslt_gemm_bf16(g, ctx.device, ctx.stream);
    return;
  }
  // Everything else on the f32 kernels: bf16 activations widened, a bf16 out rounded once.
  const Tensor xf = x.dtype() == DType::kF32 ? x : cast_rows(x, DType::kF32, ctx);
  Tensor of = out.dtype() == DType::kF32 ? out : Tensor::empty(out.shape(), DType::kF32, out.device());
  GemmParams p{};
  p.x = cptr<float>(xf);
  p.x_stride = xf.stride(0);
  p.w = w.weight.raw_data();
  p.w_dtype = w.weight.dtype();
  p.w_stride = w.weight.stride(0);
  if (w.is_fp8()) {
    TANDEM_CHECK(w.scale_inv.stride(1) == 1, "linear: scale_inv rows must be contiguous");
    p.scale_inv = cptr<float>(w.scale_inv);
    p.scale_stride = w.scale_inv.stride(0);
  }
  p.out = mptr<float>(of);
  p.out_stride = of.stride(0);
  p.m = x.size(0);
  p.n = w.out_features();
  p.k = w.in_features();
  p.batch = 1;
  launch_gemm_f32(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear");
  if (out.dtype() != DType::kF32) cast_rows_into(of, out, ctx);
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
