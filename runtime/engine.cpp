#include "runtime/engine.h"

#include "core/thread_pool.h"

#include <algorithm>
#include <random>

#include "core/log.h"
#include "runtime/stop_checker.h"
#include "tokenizer/detokenizer.h"

namespace tandem::runtime {

namespace {
Status invalid(std::string message) { return {StatusCode::kInvalidArgument, std::move(message)}; }
// A request's n completions are scheduled as sequences (request_id << 8) | index; n <= 128.
constexpr int kIndexBits = 8;
}  // namespace

struct Engine::Sequence {
  RequestId request_id = 0;
  RequestId seq_id = 0;
  int32_t index = 0;
  std::shared_ptr<RequestStream> stream;
  SamplingParams params;
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 0;  // max_tokens capped by the context length
  int32_t num_output = 0;
  RequestState state = RequestState::kWaiting;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
  std::unique_ptr<StopChecker> stop;
  PdRole pd = PdRole::kNone;
  PrefillChunkFn on_chunk;      // kPrefill
  int32_t reported = 0;         // kPrefill: prompt tokens reported to on_chunk
  KvReservedFn on_reserved;     // kDecode
};

Status EngineConfig::validate() const {
  if (Status s = scheduler.validate(); !s.ok()) return s;
  if (pd_decode_reserve_tokens < 0) {
    return invalid(fmt::format("disaggregation_decode_reserve must be >= 0 tokens, got {}",
                               pd_decode_reserve_tokens));
  }
  if (kv_dtype != DType::kF32 && kv_dtype != DType::kBF16) {
    return invalid(fmt::format("kv_dtype must be f32 or bf16, got {}", dtype_name(kv_dtype)));
  }
  return {};
}

static const EngineConfig& checked(const EngineConfig& c) {
  const Status s = c.validate();
  TANDEM_CHECK(s.ok(), "EngineConfig: {}", s.message());
  return c;
}

Engine::Engine(const ModelConfig& model_config, std::unique_ptr<ModelRunner> runner,
               const tokenizer::Tokenizer* tokenizer, const EngineConfig& config)
    : model_config_(model_config),
      runner_(std::move(runner)),
      tokenizer_(tokenizer),
      config_(checked(config)),
      scheduler_(config.scheduler) {
  update_stats();
}

Engine::~Engine() { stop(); }

Status Engine::submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream) {
  std::vector<std::unique_ptr<Sequence>> seqs;
  if (Status s = prepare(std::move(request), PdRole::kNone, &seqs, stream); !s.ok()) return s;
  enqueue(std::move(seqs));
  return {};
}

Status Engine::submit_prefill(GenerateRequest request, PrefillChunkFn on_chunk,
                              std::shared_ptr<RequestStream>* stream) {
  if (!on_chunk) return invalid("submit_prefill: no chunk callback");
  std::vector<std::unique_ptr<Sequence>> seqs;
  if (Status s = prepare(std::move(request), PdRole::kPrefill, &seqs, stream); !s.ok()) return s;
  seqs[0]->on_chunk = std::move(on_chunk);
  enqueue(std::move(seqs));
  return {};
}

Status Engine::submit_decode(GenerateRequest request, KvReservedFn on_reserved,
                             std::shared_ptr<RequestStream>* stream) {
  if (!on_reserved) return invalid("submit_decode: no reservation callback");
  std::vector<std::unique_ptr<Sequence>> seqs;
  if (Status s = prepare(std::move(request), PdRole::kDecode, &seqs, stream); !s.ok()) return s;
  seqs[0]->on_reserved = std::move(on_reserved);
  enqueue(std::move(seqs));
  return {};
}

void Engine::kv_arrived(RequestId id, SampleResult first) {
  {
    std::lock_guard lk(inbox_mu_);
    pd_inbox_.push_back({id, true, std::move(first), {}});
  }
  inbox_cv_.notify_all();
}

void Engine::pd_done(RequestId id, Status status) {
  {
    std::lock_guard lk(inbox_mu_);
    pd_inbox_.push_back({id, false, {}, std::move(status)});
  }
  inbox_cv_.notify_all();
}

