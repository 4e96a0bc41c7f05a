// Row movement kernels: gather (embedding, gather_rows), weighted scatter-add (the MoE
// un-permute), and the latent KV cache store. Memory-bound; one block per row, threads along
// the row, so every access is coalesced.
#include "ops/cuda/common.cuh"

#include <type_traits>

namespace tandem::ops::cuda {

namespace {

constexpr int kRowThreads = 256;

template <class ST, class OT>
__global__ void gather_rows_kernel(GatherRowsParams p) {
  const int64_t i = blockIdx.x;
  const int32_t row = p.index[i];
  OT* out = static_cast<OT*>(p.out) + i * p.out_stride;
  if (row < 0 || row >= p.src_rows) {
    if (threadIdx.x == 0) report_error(p.error, p.error_code, row, p.src_rows, i);
    for (int64_t d = threadIdx.x; d < p.width; d += blockDim.x) store_as(out + d, __int_as_float(0x7fc00000));
    return;
  }
  const ST* s = static_cast<const ST*>(p.src) + int64_t(row) * p.src_stride;
  for (int64_t d = threadIdx.x; d < p.width; d += blockDim.x) {
    if constexpr (std::is_same_v<ST, OT>) {
      out[d] = s[d];  // the bits, unchanged
    } else {
      store_as(out + d, to_f32(s[d]));
    }
  }
}

// Rows with the same target add with atomics: the sum is the CPU's up to the order of
// additions (exactly the CPU's when targets are distinct, as in one expert's tokens).
template <class ST>
__global__ void scatter_add_rows_kernel(ScatterAddRowsParams p) {
  const int64_t i = blockIdx.x;
  const int32_t row = p.index[i];
  if (row < 0 || row >= p.out_rows) {
    if (threadIdx.x == 0) report_error(p.error, kErrScatterIndex, row, p.out_rows, i);
    return;
  }
  const float w = p.weight[i];
  const ST* s = static_cast<const ST*>(p.src) + i * p.src_stride;
  float* o = p.out + int64_t(row) * p.out_stride;
  for (int64_t d = threadIdx.x; d < p.width; d += blockDim.x) atomicAdd(o + d, __fmul_rn(w, to_f32(s[d])));
}

__global__ void kv_store_kernel(KvStoreParams p) {
  const int64_t t = blockIdx.x;
  const int32_t slot = p.slots[t];
  if (slot < 0 || slot >= p.num_slots) {
    if (threadIdx.x == 0) report_error(p.error, kErrKvSlot, slot, p.num_slots, t);
    return;
  }
  const int64_t width = p.lora + p.rope;
  const int64_t base = int64_t(slot) * width;
  for (int64_t d = threadIdx.x; d < width; d += blockDim.x) {
    const float v = d < p.lora ? load_f32(p.latent, p.latent_dtype, t * p.latent_stride + d)
                               : load_f32(p.k_pe, p.k_pe_dtype, t * p.k_pe_stride + d - p.lora);
    if (p.cache_dtype == DType::kBF16) {
      static_cast<__nv_bfloat16*>(p.cache)[base + d] = __float2bfloat16_rn(v);
    } else {
      static_cast<float*>(p.cache)[base + d] = v;
    }
  }
}

__global__ void cast_rows_kernel(CastRowsParams p) {
  const int64_t r = blockIdx.x;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
    const float v = load_f32(p.src, p.src_dtype, r * p.src_stride + c);
    if (p.dst_dtype == DType::kBF16) {
      static_cast<__nv_bfloat16*>(p.dst)[r * p.dst_stride + c] = __float2bfloat16_rn(v);
    } else {
      static_cast<float*>(p.dst)[r * p.dst_stride + c] = v;
    }
  }
}

}  // namespace

void launch_cast_rows(const CastRowsParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return;
  cast_rows_kernel<<<unsigned(p.rows), kRowThreads, 0, stream>>>(p);
}

void launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  const unsigned grid = unsigned(p.n);
  const bool src_bf16 = p.src_dtype == DType::kBF16, out_bf16 = p.out_dtype == DType::kBF16;
  if (src_bf16 && out_bf16) {
    gather_rows_kernel<__nv_bfloat16, __nv_bfloat16><<<grid, kRowThreads, 0, stream>>>(p);
  } else if (src_bf16) {
    gather_rows_kernel<__nv_bfloat16, float><<<grid, kRowThreads, 0, stream>>>(p);
  } else if (out_bf16) {
    gather_rows_kernel<float, __nv_bfloat16><<<grid, kRowThreads, 0, stream>>>(p);
  } else {
    gather_rows_kernel<float, float><<<grid, kRowThreads, 0, stream>>>(p);
  }
}

void launch_scatter_add_rows(const ScatterAddRowsParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  if (p.src_dtype == DType::kBF16) {
    scatter_add_rows_kernel<__nv_bfloat16><<<unsigned(p.n), kRowThreads, 0, stream>>>(p);
  } else {
    scatter_add_rows_kernel<float><<<unsigned(p.n), kRowThreads, 0, stream>>>(p);
  }
}

void launch_kv_store(const KvStoreParams& p, cudaStream_t stream) {
  if (p.tokens == 0) return;
  kv_store_kernel<<<unsigned(p.tokens), kRowThreads, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
