// Host launcher of smxx_mla_prefill.cu.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {
constexpr int64_t kMaxValueDim = 1024;  // 8 values per thread of 128 (smxx_attention.cuh)
}

void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out) {
  MlaPrefillParams p{};
  p.heads = q.size(1);
  p.rope = k_pe.size(1);
  p.nope = q.size(2) - p.rope;
  p.v = kv.size(2) - p.nope;
  TANDEM_CHECK(p.v <= kMaxValueDim, "mla_prefill_attention: v_head_dim {} > {}", p.v, kMaxValueDim);
  TANDEM_CHECK(cu_q.size(0) >= 2, "mla_prefill_attention: cu_q needs at least 2 entries");
  OpContext ctx(out);
  p.q = cptr<float>(q);
  p.kv = cptr<float>(kv);
  p.k_pe = cptr<float>(k_pe);
  p.k_pe_stride = k_pe.stride(0);
  p.cu_q = cptr<int32_t>(cu_q);
  p.cu_kv = cptr<int32_t>(cu_kv);
  p.out = mptr<float>(out);
  p.tokens = q.size(0);
  p.kv_rows = kv.size(0);
  p.batch = cu_q.size(0) - 1;
  p.scale = scale;
  p.error = ctx.error;
  launch_mla_prefill(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("mla_prefill_attention");
}

}  // namespace tandem::ops::cuda
