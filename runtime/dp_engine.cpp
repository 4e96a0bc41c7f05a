#include "runtime/dp_engine.h"

#include <algorithm>
#include <limits>

#include "core/log.h"
#include "parallel/ep_moe.h"
#include "parallel/in_process_group.h"

#ifdef TANDEM_WITH_NCCL
#include "parallel/nccl_group.h"
#endif
#ifdef TANDEM_WITH_CUDA
#include "ops/cuda/device.h"
#endif

namespace tandem::runtime {

namespace {

Status invalid(std::string message) { return {StatusCode::kInvalidArgument, std::move(message)}; }

class EngineFrontOf : public EngineFront {
 public:
  explicit EngineFrontOf(Engine& engine) : engine_(engine) {}
  Status submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream) override {
    return engine_.submit(std::move(request), stream);
  }
  void abort(RequestId id) override { engine_.abort(id); }
  EngineStats stats() const override { return engine_.stats(); }

 private:
  Engine& engine_;
};

// The values a rank gathers per slot, in this order.
enum SlotField : int { kBusy, kDecode, kTokens, kStopping, kEpoch, kSlotFields };

}  // namespace

std::unique_ptr<EngineFront> EngineFront::of(Engine& engine) {
  return std::make_unique<EngineFrontOf>(engine);
}

Status DpEngineConfig::validate(const ModelConfig& model) const {
  if (ep < 1) return invalid(fmt::format("--ep must be at least 1, got {}", ep));
  if (model.n_routed_experts < 1) {
    return invalid(fmt::format("--ep {}: the model has no routed experts", ep));
  }
  if (model.n_routed_experts % ep != 0) {
    return invalid(fmt::format("--ep {} must divide the model's {} routed experts", ep,
                               model.n_routed_experts));
  }
  if (model.first_k_dense_replace >= model.num_hidden_layers) {
    return invalid(fmt::format("--ep {}: the model has no MoE layer (first_k_dense_replace {} of "
                               "{} layers)", ep, model.first_k_dense_replace,
                               model.num_hidden_layers));
  }
  if (max_dispatch_tokens_per_rank < 0 || dispatch_tokens() > 12288) {
    return invalid(fmt::format("--max-dispatch-tokens-per-rank must be in [1, 12288] (0: "
                               "--max-running-requests), got {}", dispatch_tokens()));
  }
  if (dispatch_tokens() < engine.scheduler.max_running_requests) {
    return invalid(fmt::format("--max-dispatch-tokens-per-rank {} is below --max-running-requests "
                               "{} (the largest decode batch a rank sends)",
                               dispatch_tokens(), engine.scheduler.max_running_requests));
  }
  if (Status s = engine.validate(); !s.ok()) return s;
  return {};
}

// One rank: its model (its experts only), EpMoe, engine, and the state its forward hook and
// driver loop share (rank thread only, except the counters and `outstanding`, under mu_).
struct DpEngine::Rank {
  int index = 0;
  ProcessGroup* group = nullptr;
  std::unique_ptr<EpMoe> ep;
  std::unique_ptr<DeepseekV3Model> model;
  std::unique_ptr<Engine> engine;  // null once the rank has stopped (final_stats then)
  EngineStats final_stats;
  int64_t moe_layers = 0;
  int64_t layer_calls = 0;  // MoE layer calls since the runner's step began
  bool decode = false;      // the running step is decode-only
  std::atomic<bool> offline{false};
  std::atomic<int64_t> forward_slots{0}, idle_slots{0}, quiet_slots{0}, low_latency_slots{0};
  int32_t outstanding = 0;  // under mu_
};

// A request's stream as the client sees it: the rank's events under the DpEngine's id.
struct DpEngine::Forward {
  RequestId id = 0;
  int rank = 0;
  RequestId local_id = 0;
  std::mutex mu;
  std::shared_ptr<RequestStream> inner, outer;
  int32_t open = 0;  // completions not finished
  // Moves the rank's events into the client's stream; true once, when the last one ended.
  bool pump() {
    std::lock_guard lk(mu);
    if (!inner) return false;
    StreamEvent ev;
    while (inner->try_next(ev)) {
      if (ev.finished) --open;
      outer->push(std::move(ev));
      ev = {};
    }
    if (open > 0) return false;
    inner->set_on_push(nullptr);  // drops this Forward's reference cycle through the stream
    inner.reset();
    return true;
  }
};

