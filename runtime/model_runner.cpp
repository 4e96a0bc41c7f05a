#include "runtime/model_runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/log.h"
#include "ops/ops.h"

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
  if (device_sampled_ > 0) {
    TANDEM_LOG_INFO("runner: {} rows sampled on the device, {} of them with penalties",
                    device_sampled_, penalized_rows_);
  }
}

StepOutput StepOutput::unfilled(size_t n) {
  StepOutput out;
  out.host_row.assign(n, -1);
  out.token.assign(n, -1);
  out.logprob.assign(n, 0.0f);
  out.top.assign(n, {});
  return out;
}

StepOutput StepOutput::host_rows(Tensor logits) {
  const auto n = size_t(logits.size(0));
  StepOutput out = unfilled(n);
  out.logits = std::move(logits);
  for (size_t i = 0; i < n; ++i) out.host_row[i] = int32_t(i);
  return out;
}

Tensor DeepseekRunner::run(const Decision& decision, const Scheduler& scheduler) {
  return execute(decision, scheduler, {}, /*all_rows=*/true).logits;
}

StepOutput DeepseekRunner::step(const Decision& decision, const Scheduler& scheduler,
                                std::span<const RowSampling> sampling) {
  TANDEM_CHECK(sampling.empty() || sampling.size() == decision.seqs.size(),
               "DeepseekRunner: {} sampling entries for {} sequences", sampling.size(),
               decision.seqs.size());
  // The CPU backend's logits are host memory already: every row as it is (today's path).
  return execute(decision, scheduler, sampling, /*all_rows=*/device_.is_cpu());
}