Status Engine::prepare(GenerateRequest request, PdRole role,
                       std::vector<std::unique_ptr<Sequence>>* seqs,
                       std::shared_ptr<RequestStream>* stream) {
  const SamplingParams& p = request.params;
  if (Status s = p.validate(model_config_.vocab_size); !s.ok()) return s;
  if (role != PdRole::kNone && p.n != 1) {
    return invalid(fmt::format("n: a disaggregated request has one completion, got n = {}", p.n));
  }
  if (!p.stop.empty() && tokenizer_ == nullptr) {
    return invalid("stop: stop strings need a tokenizer");
  }
  std::vector<int32_t> prompt = std::move(request.prompt_ids);
  if (prompt.empty()) {
    if (request.prompt.empty()) return invalid("prompt: empty prompt");
    if (tokenizer_ == nullptr) return invalid("prompt: a text prompt needs a tokenizer");
    prompt = tokenizer_->encode(request.prompt);
    if (prompt.empty()) return invalid("prompt: the text encodes to no tokens");
  }
  for (const int32_t id : prompt) {
    if (id < 0 || id >= model_config_.vocab_size) {
      return invalid(fmt::format("prompt: token id {} is outside the vocabulary [0, {})", id,
                                 model_config_.vocab_size));
    }
  }
  const int64_t context = model_config_.max_position_embeddings;
  if (int64_t(prompt.size()) >= context) {
    return invalid(fmt::format("prompt: {} tokens do not fit the context length {}",
                               prompt.size(), context));
  }
  // The prefill side computes the prompt and samples one token; the decode side the rest.
  const int32_t max_new =
      role == PdRole::kPrefill
          ? 1
          : int32_t(std::min<int64_t>(p.max_tokens, context - int64_t(prompt.size())));
  const int64_t pool = int64_t(config_.scheduler.num_pages()) * config_.scheduler.page_size;
  if (int64_t(prompt.size()) + max_new > pool) {
    return {StatusCode::kResourceExhausted,
            fmt::format("prompt ({} tokens) + max_tokens ({}) exceeds the KV pool of {} tokens "
                        "(max_total_tokens)", prompt.size(), max_new, pool)};
  }

  const RequestId rid = next_id_.fetch_add(1);
  auto out = std::make_shared<RequestStream>(rid, p.n);
  const uint64_t base_seed = p.seed.has_value() ? *p.seed : std::random_device{}();
  for (int32_t i = 0; i < p.n; ++i) {
    auto seq = std::make_unique<Sequence>();
    seq->request_id = rid;
    seq->seq_id = (rid << kIndexBits) | RequestId(i);
    seq->index = i;
    seq->stream = out;
    seq->params = p;
    seq->params.seed = base_seed + uint64_t(i);  // parallel samples differ, reproducibly
    seq->prompt = prompt;
    seq->max_new_tokens = max_new;
    seq->sampler = std::make_unique<Sampler>(seq->params, prompt, *seq->params.seed);
    if (tokenizer_ != nullptr) {
      seq->detok = std::make_unique<tokenizer::IncrementalDetokenizer>(*tokenizer_, true);
    }
    seq->stop = std::make_unique<StopChecker>(p.stop);
    seq->pd = role;
    seqs->push_back(std::move(seq));
  }
  *stream = std::move(out);
  return {};
}

void Engine::enqueue(std::vector<std::unique_ptr<Sequence>> seqs) {
  {
    std::lock_guard lk(inbox_mu_);
    for (auto& s : seqs) inbox_.push_back(std::move(s));
  }
  inbox_cv_.notify_all();
}

void Engine::abort(RequestId id) {
  {
    std::lock_guard lk(inbox_mu_);
    abort_inbox_.push_back(id);
  }
  inbox_cv_.notify_all();
}

void Engine::drain_inbox() {
  std::vector<std::unique_ptr<Sequence>> added;
  std::vector<RequestId> aborted;
  std::vector<PdEvent> pd_events;
  {
    std::lock_guard lk(inbox_mu_);
    added.swap(inbox_);
    aborted.swap(abort_inbox_);
    pd_events.swap(pd_inbox_);
  }
  for (auto& seq : added) {
    const Status s =
        seq->pd == PdRole::kDecode
            ? scheduler_.add_remote(seq->seq_id, seq->prompt, seq->max_new_tokens,
                                    config_.pd_decode_reserve_tokens)
            : scheduler_.add(seq->seq_id, seq->prompt, seq->max_new_tokens);
    if (!s.ok()) {  // submit checked the same limits; kept as a guard
      StreamEvent ev;
      ev.error = s.message();
      finish(*seq, FinishReason::kError, std::move(ev), false);
      continue;
    }
    prompt_tokens_ += int64_t(seq->prompt.size());
    const RequestId id = seq->seq_id;
    seqs_.emplace(id, std::move(seq));
  }
  for (const RequestId rid : aborted) {
    for (RequestId i = 0; i < (RequestId(1) << kIndexBits); ++i) {
      auto it = seqs_.find((rid << kIndexBits) | i);
      if (it == seqs_.end()) continue;
      scheduler_.abort(it->first);
      finish(*it->second, FinishReason::kAbort, {}, false);
    }
  }
  for (PdEvent& e : pd_events) handle_pd_event(e);
}

