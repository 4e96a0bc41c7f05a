#include "runtime/model_runner.h"

namespace tandem::runtime {

DeepseekRunner::DeepseekRunner(DeepseekV3Model& model, int32_t num_pages, int32_t page_size,
                               DType kv_dtype, Device device)
    : model_(model),
      cache_(KvCache::create(model.config(), num_pages, page_size, kv_dtype, device)),
      device_(device) {}

Tensor DeepseekRunner::run(const Decision& decision, const Scheduler& scheduler) {
  TANDEM_CHECK(!decision.empty(), "DeepseekRunner: empty decision");
  const int32_t ps = int32_t(cache_.page_size);
  steps_.resize(decision.seqs.size());
  for (size_t i = 0; i < decision.seqs.size(); ++i) {
    const ScheduledSeq& s = decision.seqs[i];
    const auto tokens = scheduler.tokens(s.id);
    const auto pages = scheduler.pages(s.id);
    const size_t used_pages = size_t((s.cached_len + s.num_tokens + ps - 1) / ps);
    SequenceStep& step = steps_[i];
    step.new_tokens.assign(tokens.begin() + s.cached_len,
                           tokens.begin() + s.cached_len + s.num_tokens);
    step.cached_len = s.cached_len;
    step.pages.assign(pages.begin(), pages.begin() + long(used_pages));
    step.need_all_logits = false;
  }
  // A pure decode step takes the absorbed-MLA decode path; anything else (prefill chunks,
  // mixed steps, resumed requests) one extend batch.
  const ForwardMode mode = decision.decode_only ? ForwardMode::kDecode : ForwardMode::kExtend;
  Tensor logits = model_.forward(ForwardBatch::build(mode, steps_, ps, device_), cache_);
  return logits.device().is_cpu() ? logits : logits.to(Device::cpu());
}

KvMemory DeepseekRunner::kv_memory() {
  KvMemory m;
  m.page_size = int32_t(cache_.page_size);
  m.num_pages = int32_t(cache_.num_pages);
  for (Tensor& t : cache_.layers) {
    m.layers.push_back({t.raw_data(), t.nbytes(), t.device()});
    m.bytes_per_token = t.nbytes() / size_t(cache_.num_pages * cache_.page_size);
  }
  return m;
}

}  // namespace tandem::runtime
