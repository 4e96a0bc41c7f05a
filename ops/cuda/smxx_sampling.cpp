// Host launcher of smxx_sampling.cu (ops::sample_tokens on CUDA).
#include "ops/cuda/smxx_sampling.h"

#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs) {
  TANDEM_CHECK(logits.stride(1) == 1, "sample_tokens: logits rows must be contiguous, got {}",
               logits.describe());
  OpContext ctx(logits);
  SampleTokensParams p{};
  p.logits = cptr<float>(logits);
  p.rows = logits.size(0);
  p.stride = logits.stride(0);
  p.vocab = int32_t(logits.size(1));
  p.temperature = cptr<float>(rows.temperature);
  p.top_k = cptr<int32_t>(rows.top_k);
  p.top_p = cptr<float>(rows.top_p);
  p.min_p = cptr<float>(rows.min_p);
  p.seed = cptr<int64_t>(rows.seed);
  p.draw = cptr<int64_t>(rows.draw);
  p.tokens = mptr<int32_t>(tokens);
  p.logprobs = mptr<float>(logprobs);
  launch_sample_tokens(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("sample_tokens");
}

void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values) {
  OpContext ctx(logits);
  TopLogprobsParams p{};
  p.logits = cptr<float>(logits);
  p.rows = logits.size(0);
  p.stride = logits.stride(0);
  p.vocab = int32_t(logits.size(1));
  p.k = int32_t(ids.size(1));
  p.ids = mptr<int32_t>(ids);
  p.values = mptr<float>(values);
  TANDEM_CHECK(p.rows <= INT32_MAX, "top_logprobs: {} rows", p.rows);
  launch_top_logprobs(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("top_logprobs");
}

void apply_penalties(Tensor& logits, const PenaltyRows& rows) {
  OpContext ctx(logits);
  ApplyPenaltiesParams p{};
  p.logits = mptr<float>(logits);
  p.rows = logits.size(0);
  p.stride = logits.stride(0);
  p.vocab = int32_t(logits.size(1));
  p.offsets = cptr<int32_t>(rows.offsets);
  p.tokens = cptr<int32_t>(rows.tokens);
  p.counts = cptr<int32_t>(rows.counts);
  p.repetition = cptr<float>(rows.repetition);
  p.frequency = cptr<float>(rows.frequency);
  p.presence = cptr<float>(rows.presence);
  p.error = ctx.error;
  TANDEM_CHECK(p.rows <= INT32_MAX, "apply_penalties: {} rows", p.rows);
  launch_apply_penalties(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("apply_penalties");
}

}  // namespace tandem::ops::cuda
