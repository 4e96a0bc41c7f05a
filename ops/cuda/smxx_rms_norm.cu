// RMSNorm and the fused residual add + RMSNorm: one block per row, f32 sum of squares.
// x and out are f32 or bf16 (template parameters), the residual f32. out may alias x: each
// thread reads its elements before the block barrier and writes the same elements after it.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

constexpr int kNormThreads = 256;

template <class XT, class OT>
__global__ void rms_norm_kernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const XT* x = static_cast<const XT*>(p.x) + r * p.x_stride;
  float* res = p.residual ? p.residual + r * p.residual_stride : nullptr;
  OT* out = static_cast<OT*>(p.out) + r * p.out_stride;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    float v = to_f32(x[i]);
    if (res) {
      v = res[i] + v;
      res[i] = v;
    }
    ss = fmaf(v, v, ss);
  }
  const float ms = __fdiv_rn(block_sum(ss, scratch), float(p.n));
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(ms + p.eps));
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    const float v = res ? res[i] : to_f32(x[i]);
    store_as(out + i, load_f32(p.weight, p.weight_dtype, i) * (v * inv));
  }
}

template <class XT>
void launch_x(const RmsNormParams& p, cudaStream_t stream) {
  if (p.out_dtype == DType::kBF16) {
    rms_norm_kernel<XT, __nv_bfloat16><<<unsigned(p.rows), kNormThreads, 0, stream>>>(p);
  } else {
    rms_norm_kernel<XT, float><<<unsigned(p.rows), kNormThreads, 0, stream>>>(p);
  }
}

}  // namespace

void launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  if (p.x_dtype == DType::kBF16) {
    launch_x<__nv_bfloat16>(p, stream);
  } else {
    launch_x<float>(p, stream);
  }
}

}  // namespace tandem::ops::cuda
