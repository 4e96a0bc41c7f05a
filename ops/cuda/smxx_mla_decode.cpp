// Host launcher of smxx_mla_decode.cu: sizes the split workspace from the page table's
// capacity (the sequence lengths stay on the device; no synchronization).
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

#include <algorithm>

namespace tandem::ops::cuda {

// CTAs of the tensor-core kernel that share one multiprocessor (sm90_mla_decode.cu).
int mla_decode_mma_ctas_per_sm(const MlaDecodeParams& p);

namespace {
constexpr int64_t kMaxLatentDim = 1024;  // 8 values per thread of 128 (smxx_attention.cuh)
constexpr int64_t kMinKeysPerSplit = 256;
constexpr int64_t kMaxMmaSplits = 32;

// Splits for the tensor-core kernel: enough CTAs to fill every multiprocessor once (one CTA per
// SM for the kernels of 170-230 KB of shared memory, two for the 84 KB one), never under 256
// keys per split. Sized from the page table's capacity, so no synchronization on the lengths.
int mma_num_splits(const MlaDecodeParams& p, int device) {
  const int64_t per_cta = mla_decode_mma_heads_per_cta(p);
  const int64_t ctas = p.batch * ((p.heads + per_cta - 1) / per_cta);
  const int64_t by_len = (p.max_pages * p.page_size + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  const int64_t want =
      sm_count(device) * mla_decode_mma_ctas_per_sm(p) / std::max<int64_t>(1, ctas);
  return int(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, std::min(by_len, kMaxMmaSplits))));
}
}  // namespace

void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent) {
  const char* op = "mla_decode_attention";
  TANDEM_CHECK(q_latent.size(2) <= kMaxLatentDim, "{}: kv_lora_rank {} > {}", op,
               q_latent.size(2), kMaxLatentDim);
  TANDEM_CHECK(cache.is_contiguous(), "{}: cache must be contiguous", op);
  TANDEM_CHECK(page_table.is_contiguous(), "{}: page_table must be contiguous", op);
  OpContext ctx(out_latent);
  MlaDecodeParams p{};
  p.q_latent = cptr<float>(q_latent);
  p.ql_stride_b = q_latent.stride(0);
  p.ql_stride_h = q_latent.stride(1);
  p.q_pe = cptr<float>(q_pe);
  p.qp_stride_b = q_pe.stride(0);
  p.qp_stride_h = q_pe.stride(1);
  p.cache = cache.raw_data();
  p.cache_dtype = cache.dtype();
  p.num_slots = cache.size(0);
  p.page_table = cptr<int32_t>(page_table);
  p.max_pages = page_table.size(1);
  p.seq_lens = cptr<int32_t>(seq_lens);
  p.out = mptr<float>(out_latent);
  p.out_stride_b = out_latent.stride(0);
  p.out_stride_h = out_latent.stride(1);
  p.batch = q_latent.size(0);
  p.heads = q_latent.size(1);
  p.lora = q_latent.size(2);
  p.rope = q_pe.size(2);
  p.page_size = page_size;
  p.scale = scale;
  TANDEM_CHECK(p.batch * p.heads < (int64_t(1) << 31), "{}: batch * heads too large", op);
  p.error = ctx.error;
  if (mla_decode_mma_supported(p)) {
    TANDEM_CHECK(p.batch < 65536, "{}: batch {} > 65535", op, p.batch);
    p.num_splits = mma_num_splits(p, ctx.device);
    Tensor workspace;
    if (p.num_splits > 1) {
      workspace = Tensor::empty({p.batch * p.heads * p.num_splits * (p.lora + 2)}, DType::kF32,
                                out_latent.device());
      p.workspace = mptr<float>(workspace);
    }
    launch_mla_decode_mma(p, ctx.stream);
    TANDEM_CUDA_LAUNCH_CHECK(op);
    return;
  }
  p.num_splits = mla_decode_num_splits(page_table.size(1) * page_size);
  Tensor workspace = Tensor::empty({p.batch * p.heads * p.num_splits * (p.lora + 2)}, DType::kF32,
                                   out_latent.device());
  p.workspace = mptr<float>(workspace);
  launch_mla_decode(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK(op);
}

}  // namespace tandem::ops::cuda