struct DpEngine::Slot {
  bool any_busy = false;
  bool any_stopping = false;
  bool all_stopping = true;
  uint64_t min_epoch = std::numeric_limits<uint64_t>::max();
};

// Decorates a rank's runner: resets the per-step MoE layer count the forward hook uses to spot
// a forward's first MoE layer, tells it whether the step decodes, and turns an exception into
// the failure of the whole DpEngine (peers are blocked in this forward's collectives).
class DpEngine::StepRunner : public ModelRunner {
 public:
  StepRunner(DpEngine& dp, Rank& rank, std::unique_ptr<ModelRunner> inner)
      : dp_(dp), rank_(rank), inner_(std::move(inner)) {}
  // (Before its callers: its return type is deduced.)
  template <typename Fn>
  auto bracket(const Decision& decision, Fn&& fn) {
    if (rank_.offline.load()) {
      const std::string why = dp_.failure();
      TANDEM_FAIL("{}", why.empty() ? "the expert-parallel ranks have stopped" : why);
    }
    rank_.layer_calls = 0;
    rank_.decode = decision.decode_only;
    try {
      return fn();
    } catch (const std::exception& e) {
      dp_.fail(rank_.index, e.what());
      throw;
    }
  }

  Tensor run(const Decision& decision, const Scheduler& scheduler) override {
    return bracket(decision, [&] { return inner_->run(decision, scheduler); });
  }
  // Keeps the inner runner's device sampling (CUDA).
  StepOutput step(const Decision& decision, const Scheduler& scheduler,
                  std::span<const RowSampling> sampling) override {
    return bracket(decision, [&] { return inner_->step(decision, scheduler, sampling); });
  }
  KvMemory kv_memory() override { return inner_->kv_memory(); }

 private:
  DpEngine& dp_;
  Rank& rank_;
  std::unique_ptr<ModelRunner> inner_;
};

DpEngine::DpEngine(const ModelConfig& model_config, const DpEngineConfig& config,
                   const tokenizer::Tokenizer* tokenizer)
    : model_config_(model_config), config_(config), tokenizer_(tokenizer) {
  for (int r = 0; r < config.ep; ++r) {
    ranks_.push_back(std::make_unique<Rank>());
    ranks_.back()->index = r;
  }
}

Status DpEngine::create(const ModelConfig& model_config, const DpEngineConfig& config,
                        DpLoadWeightsFn load_weights, const tokenizer::Tokenizer* tokenizer,
                        std::unique_ptr<DpEngine>* out, DpWrapRunnerFn wrap_runner) {
  if (Status s = config.validate(model_config); !s.ok()) return s;
  if (!load_weights) return invalid("DpEngine: no weight loader");
  if (config.backend == DpBackend::kNccl) {
#ifdef TANDEM_WITH_NCCL
    const int gpus = ops::cuda::device_count();
    if (gpus < config.ep) {
      return invalid(fmt::format("--ep {} on --device cuda needs {} GPUs (one rank per GPU), "
                                 "this machine has {}", config.ep, config.ep, gpus));
    }
#else
    return invalid(fmt::format("--ep {} on --device cuda needs a build with NCCL (nccl.h)",
                               config.ep));
#endif
  }
  std::unique_ptr<DpEngine> dp(new DpEngine(model_config, config, tokenizer));
  DpEngine* self = dp.get();
  auto rank_fn = [self, load_weights, wrap_runner](ProcessGroup& group) {
    self->rank_main(group, load_weights, wrap_runner);
  };
  if (config.backend == DpBackend::kInProcess) {
    dp->world_ = std::make_unique<InProcessWorld>(config.ep);
    dp->world_thread_ = std::thread([self, rank_fn] { (void)self->world_->run(rank_fn); });
  } else {
#ifdef TANDEM_WITH_NCCL
    dp->world_thread_ = std::thread([rank_fn, n = config.ep] { (void)run_nccl_ranks(n, rank_fn); });
#endif
  }
  {
    std::unique_lock lk(dp->mu_);
    dp->cv_.wait(lk, [&] { return dp->ready_ == config.ep || dp->failed_; });
    if (dp->failed_) {
      const std::string why = dp->failure_;
      lk.unlock();
      dp->stop();
      return {StatusCode::kInternal, why};
    }
  }
  TANDEM_LOG_INFO("DP attention over {} expert-parallel ranks ({} routed experts each, "
                  "low_latency up to {} tokens per rank)", config.ep,
                  model_config.n_routed_experts / config.ep, config.dispatch_tokens());
  *out = std::move(dp);
  return {};
}