void Engine::handle_pd_event(PdEvent& e) {
  auto it = seqs_.find(e.request_id << kIndexBits);  // PD requests have n = 1
  if (it == seqs_.end()) return;                      // ended meanwhile (abort, error)
  Sequence& seq = *it->second;
  const RequestId id = seq.seq_id;
  auto fail = [&](std::string message) {
    scheduler_.abort(id);
    StreamEvent ev;
    ev.error = std::move(message);
    finish(seq, FinishReason::kError, std::move(ev), false);
  };
  if (!e.arrived) {
    if (!e.status.ok()) return fail(e.status.message());
    if (seq.pd != PdRole::kPrefill || scheduler_.state(id) != RequestState::kTransferring) {
      return fail("PD layer released a request that is not done with its prefill");
    }
    finish(seq, FinishReason::kLength, {}, true);
    return;
  }
  if (seq.pd != PdRole::kDecode || !scheduler_.is_reserved(id)) {
    return fail("prompt KV arrived for a request without reserved pages");
  }
  if (e.first.token < 0 || e.first.token >= model_config_.vocab_size) {
    return fail(fmt::format("prefill sent first token {} outside the vocabulary [0, {})",
                            e.first.token, model_config_.vocab_size));
  }
  const int32_t token = e.first.token;
  scheduler_.kv_arrived(id, token);
  // The first token counts as sampled here, as in a colocated run: penalties see it as
  // output and the next token takes the request's second draw.
  seq.sampler->accept(token);
  seq.state = RequestState::kDecoding;
  ++seq.num_output;
  ++generated_tokens_;
  StreamEvent ev;
  ev.index = seq.index;
  ev.token_ids.push_back(token);
  if (seq.params.logprobs || seq.params.top_logprobs > 0) ev.logprobs.push_back(e.first);
  if (check_stop(seq, token, ev)) return;
  seq.stream->push(std::move(ev));
}

void Engine::report_reserved(RequestId seq_id) {
  Sequence& seq = *seqs_.at(seq_id);
  const auto pages = scheduler_.pages(seq_id);
  seq.state = RequestState::kAwaitingKv;
  seq.on_reserved({seq.request_id, int32_t(seq.prompt.size()), {pages.begin(), pages.end()}});
}

void Engine::report_prefill(Sequence& seq, const ScheduledSeq& s, const SampleResult& sampled) {
  const int32_t ps = config_.scheduler.page_size;
  const int32_t end = s.cached_len + s.num_tokens;
  const int32_t upto = s.sample ? end : end / ps * ps;  // whole pages until the last step
  if (!s.sample && upto <= seq.reported) return;
  PrefillChunk c;
  c.request_id = seq.request_id;
  c.first_token = seq.reported;
  c.num_tokens = upto - seq.reported;
  const auto pages = scheduler_.pages(seq.seq_id);
  c.pages.assign(pages.begin(), pages.begin() + (upto + ps - 1) / ps);
  c.last = s.sample;
  seq.reported = upto;
  if (s.sample) {
    c.first = sampled;
    scheduler_.hold(seq.seq_id);
    seq.state = RequestState::kTransferring;
    ++seq.num_output;
    ++generated_tokens_;
    StreamEvent ev;
    ev.index = seq.index;
    ev.token_ids.push_back(sampled.token);
    if (seq.params.logprobs || seq.params.top_logprobs > 0) ev.logprobs.push_back(sampled);
    seq.stream->push(std::move(ev));
  }
  seq.on_chunk(c);
}