StepOutput DeepseekRunner::execute(const Decision& decision, const Scheduler& scheduler,
                                   std::span<const RowSampling> sampling, bool all_rows) {
  TANDEM_CHECK(!decision.empty(), "DeepseekRunner: empty decision");
  const auto start = std::chrono::steady_clock::now();
  // The engine's host work since the previous step (sampling, stop checks, streams, scheduling).
  const double gap_s = last_end_ ? std::chrono::duration<double>(start - *last_end_).count() : 0.0;
  const int32_t ps = int32_t(cache_.page_size);
  const size_t n = decision.seqs.size();
  steps_.resize(n);
  for (size_t i = 0; i < n; ++i) {
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
  StepOutput out = StepOutput::unfilled(n);
  std::vector<Tensor> parts;
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  if (decision.decode_only) {
    forward_part(all, ForwardMode::kDecode, gap_s, decision, sampling, all_rows, false, out, parts);
  } else {
    // A mixed step: sequences computing one token after a cached prefix take the absorbed
    // decode path (as in a pure decode step), the others one extend batch. One extend batch
    // for all would expand every decoding sequence's whole cache to per-head keys and values:
    // 256 decoding 2k-token requests beside one prefill chunk asked for 60 GB on full V3.
    std::vector<size_t> dec, ext;
    for (size_t i = 0; i < n; ++i) {
      (steps_[i].new_tokens.size() == 1 && steps_[i].cached_len > 0 ? dec : ext).push_back(i);
    }
    if (dec.empty() || ext.empty()) {
      forward_part(all, dec.empty() ? ForwardMode::kExtend : ForwardMode::kDecode, gap_s, decision,
                   sampling, all_rows, false, out, parts);
    } else {
      forward_part(dec, ForwardMode::kDecode, gap_s, decision, sampling, all_rows, true, out, parts);
      forward_part(ext, ForwardMode::kExtend, 0.0, decision, sampling, all_rows, false, out, parts);
    }
  }
  // The host rows of one or two forwards, in the order forward_part numbered them.
  if (parts.size() == 1) {
    out.logits = parts[0];
  } else if (parts.size() > 1) {
    int64_t rows = 0;
    for (const Tensor& t : parts) rows += t.size(0);
    const int64_t vocab = parts[0].size(1);
    out.logits = Tensor::empty({rows, vocab}, DType::kF32);
    int64_t at = 0;
    for (const Tensor& t : parts) {
      std::memcpy(out.logits.data<float>() + at * vocab, t.data<float>(), t.nbytes());
      at += t.size(0);
    }
  }
  last_end_ = std::chrono::steady_clock::now();
  return out;
}

void DeepseekRunner::forward_part(const std::vector<size_t>& idx, ForwardMode mode, double gap_s,
                                  const Decision& decision, std::span<const RowSampling> sampling,
                                  bool all_rows, bool keep, StepOutput& out,
                                  std::vector<Tensor>& parts) {
  const auto start = std::chrono::steady_clock::now();
  const int32_t ps = int32_t(cache_.page_size);
  std::vector<SequenceStep> picked;
  if (idx.size() != steps_.size()) {
    for (const size_t i : idx) picked.push_back(steps_[i]);
  }
  const std::vector<SequenceStep>& steps = picked.empty() ? steps_ : picked;
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

  // Rows r of this forward (decision row idx[r]): sampled here, or their logits to the host.
  std::vector<int32_t> dev_rows, host_rows;
  for (size_t r = 0; r < idx.size(); ++r) {
    const size_t i = idx[r];
    const bool samples = decision.seqs[i].sample;
    if (!all_rows && logits.device().is_cuda() && samples && !sampling.empty() &&
        sampling[i].device) {
      dev_rows.push_back(int32_t(r));
    } else if (all_rows || samples) {
      host_rows.push_back(int32_t(r));
    }
  }
  if (!dev_rows.empty()) sample_on_device(logits, idx, dev_rows, sampling, out);
  if (!host_rows.empty()) {
    int32_t base = 0;
    for (const Tensor& t : parts) base += int32_t(t.size(0));
    Tensor rows = logits;
    if (host_rows.size() != idx.size()) {  // only the rows the host samples cross the bus
      Tensor index = Tensor::from_vector(host_rows, {int64_t(host_rows.size())}).to(logits.device());
      rows = Tensor::empty({int64_t(host_rows.size()), logits.size(1)}, DType::kF32, logits.device());
      ops::gather_rows(logits, index, rows);
    }
    Tensor host = rows.device().is_cpu() ? rows : to_host(rows);
    // A later forward of this step reuses the pinned buffer (and the CPU model its logits).
    parts.push_back(keep ? host.clone() : host);
    for (size_t j = 0; j < host_rows.size(); ++j) {
      out.host_row[idx[size_t(host_rows[j])]] = base + int32_t(j);
    }
  }
  StepStats& st = stats_[{kind, int64_t(steps.size())}];
  ++st.steps;
  st.wall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  st.gap_s += gap_s;
#ifdef TANDEM_WITH_CUDA
  if (device_.is_cuda()) st.gpu_ms += timer_->elapsed_ms();
#endif
}

// ops::sample_tokens over this forward's rows; rows the host samples get greedy parameters
// (a single pass) and are ignored. The parameters go up in one copy and the tokens and
// logprobs (8 bytes a row) come back in one: one buffer, [R] each of temperature, top_k,
// top_p, min_p (4 bytes), seed, draw (8 bytes), then the outputs, tokens and logprobs.
void DeepseekRunner::sample_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                                      const std::vector<int32_t>& dev_rows,
                                      std::span<const RowSampling> sampling, StepOutput& out) {
  const auto n = int64_t(idx.size());
  const int64_t in_bytes = 32 * n, bytes = 40 * n;
  std::vector<uint8_t>& host = sample_staging_;
  host.assign(size_t(bytes), 0);
  const auto at = [&](int64_t offset, auto value_type) {
    return reinterpret_cast<decltype(value_type)*>(host.data() + offset);
  };
  float* temperature = at(0, float{});
  int32_t* top_k = at(4 * n, int32_t{});
  float* top_p = at(8 * n, float{});
  float* min_p = at(12 * n, float{});
  int64_t* seed = at(16 * n, int64_t{});
  int64_t* draw = at(24 * n, int64_t{});
  for (int64_t r = 0; r < n; ++r) top_p[r] = 1.0f;  // others 0: greedy, off
  for (const int32_t r : dev_rows) {
    const RowSampling& s = sampling[idx[size_t(r)]];
    temperature[r] = s.params.temperature;
    top_k[r] = s.params.top_k;
    top_p[r] = s.params.top_p;
    min_p[r] = s.params.min_p;
    seed[r] = int64_t(s.seed);
    draw[r] = int64_t(s.draw);
  }
  const Device d = logits.device();
  apply_penalties_on_device(logits, idx, dev_rows, sampling);
  if (!sample_buffer_.defined() || sample_buffer_.numel() < bytes) {
    sample_buffer_ = Tensor::empty({std::max<int64_t>(bytes, 40 * 256)}, DType::kU8, d);
  }
  auto* base = static_cast<uint8_t*>(sample_buffer_.raw_data());
  // Views into the runner's buffer, which outlives the step (null owner).
  const auto view = [&](int64_t offset, DType dtype) {
    return Tensor::from_blob(base + offset, {n}, dtype, d, nullptr);
  };
  sample_buffer_.slice(0, 0, in_bytes)
      .copy_from(Tensor::from_blob(host.data(), {in_bytes}, DType::kU8, Device::cpu(), nullptr));
  ops::SamplingRows rows;
  rows.temperature = view(0, DType::kF32);
  rows.top_k = view(4 * n, DType::kI32);
  rows.top_p = view(8 * n, DType::kF32);
  rows.min_p = view(12 * n, DType::kF32);
  rows.seed = view(16 * n, DType::kI64);
  rows.draw = view(24 * n, DType::kI64);
  Tensor tokens = view(in_bytes, DType::kI32), logprobs = view(in_bytes + 4 * n, DType::kF32);
  ops::sample_tokens(logits, rows, tokens, logprobs);
  Tensor::from_blob(host.data() + in_bytes, {8 * n}, DType::kU8, Device::cpu(), nullptr)
      .copy_from(sample_buffer_.slice(0, in_bytes, bytes));
  const int32_t* tok = at(in_bytes, int32_t{});
  const float* lp = at(in_bytes + 4 * n, float{});
  for (const int32_t r : dev_rows) {
    const size_t i = idx[size_t(r)];
    out.token[i] = tok[r];
    out.logprob[i] = lp[r];
  }
  device_sampled_ += int64_t(dev_rows.size());
  top_logprobs_on_device(logits, idx, dev_rows, sampling, out);
}