DpEngine::~DpEngine() { stop(); }

void DpEngine::rank_main(ProcessGroup& group, const DpLoadWeightsFn& load,
                         const DpWrapRunnerFn& wrap) {
  Rank& r = *ranks_.at(size_t(group.rank()));
  try {
    build(r, group, load, wrap);
    {
      std::lock_guard lk(mu_);
      ++ready_;
    }
    cv_.notify_all();
    drive(r);
  } catch (const std::exception& e) {
    fail(r.index, e.what());
    retire(r);
    throw;  // aborts the group, so peers blocked in a collective fail too
  }
  retire(r);
}

void DpEngine::build(Rank& r, ProcessGroup& group, const DpLoadWeightsFn& load,
                     const DpWrapRunnerFn& wrap) {
  r.group = &group;
  const ExpertPlacement placement =
      ExpertPlacement::contiguous(model_config_.n_routed_experts, config_.ep);
  const Device device = config_.backend == DpBackend::kNccl ? Device::cuda(r.index) : Device::cpu();
  ModelWeights weights = load(r.index, device, expert_filter(placement, r.index));
  for (const LayerWeights& layer : weights.layers) r.moe_layers += layer.is_moe ? 1 : 0;
  TANDEM_CHECK(r.moe_layers > 0, "EP rank {}: the model has no MoE layer", r.index);
  r.model = std::make_unique<DeepseekV3Model>(model_config_, weights);  // shares the tensors
  EpOptions options;
  options.max_dispatch_tokens_per_rank = config_.dispatch_tokens();
  options.activation_dtype = r.model->activation_dtype();
  r.ep = std::make_unique<EpMoe>(group, model_config_, weights, placement, options);
  r.ep->attach(*r.model);
  // The first MoE layer of every forward opens a slot: the idle ranks join this forward.
  auto routed = std::move(r.model->routed_experts);
  r.model->routed_experts = [this, &r, routed](const MoeWeights& w, const Tensor& x,
                                               const Tensor& ids, const Tensor& wts, Tensor& o) {
    if (r.layer_calls++ % r.moe_layers == 0) slot(r, true, r.decode, x.size(0), false, 0);
    routed(w, x, ids, wts, o);
  };
  const SchedulerConfig& sc = config_.engine.scheduler;
  // No CUDA graphs: a captured decode step would skip the slot's host-side all-gather.
  std::unique_ptr<ModelRunner> runner = std::make_unique<DeepseekRunner>(
      *r.model, sc.num_pages(), sc.page_size, config_.engine.kv_dtype, device, 0);
  if (wrap) runner = wrap(std::move(runner));
  ModelConfig served = model_config_;
  if (config_.context_length > 0) served.max_position_embeddings = config_.context_length;
  r.engine = std::make_unique<Engine>(
      served, std::make_unique<StepRunner>(*this, r, std::move(runner)), tokenizer_, config_.engine);
}

