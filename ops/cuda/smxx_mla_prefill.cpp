// Host launcher of smxx_mla_prefill.cu: bf16 inputs of DeepSeek's head dims go to the
// tensor-core kernel (or, opt-in, the wgmma kernel of sm90_mla_prefill.cu), everything else
// (f32, other dims, unaligned views) to the SIMT kernel.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {
constexpr int64_t kMaxValueDim = 1024;  // 8 values per thread of 128 (smxx_attention.cuh)
}

void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out) {
  const char* op = "mla_prefill_attention";
  MlaPrefillParams p{};
  p.heads = q.size(1);
  p.rope = k_pe.size(1);
  p.nope = q.size(2) - p.rope;
  p.v = kv.size(2) - p.nope;
  TANDEM_CHECK(cu_q.size(0) >= 2, "{}: cu_q needs at least 2 entries", op);
  TANDEM_CHECK(p.heads < 65536, "{}: {} heads > 65535", op, p.heads);
  OpContext ctx(out);
  p.q = q.raw_data();
  p.kv = kv.raw_data();
  p.k_pe = k_pe.raw_data();
  p.k_pe_stride = k_pe.stride(0);
  p.in_dtype = q.dtype();
  p.cu_q = cptr<int32_t>(cu_q);
  p.cu_kv = cptr<int32_t>(cu_kv);
  p.out = out.raw_data();
  p.out_dtype = out.dtype();
  p.tokens = q.size(0);
  p.kv_rows = kv.size(0);
  p.batch = cu_q.size(0) - 1;
  p.scale = scale;
  p.error = ctx.error;
  if (mla_prefill_wgmma_enabled(p) && launch_mla_prefill_wgmma(p, ctx.stream)) {
    // queued
  } else if (mla_prefill_mma_supported(p)) {
    launch_mla_prefill_mma(p, ctx.stream);
  } else {
    TANDEM_CHECK(p.v <= kMaxValueDim, "{}: v_head_dim {} > {}", op, p.v, kMaxValueDim);
    launch_mla_prefill(p, ctx.stream);
  }
  TANDEM_CUDA_LAUNCH_CHECK(op);
}

}  // namespace tandem::ops::cuda