// The top_logprobs of the device rows that ask for them (ops::top_logprobs over this forward's
// rows, k the largest asked; each row keeps its own count). Penalized rows never ask here
// (Sampler::device_ok), so the logits are the raw ones.
void DeepseekRunner::top_logprobs_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                                            const std::vector<int32_t>& dev_rows,
                                            std::span<const RowSampling> sampling, StepOutput& out) {
  int64_t k = 0;
  for (const int32_t r : dev_rows) k = std::max<int64_t>(k, sampling[idx[size_t(r)]].top_logprobs);
  k = std::min(k, logits.size(1));
  if (k == 0) return;
  const int64_t n = logits.size(0);
  Tensor ids = Tensor::empty({n, k}, DType::kI32, logits.device());
  Tensor values = Tensor::empty({n, k}, DType::kF32, logits.device());
  ops::top_logprobs(logits, ids, values);
  const Tensor ids_h = ids.to(Device::cpu()), values_h = values.to(Device::cpu());
  for (const int32_t r : dev_rows) {
    const size_t i = idx[size_t(r)];
    const int64_t want = std::min<int64_t>(sampling[i].top_logprobs, k);
    for (int64_t j = 0; j < want; ++j)
      out.top[i].push_back({ids_h.data<int32_t>()[r * k + j], values_h.data<float>()[r * k + j]});
  }
}

// The penalties of the penalized device rows, in place on their logits (ops::apply_penalties):
// one host buffer of [R + 1] offsets, the entries' tokens and counts, and [R] each of the
// factors goes up in one copy. Rows without penalties get no entries and neutral factors.
void DeepseekRunner::apply_penalties_on_device(const Tensor& logits, const std::vector<size_t>& idx,
                                               const std::vector<int32_t>& dev_rows,
                                               std::span<const RowSampling> sampling) {
  const auto n = int64_t(idx.size());
  std::vector<int32_t> count_of(size_t(n), 0);
  int64_t entries = 0, penalized = 0;
  for (const int32_t r : dev_rows) {
    const RowSampling& s = sampling[idx[size_t(r)]];
    if (!s.penalized) continue;
    ++penalized;
    count_of[size_t(r)] = int32_t(s.penalty_tokens.size());
    entries += int64_t(s.penalty_tokens.size());
  }
  if (penalized == 0) return;
  // Layout (4-byte words): offsets [n + 1], repetition, frequency, presence [n] each, then
  // tokens and counts [entries] each.
  const int64_t words = (n + 1) + 3 * n + 2 * entries;
  std::vector<int32_t> host(size_t(words), 0);
  int32_t* off = host.data();
  float* rep = reinterpret_cast<float*>(off + n + 1);
  float* freq = rep + n;
  float* pres = freq + n;
  int32_t* tok = reinterpret_cast<int32_t*>(pres + n);
  int32_t* cnt = tok + entries;
  for (int64_t r = 0; r < n; ++r) {
    off[r + 1] = off[r] + count_of[size_t(r)];
    rep[r] = 1.0f;
  }
  for (const int32_t r : dev_rows) {
    const RowSampling& s = sampling[idx[size_t(r)]];
    if (!s.penalized) continue;
    rep[r] = s.repetition;
    freq[r] = s.frequency;
    pres[r] = s.presence;
    std::copy(s.penalty_tokens.begin(), s.penalty_tokens.end(), tok + off[r]);
    std::copy(s.penalty_counts.begin(), s.penalty_counts.end(), cnt + off[r]);
  }
  const Device d = logits.device();
  Tensor buf = Tensor::empty({words}, DType::kI32, d);
  buf.copy_from(Tensor::from_blob(host.data(), {words}, DType::kI32, Device::cpu(), nullptr));
  auto* base = static_cast<int32_t*>(buf.raw_data());
  const auto view = [&](int64_t offset, int64_t len, DType dtype) {
    return Tensor::from_blob(base + offset, {len}, dtype, d, nullptr);
  };
  ops::PenaltyRows rows;
  rows.offsets = view(0, n + 1, DType::kI32);
  rows.repetition = view(n + 1, n, DType::kF32);
  rows.frequency = view(2 * n + 1, n, DType::kF32);
  rows.presence = view(3 * n + 1, n, DType::kF32);
  rows.tokens = view(4 * n + 1, entries, DType::kI32);
  rows.counts = view(4 * n + 1 + entries, entries, DType::kI32);
  Tensor rows_logits = logits;  // a handle: the op writes the rows in place
  ops::apply_penalties(rows_logits, rows);
  penalized_rows_ += penalized;
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