DpEngine::Slot DpEngine::slot(Rank& r, bool busy, bool decode, int64_t tokens, bool stopping,
                              uint64_t epoch) {
  std::vector<int64_t> mine(kSlotFields);
  mine[kBusy] = busy ? 1 : 0;
  mine[kDecode] = decode ? 1 : 0;
  mine[kTokens] = tokens;
  mine[kStopping] = stopping ? 1 : 0;
  mine[kEpoch] = int64_t(epoch);
  const std::vector<int64_t> all = r.group->all_gather(mine);
  Slot s;
  bool low_latency = true;
  for (int q = 0; q < config_.ep; ++q) {
    const int64_t* v = all.data() + size_t(q) * kSlotFields;
    if (v[kBusy] != 0) {
      s.any_busy = true;
      if (v[kDecode] == 0 || v[kTokens] > config_.dispatch_tokens()) low_latency = false;
    } else {
      s.min_epoch = std::min(s.min_epoch, uint64_t(v[kEpoch]));
    }
    if (v[kStopping] != 0) {
      s.any_stopping = true;
    } else {
      s.all_stopping = false;
    }
  }
  r.ep->set_mode(low_latency ? DispatchMode::kLowLatency : DispatchMode::kNormal);
  (busy ? r.forward_slots : s.any_busy ? r.idle_slots : r.quiet_slots).fetch_add(1);
  if (s.any_busy && low_latency) r.low_latency_slots.fetch_add(1);
  return s;
}

void DpEngine::drive(Rank& r) {
  bool aborted = false;
  for (;;) {
    uint64_t epoch = 0;
    bool stopping = false;
    std::vector<RequestId> to_abort;
    {
      std::lock_guard lk(mu_);
      if (failed_) TANDEM_FAIL("{}", failure_);
      epoch = epoch_;
      stopping = stopping_;
      if (stopping && !aborted) {
        for (const auto& [id, f] : requests_) {
          if (f->rank == r.index) to_abort.push_back(f->local_id);
        }
        aborted = true;
      }
    }
    for (const RequestId id : to_abort) r.engine->abort(id);
    if (r.engine->step()) continue;  // its forwards (if any) met the others in their slots
    // Nothing to run here: one idle slot, serving this rank's experts to whoever runs.
    const Slot s = slot(r, false, false, 0, stopping, epoch);
    if (s.any_busy) {
      r.ep->idle_step();
      continue;
    }
    if (s.all_stopping) return;
    if (s.any_stopping) continue;
    // Every rank idle: sleep until something arrived after the oldest look any rank took.
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return epoch_ != s.min_epoch || stopping_ || failed_; });
  }
}

// After the rank's loop ended (stop or failure): ends what is left of its requests without a
// forward, then frees its engine, model and EpMoe on this thread (its GPU current).
void DpEngine::retire(Rank& r) {
  r.offline.store(true);
  if (!r.engine) {  // failed while building
    r.model.reset();
    r.ep.reset();
    return;
  }
  // After a failure, a step that schedules anything fails in the runner (offline), which ends
  // every request of the engine with the failure's message; what is left is aborted. No step
  // here reaches a collective.
  if (!failure().empty()) r.engine->step();
  std::vector<RequestId> left;
  {
    std::lock_guard lk(mu_);
    for (const auto& [id, f] : requests_) {
      if (f->rank == r.index) left.push_back(f->local_id);
    }
  }
  for (const RequestId id : left) r.engine->abort(id);
  for (int i = 0; i < 3 && r.engine->step(); ++i) {}
  std::unique_ptr<Engine> engine;
  {
    std::lock_guard lk(mu_);
    r.final_stats = r.engine->stats();
    engine = std::move(r.engine);
  }
  engine.reset();
  r.model.reset();
  r.ep.reset();
}

void DpEngine::fail(int rank, const std::string& message) {
  {
    std::lock_guard lk(mu_);
    if (!failed_) {
      failed_ = true;
      failure_ = fmt::format("EP rank {}: {}", rank, message);
      TANDEM_LOG_ERROR("DP engine failed: {}", failure_);
    }
    ++epoch_;
  }
  cv_.notify_all();
  if (world_) world_->abort(rank, message);  // peers blocked in a collective fail now
}

