// SwiGLU activation: out = silu(gate) * up over rows [gate | up]. Element-wise, grid-stride.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

__global__ void silu_and_mul_kernel(SiluAndMulParams p) {
  const int64_t r = blockIdx.x;
  const float* g = p.gate_up + r * p.in_stride;
  const float* u = g + p.n;
  float* o = p.out + r * p.out_stride;
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < p.n;
       i += int64_t(gridDim.y) * blockDim.x) {
    const float gi = g[i];
    // The CPU's order: (g / (1 + exp(-g))) * u, with IEEE division.
    o[i] = __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, expf(-gi))), u[i]);
  }
}

}  // namespace

void launch_silu_and_mul(const SiluAndMulParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  const unsigned blocks = std::min<unsigned>(ceil_div(p.n, 256), 64);
  silu_and_mul_kernel<<<dim3(unsigned(p.rows), blocks), 256, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