bool Engine::step() {
  try {
    drain_inbox();
    const Decision d = scheduler_.schedule();
    for (const RequestId id : d.preempted) seqs_.at(id)->state = RequestState::kWaiting;
    for (const RequestId id : d.reserved) report_reserved(id);
    if (d.empty()) {
      update_stats();
      return !d.reserved.empty();
    }
    // Requests whose sampling needs no history may be sampled by the runner on the device.
    std::vector<RowSampling> sampling(d.seqs.size());
    for (size_t i = 0; i < d.seqs.size(); ++i) {
      const Sampler& sm = *seqs_.at(d.seqs[i].id)->sampler;
      if (!d.seqs[i].sample || !sm.device_ok()) continue;
      RowSampling& rs = sampling[i];
      rs.device = true;
      rs.params = sm.row_params();
      rs.seed = sm.seed();
      rs.draw = sm.draws();
      rs.top_logprobs = sm.top_logprobs();
      if (sm.has_penalties()) {
        rs.penalized = true;
        rs.repetition = sm.repetition_penalty();
        rs.frequency = sm.frequency_penalty();
        rs.presence = sm.presence_penalty();
        rs.penalty_tokens = sm.penalty_tokens();
        rs.penalty_counts = sm.penalty_counts();
      }
    }
    process(d, runner_->step(d, scheduler_, sampling));
  } catch (const std::exception& e) {
    TANDEM_LOG_ERROR("engine step failed: {}", e.what());
    fail_all(e.what());
  }
  ++steps_;
  update_stats();
  return true;
}

void Engine::process(const Decision& d, const StepOutput& out) {
  const size_t n = d.seqs.size();
  TANDEM_CHECK(out.host_row.size() == n && out.token.size() == n && out.logprob.size() == n,
               "runner returned results for {}/{}/{} of {} sequences", out.host_row.size(),
               out.token.size(), out.logprob.size(), n);
  const Tensor& logits = out.logits;
  TANDEM_CHECK(!logits.defined() || (logits.dim() == 2 && logits.device().is_cpu()),
               "runner returned logits {} (want f32 [rows, vocab] on the CPU)",
               logits.defined() ? logits.describe() : std::string("undefined"));
  const int64_t host_rows = logits.defined() ? logits.size(0) : 0;
  const int64_t vocab = logits.defined() ? logits.size(1) : 0;
  const float* rows = logits.defined() ? logits.data<float>() : nullptr;
  std::vector<int32_t> next(n, -1);
  std::vector<SampleResult> sampled(n);
  std::vector<Sequence*> seqs(n);
  for (size_t i = 0; i < n; ++i) {
    seqs[i] = seqs_.at(d.seqs[i].id).get();
    seqs[i]->state = RequestState::kPrefilling;
    if (!d.seqs[i].sample) continue;
    if (out.token[i] >= 0) {
      // Sampled on the device: the Sampler's penalty state and draw counter move on.
      TANDEM_CHECK(out.token[i] < model_config_.vocab_size && seqs[i]->sampler->device_ok(),
                   "runner sampled token {} on the device for a request that cannot be", out.token[i]);
      seqs[i]->sampler->accept(out.token[i]);
      sampled[i].token = next[i] = out.token[i];
      sampled[i].logprob = out.logprob[i];
      if (i < out.top.size()) sampled[i].top = out.top[i];
    } else {
      TANDEM_CHECK(out.host_row[i] >= 0 && out.host_row[i] < host_rows,
                   "runner returned no logits row for sequence {} (row {} of {})", i,
                   out.host_row[i], host_rows);
    }
  }
  // Each sequence samples with its own sampler (own RNG and penalty state), so rows go to the
  // thread pool: a batch of 256 V3 rows (128k logits each) took tens of ms on one thread.
  parallel_for(int64_t(n), 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (!d.seqs[size_t(i)].sample || out.token[size_t(i)] >= 0) continue;
      const int64_t row = out.host_row[size_t(i)];
      sampled[size_t(i)] = seqs[size_t(i)]->sampler->sample(
          std::span<const float>(rows + row * vocab, size_t(vocab)));
      next[size_t(i)] = sampled[size_t(i)].token;
    }
  });
  scheduler_.complete(d, next);
  for (size_t i = 0; i < d.seqs.size(); ++i) {
    Sequence& seq = *seqs_.at(d.seqs[i].id);
    if (seq.pd == PdRole::kPrefill) {
      report_prefill(seq, d.seqs[i], sampled[i]);
      continue;
    }
    if (!d.seqs[i].sample) continue;
    seq.state = RequestState::kDecoding;
    ++seq.num_output;
    ++generated_tokens_;
    StreamEvent ev;
    ev.index = seq.index;
    ev.token_ids.push_back(next[i]);
    if (seq.params.logprobs || seq.params.top_logprobs > 0) ev.logprobs.push_back(sampled[i]);
    if (check_stop(seq, next[i], ev)) continue;
    seq.stream->push(std::move(ev));
  }
}