void DpEngine::finished(RequestId id) {
  std::lock_guard lk(mu_);
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  --ranks_[size_t(it->second->rank)]->outstanding;
  requests_.erase(it);
}

Status DpEngine::submit(GenerateRequest request, std::shared_ptr<RequestStream>* stream) {
  auto f = std::make_shared<Forward>();
  f->open = std::max<int32_t>(1, request.params.n);
  {
    std::lock_guard lk(mu_);
    if (failed_) return {StatusCode::kUnavailable, "the engine failed: " + failure_};
    if (stopping_) return {StatusCode::kUnavailable, "the engine is stopping"};
    // Fewest outstanding requests; among equals the first at or after the round-robin cursor.
    int best = -1;
    for (int k = 0; k < config_.ep; ++k) {
      const int q = (round_robin_ + k) % config_.ep;
      if (best < 0 || ranks_[size_t(q)]->outstanding < ranks_[size_t(best)]->outstanding) best = q;
    }
    Rank& r = *ranks_[size_t(best)];
    if (!r.engine) return {StatusCode::kUnavailable, "the engine is stopping"};
    if (Status s = r.engine->submit(std::move(request), &f->inner); !s.ok()) return s;
    round_robin_ = (best + 1) % config_.ep;
    f->id = next_id_++;
    f->rank = best;
    f->local_id = f->inner->id();
    f->outer = std::make_shared<RequestStream>(f->id, f->open);
    requests_.emplace(f->id, f);
    ++r.outstanding;
    ++epoch_;
  }
  cv_.notify_all();
  *stream = f->outer;
  // Outside mu_: a push on the rank thread may end the request (finished() takes mu_).
  f->inner->set_on_push([f, this] {
    if (f->pump()) finished(f->id);
  });
  if (f->pump()) finished(f->id);  // what the rank pushed before the hook was set
  return {};
}

void DpEngine::abort(RequestId id) {
  {
    std::lock_guard lk(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return;
    Rank& r = *ranks_[size_t(it->second->rank)];
    if (r.engine) r.engine->abort(it->second->local_id);
    ++epoch_;
  }
  cv_.notify_all();
}

std::vector<EngineStats> DpEngine::rank_stats() const {
  std::lock_guard lk(mu_);
  std::vector<EngineStats> out;
  for (const auto& r : ranks_) out.push_back(r->engine ? r->engine->stats() : r->final_stats);
  return out;
}

EngineStats DpEngine::stats() const {
  EngineStats sum;
  for (const EngineStats& s : rank_stats()) {
    sum.running += s.running;
    sum.waiting += s.waiting;
    sum.kv_pages_total += s.kv_pages_total;
    sum.kv_pages_used += s.kv_pages_used;
    sum.kv_pages_cached += s.kv_pages_cached;
    sum.prompt_tokens += s.prompt_tokens;
    sum.generated_tokens += s.generated_tokens;
    sum.preemptions += s.preemptions;
    sum.prefix_hit_tokens += s.prefix_hit_tokens;
    sum.steps += s.steps;
    sum.awaiting_kv += s.awaiting_kv;
    sum.transferring += s.transferring;
  }
  sum.kv_usage = sum.kv_pages_total > 0 ? double(sum.kv_pages_used) / sum.kv_pages_total : 0.0;
  return sum;
}

std::string DpEngine::failure() const {
  std::lock_guard lk(mu_);
  return failure_;
}

std::vector<DpRankCounters> DpEngine::counters() const {
  std::lock_guard lk(mu_);
  std::vector<DpRankCounters> out;
  for (const auto& r : ranks_) {
    out.push_back({r->forward_slots.load(), r->idle_slots.load(), r->quiet_slots.load(),
                   r->low_latency_slots.load(), r->outstanding});
  }
  return out;
}

void DpEngine::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    ++epoch_;
  }
  cv_.notify_all();
  if (world_thread_.joinable()) world_thread_.join();
}

}  // namespace tandem::runtime
