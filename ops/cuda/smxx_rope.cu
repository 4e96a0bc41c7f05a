// Rotary embedding in place, one thread per rotated pair. cos/sin are taken in double of the
// f32 angle, as the CPU reference does, so both agree to the last bit in almost every case.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

template <class T>
__global__ void rope_kernel(RopeParams p) {
  const int64_t half = p.dim / 2;
  const int64_t pairs = p.heads * half;
  const int64_t t = blockIdx.x;
  for (int64_t j = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; j < pairs;
       j += int64_t(gridDim.y) * blockDim.x) {
    const int64_t h = j / half, i = j % half;
    const float angle = float(p.positions[t]) * p.inv_freq[i];
    const float c = float(cos(double(angle))) * p.attention_factor;
    const float s = float(sin(double(angle))) * p.attention_factor;
    T* v = static_cast<T*>(p.x) + t * p.stride_t + h * p.stride_h;
    const int64_t a = p.interleave ? 2 * i : i, b = p.interleave ? 2 * i + 1 : i + half;
    const float x0 = to_f32(v[a]), x1 = to_f32(v[b]);
    store_as(v + a, __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
    store_as(v + b, __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s)));
  }
}

}  // namespace

void launch_rope(const RopeParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.heads == 0) return;
  const int64_t pairs = p.heads * (p.dim / 2);
  const unsigned threads = pairs >= 256 ? 256 : unsigned((pairs + 31) / 32 * 32);
  const unsigned blocks = std::min<unsigned>(ceil_div(pairs, threads), 64);
  const dim3 grid(unsigned(p.tokens), blocks);
  if (p.x_dtype == DType::kBF16) {
    rope_kernel<__nv_bfloat16><<<grid, threads, 0, stream>>>(p);
  } else {
    rope_kernel<float><<<grid, threads, 0, stream>>>(p);
  }
}

}  // namespace tandem::ops::cuda