// Appends the token's text to `ev`; finishes the sequence (and returns true) when it stops.
bool Engine::check_stop(Sequence& seq, int32_t token, StreamEvent& ev) {
  const SamplingParams& p = seq.params;
  const auto& eos = model_config_.eos_token_ids;
  const bool stop_token =
      std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end() ||
      (!p.ignore_eos && std::find(eos.begin(), eos.end(), int64_t(token)) != eos.end());
  if (stop_token) {  // its text is not part of the output
    finish(seq, FinishReason::kStop, std::move(ev), true);
    return true;
  }
  if (seq.detok) {
    StopChecker::Result r = seq.stop->push(seq.detok->push(token));
    ev.text = std::move(r.text);
    if (r.stopped) {
      finish(seq, FinishReason::kStop, std::move(ev), true);
      return true;
    }
  }
  if (seq.num_output >= seq.max_new_tokens) {
    finish(seq, FinishReason::kLength, std::move(ev), true);
    return true;
  }
  return false;
}

void Engine::finish(Sequence& seq, FinishReason reason, StreamEvent ev, bool in_scheduler) {
  if (in_scheduler) scheduler_.finish(seq.seq_id);
  // Text held back by the detokenizer or the stop checker belongs to a normal ending.
  if (seq.detok && (reason == FinishReason::kLength || reason == FinishReason::kStop)) {
    StopChecker::Result r = seq.stop->push(seq.detok->finish());
    ev.text += r.text;
    if (!r.stopped) ev.text += seq.stop->flush();
  }
  if (seq.pd == PdRole::kPrefill &&
      (reason == FinishReason::kError || reason == FinishReason::kAbort)) {
    PrefillChunk c;  // the PD layer stops waiting for this request's KV
    c.request_id = seq.request_id;
    c.ended = true;
    seq.on_chunk(c);
  }
  ev.index = seq.index;
  ev.finished = true;
  ev.finish_reason = reason;
  seq.state = reason == FinishReason::kAbort ? RequestState::kAborted : RequestState::kFinished;
  seq.stream->push(std::move(ev));
  seqs_.erase(seq.seq_id);  // `seq` is gone after this line
}

void Engine::fail_all(const std::string& message) {
  std::vector<RequestId> ids;
  for (const auto& [id, seq] : seqs_) ids.push_back(id);
  for (const RequestId id : ids) {
    try {
      scheduler_.abort(id);
    } catch (const std::exception&) {
      // The scheduler may be what failed; the request ends either way.
    }
    StreamEvent ev;
    ev.error = message;
    finish(*seqs_.at(id), FinishReason::kError, std::move(ev), false);
  }
}

void Engine::update_stats() {
  const SchedulerStats s = scheduler_.stats();
  std::lock_guard lk(inbox_mu_);
  stats_.running = s.running;
  stats_.waiting = s.waiting + int32_t(inbox_.size());
  stats_.kv_pages_total = scheduler_.config().num_pages();
  stats_.kv_pages_used = s.used_pages + (s.cached_pages - s.evictable_pages);
  stats_.kv_pages_cached = s.cached_pages;
  stats_.kv_usage = double(stats_.kv_pages_used) / double(stats_.kv_pages_total);
  stats_.prompt_tokens = prompt_tokens_;
  stats_.generated_tokens = generated_tokens_;
  stats_.preemptions = s.preemptions;
  stats_.prefix_hit_tokens = s.prefix_hit_tokens;
  stats_.steps = steps_;
  stats_.awaiting_kv = s.awaiting_kv;
  stats_.transferring = s.transferring;
}

EngineStats Engine::stats() const {
  std::lock_guard lk(inbox_mu_);
  return stats_;
}

void Engine::start() {
  TANDEM_CHECK(!thread_.joinable(), "Engine::start: the loop is already running");
  {
    std::lock_guard lk(inbox_mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  {
    std::lock_guard lk(inbox_mu_);
    stopping_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  bool busy = false;
  for (;;) {
    {
      std::unique_lock lk(inbox_mu_);
      if (!busy) {
        inbox_cv_.wait(lk, [&] {
          return stopping_ || !inbox_.empty() || !abort_inbox_.empty() || !pd_inbox_.empty();
        });
      }
      if (stopping_) return;
    }
    busy = step();
  }
}

}  // namespace tandem::runtime
