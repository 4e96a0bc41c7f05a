#include "runtime/model_runner.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "core/log.h"

#include "runtime/cuda_graph_runner.h"

#ifdef TANDEM_WITH_CUDA
#include "ops/cuda/device.h"
#endif

namespace tandem::runtime {

namespace {
bool use_graphs(Device device, int32_t max_bs) {
#ifdef TANDEM_WITH_CUDA
  return device.is_cuda() && max_bs > 0;
#else
  (void)device;
  (void)max_bs;
  return false;
#endif
}
}  // namespace

DeepseekRunner::DeepseekRunner(DeepseekV3Model& model, int32_t num_pages, int32_t page_size,
                               DType kv_dtype, Device device, int32_t cuda_graph_max_bs)
    : model_(model),
      cache_(KvCache::create(model.config(), num_pages + (use_graphs(device, cuda_graph_max_bs) ? 1 : 0),
                             page_size, kv_dtype, device)),
      device_(device),
      num_pages_(num_pages) {
#ifdef TANDEM_WITH_CUDA
  if (use_graphs(device, cuda_graph_max_bs)) {
    DecodeGraphOptions o;
    o.max_batch = cuda_graph_max_bs;
    const int64_t context_pages =
        (model.config().max_position_embeddings + page_size - 1) / page_size;
    o.max_pages = std::max<int64_t>(1, std::min<int64_t>(num_pages, context_pages));
    o.scratch_page = num_pages;
    graphs_ = std::make_unique<DecodeGraphs>(model, cache_, device, o);
  }
#endif
}

DeepseekRunner::~DeepseekRunner() {
  const auto line = [](const char* what, const StepTimes& t) {
    if (t.steps > 0) {
      TANDEM_LOG_INFO("runner: {} {} steps, {:.3f} ms per step", t.steps, what,
                      t.seconds * 1e3 / double(t.steps));
    }
  };
  line("eager decode", eager_decode_);
  line("CUDA-graph decode", graph_decode_);
  line("prefill/mixed", extend_);
}

Tensor DeepseekRunner::run(const Decision& decision, const Scheduler& scheduler) {
  TANDEM_CHECK(!decision.empty(), "DeepseekRunner: empty decision");
  const auto start = std::chrono::steady_clock::now();
  const auto timed = [&](StepTimes& t, Tensor logits) {
    ++t.steps;
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return logits;
  };
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
#ifdef TANDEM_WITH_CUDA
  if (graphs_ && mode == ForwardMode::kDecode) {
    size_t pages = 0;
    for (const SequenceStep& s : steps_) pages = std::max(pages, s.pages.size());
    if (graphs_->fits(int64_t(steps_.size()), int64_t(pages))) {
      Tensor on_device = graphs_->run(steps_);
      static const bool profile = [] {
        const char* v = std::getenv("TANDEM_GRAPH_PROFILE");
        return v && v[0] == '1';
      }();
      const auto t_copy = std::chrono::steady_clock::now();
      Tensor host = to_host(on_device);
      if (profile) {
        TANDEM_LOG_INFO("graph step: logits to host {:.3f} ms, step {:.3f} ms",
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_copy).count() * 1e3,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * 1e3);
      }
      return timed(graph_decode_, host);
    }
  }
#endif
  Tensor logits = model_.forward(ForwardBatch::build(mode, steps_, ps, device_), cache_);
  return timed(mode == ForwardMode::kDecode ? eager_decode_ : extend_,
               logits.device().is_cpu() ? logits : to_host(logits));
}

// Logits of a large batch are tens of MB (vocab 129k x 4 bytes per row): copied into pageable
// memory they ran at about 1.6 GB/s on the H200 machine, longer than the decode step itself.
Tensor DeepseekRunner::to_host(const Tensor& logits) {
#ifdef TANDEM_WITH_CUDA
  if (logits.device().is_cuda() && logits.is_contiguous()) {
    const size_t bytes = logits.nbytes();
    if (bytes > pinned_bytes_) {
      pinned_bytes_ = std::max(bytes, pinned_bytes_ * 2);
      pinned_ = std::shared_ptr<void>(ops::cuda::pinned_host_alloc(pinned_bytes_),
                                      [](void* p) { ops::cuda::pinned_host_free(p); });
    }
    Tensor host = Tensor::from_blob(pinned_.get(), logits.shape(), logits.dtype(), Device::cpu(),
                                    pinned_);
    host.copy_from(logits);
    return host;
  }
#endif
  return logits.to(Device::cpu());
}

KvMemory DeepseekRunner::kv_memory() {
  KvMemory m;
  m.page_size = int32_t(cache_.page_size);
  m.num_pages = num_pages_;
  for (Tensor& t : cache_.layers) {
    m.layers.push_back({t.raw_data(), t.nbytes(), t.device()});
    m.bytes_per_token = t.nbytes() / size_t(cache_.num_pages * cache_.page_size);
  }
  return m;
}

}  // namespace tandem::runtime
