// SwiGLU activation: out = silu(gate) * up over rows [gate | up]. Element-wise, grid-stride;
// f32 or bf16 in and out (template parameters), f32 arithmetic.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

template <class IT, class OT>
__global__ void silu_and_mul_kernel(SiluAndMulParams p) {
  const int64_t r = blockIdx.x;
  const IT* g = static_cast<const IT*>(p.gate_up) + r * p.in_stride;
  const IT* u = g + p.n;
  OT* o = static_cast<OT*>(p.out) + r * p.out_stride;
  for (int64_t i = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; i < p.n;
       i += int64_t(gridDim.y) * blockDim.x) {
    const float gi = to_f32(g[i]);
    // The CPU's order: (g / (1 + exp(-g))) * u, with IEEE division.
    store_as(o + i, __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, expf(-gi))), to_f32(u[i])));
  }
}

template <class IT>
void launch_in(const SiluAndMulParams& p, dim3 grid, cudaStream_t stream) {
  if (p.out_dtype == DType::kBF16) {
    silu_and_mul_kernel<IT, __nv_bfloat16><<<grid, 256, 0, stream>>>(p);
  } else {
    silu_and_mul_kernel<IT, float><<<grid, 256, 0, stream>>>(p);
  }
}

}  // namespace

void launch_silu_and_mul(const SiluAndMulParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.n == 0) return;
  const unsigned blocks = std::min<unsigned>(ceil_div(p.n, 256), 64);
  const dim3 grid(unsigned(p.rows), blocks);
  if (p.in_dtype == DType::kBF16) {
    launch_in<__nv_bfloat16>(p, grid, stream);
  } else {
    launch_in<float>(p, grid, stream);
  }
}

}  // namespace tandem::ops::cuda
