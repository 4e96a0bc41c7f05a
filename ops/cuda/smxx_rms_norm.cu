// RMSNorm and the fused residual add + RMSNorm: one block per row, f32 sum of squares.
// out may alias x: each thread reads its elements before the block barrier and writes the same
// elements after it.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

constexpr int kNormThreads = 256;

__global__ void rms_norm_kernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * p.x_stride;
  float* res = p.residual ? p.residual + r * p.residual_stride : nullptr;
  float* out = p.out + r * p.out_stride;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    float v = x[i];
    if (res) {
      v = res[i] + v;
      res[i] = v;
    }
    ss = fmaf(v, v, ss);
  }
  const float ms = __fdiv_rn(block_sum(ss, scratch), float(p.n));
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(ms + p.eps));
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) {
    const float v = res ? res[i] : x[i];
    out[i] = load_f32(p.weight, p.weight_dtype, i) * (v * inv);
  }
}

}  // namespace

void launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  rms_norm_kernel<<<unsigned(p.rows), kNormThreads, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
