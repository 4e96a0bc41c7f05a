#include "runtime/model_runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>

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
  // Per kind of step and batch size: wall time of run() and, on CUDA, GPU time of the forward
  // (kernels back to back on the stream, from CUDA events); benchmarks read these lines.
  static const char* const kKinds[] = {"eager decode", "CUDA-graph decode", "prefill/mixed"};
  for (const auto& [key, st] : stats_) {
    const double n = double(st.steps);
    if (device_.is_cpu()) {
      TANDEM_LOG_INFO("runner: {} batch {}: {} steps, wall {:.3f} ms/step, host before the step "
                      "{:.3f} ms/step", kKinds[key.first], key.second, st.steps,
                      st.wall_s * 1e3 / n, st.gap_s * 1e3 / n);
      continue;
    }
    TANDEM_LOG_INFO("runner: {} batch {}: {} steps, wall {:.3f} ms/step, GPU {:.3f} ms/step, "
                    "host before the step {:.3f} ms/step",
                    kKinds[key.first], key.second, st.steps, st.wall_s * 1e3 / n, st.gpu_ms / n,
                    st.gap_s * 1e3 / n);
  }
}

Tensor DeepseekRunner::run(const Decision& decision, const Scheduler& scheduler) {
  TANDEM_CHECK(!decision.empty(), "DeepseekRunner: empty decision");
  const auto start = std::chrono::steady_clock::now();
  // The engine's host work since the previous step (sampling, stop checks, streams, scheduling).
  const double gap_s = last_end_ ? std::chrono::duration<double>(start - *last_end_).count() : 0.0;
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
  Tensor out;
  if (decision.decode_only) {
    out = forward_steps(steps_, ForwardMode::kDecode, gap_s);
  } else {
    // A mixed step: sequences computing one token after a cached prefix take the absorbed
    // decode path (as in a pure decode step), the others one extend batch. One extend batch
    // for all would expand every decoding sequence's whole cache to per-head keys and values:
    // 256 decoding 2k-token requests beside one prefill chunk asked for 60 GB on full V3.
    std::vector<size_t> dec, ext;
    for (size_t i = 0; i < steps_.size(); ++i) {
      (steps_[i].new_tokens.size() == 1 && steps_[i].cached_len > 0 ? dec : ext).push_back(i);
    }
    if (dec.empty() || ext.empty()) {
      out = forward_steps(steps_, dec.empty() ? ForwardMode::kExtend : ForwardMode::kDecode, gap_s);
    } else {
      const auto pick = [&](const std::vector<size_t>& idx) {
        std::vector<SequenceStep> v;
        for (size_t i : idx) v.push_back(steps_[i]);
        return v;
      };
      const Tensor d = forward_steps(pick(dec), ForwardMode::kDecode, gap_s).clone();
      const Tensor e = forward_steps(pick(ext), ForwardMode::kExtend, 0.0);
      const int64_t vocab = d.size(1);
      out = Tensor::empty({int64_t(steps_.size()), vocab}, DType::kF32);
      const auto place = [&](const Tensor& src, const std::vector<size_t>& idx) {
        for (size_t r = 0; r < idx.size(); ++r) {
          std::memcpy(out.data<float>() + int64_t(idx[r]) * vocab,
                      src.data<float>() + int64_t(r) * vocab, size_t(vocab) * sizeof(float));
        }
      };
      place(d, dec);
      place(e, ext);
    }
  }
  last_end_ = std::chrono::steady_clock::now();
  return out;
}

Tensor DeepseekRunner::forward_steps(const std::vector<SequenceStep>& steps, ForwardMode mode,
                                     double gap_s) {
  const auto start = std::chrono::steady_clock::now();
  const int32_t ps = int32_t(cache_.page_size);
  int kind = mode == ForwardMode::kDecode ? 0 : 2;
  Tensor logits;
#ifdef TANDEM_WITH_CUDA
  if (device_.is_cuda() && !timer_) timer_ = std::make_shared<ops::cuda::StreamTimer>(device_.index);
  if (graphs_ && mode == ForwardMode::kDecode) {
    size_t pages = 0;
    for (const SequenceStep& s : steps) pages = std::max(pages, s.pages.size());
    if (graphs_->fits(int64_t(steps.size()), int64_t(pages))) {
      kind = 1;
      graphs_->fill_inputs(steps);
      timer_->start();
      logits = graphs_->replay(int64_t(steps.size()));
      timer_->stop();
    }
  }
  if (!logits.defined() && device_.is_cuda()) {
    const ForwardBatch batch = ForwardBatch::build(mode, steps, ps, device_);
    timer_->start();
    logits = model_.forward(batch, cache_);
    timer_->stop();
  }
#endif
  if (!logits.defined()) logits = model_.forward(ForwardBatch::build(mode, steps, ps, device_), cache_);
  Tensor host = logits.device().is_cpu() ? logits : to_host(logits);
  StepStats& st = stats_[{kind, int64_t(steps.size())}];
  ++st.steps;
  st.wall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  st.gap_s += gap_s;
#ifdef TANDEM_WITH_CUDA
  if (device_.is_cuda()) st.gpu_ms += timer_->elapsed_ms();
#endif
  return host;
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
