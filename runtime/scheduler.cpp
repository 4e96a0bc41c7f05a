#include "runtime/scheduler.h"

#include <algorithm>

namespace tandem::runtime {

struct Scheduler::Seq {
  RequestId id = 0;
  std::vector<int32_t> tokens;  // prompt + output; the last one may not be computed yet
  int32_t prompt_len = 0;
  int32_t num_computed = 0;     // tokens whose KV is in `pages`
  std::vector<int32_t> pages;   // [0, tree_pages) owned by the prefix cache, the rest private
  int32_t tree_pages = 0;
  RadixCache::Node* node = nullptr;  // locked; its path is pages [0, tree_pages)
  RequestState state = RequestState::kWaiting;
  int32_t reserve_tokens = 0;   // remote: decode tokens reserved beyond the prompt
};

namespace {
int32_t pages_for(int64_t tokens, int32_t page_size) {
  return int32_t((tokens + page_size - 1) / page_size);
}

template <typename C, typename T>
bool erase_one(C& c, const T& v) {
  auto it = std::find(c.begin(), c.end(), v);
  if (it == c.end()) return false;
  c.erase(it);
  return true;
}
}  // namespace

Status SchedulerConfig::validate() const {
  auto bad = [](std::string msg) { return Status(StatusCode::kInvalidArgument, std::move(msg)); };
  if (page_size < 1 || page_size > 64) {
    return bad(fmt::format("page_size must be in [1, 64], got {}", page_size));
  }
  if (max_total_tokens < page_size) {
    return bad(fmt::format("max_total_tokens ({}) must hold at least one page of {} tokens",
                           max_total_tokens, page_size));
  }
  if (max_total_tokens / page_size > INT32_MAX) {
    return bad(fmt::format("max_total_tokens ({}) is too large", max_total_tokens));
  }
  if (max_running_requests < 1) {
    return bad(fmt::format("max_running_requests must be at least 1, got {}", max_running_requests));
  }
  if (max_batch_tokens < 1) {
    return bad(fmt::format("max_batch_tokens must be at least 1, got {}", max_batch_tokens));
  }
  return {};
}

static const SchedulerConfig& checked(const SchedulerConfig& c) {
  const Status s = c.validate();
  TANDEM_CHECK(s.ok(), "SchedulerConfig: {}", s.message());
  return c;
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(checked(config)),
      allocator_(config.num_pages()),
      cache_(config.page_size, allocator_) {}

Scheduler::~Scheduler() = default;

Scheduler::Seq& Scheduler::get(RequestId id) const {
  auto it = seqs_.find(id);
  TANDEM_CHECK(it != seqs_.end(), "Scheduler: unknown request {}", id);
  return *it->second;
}

Status Scheduler::add(RequestId id, std::vector<int32_t> prompt, int32_t max_new_tokens) {
  if (prompt.empty()) return {StatusCode::kInvalidArgument, "the prompt is empty"};
  if (seqs_.count(id)) {
    return {StatusCode::kInvalidArgument, fmt::format("request id {} is already in use", id)};
  }
  // A request that alone overflows the pool would be retracted forever.
  const int64_t need = int64_t(prompt.size()) + std::max(max_new_tokens, 1);
  const int64_t capacity = int64_t(config_.num_pages()) * config_.page_size;
  if (need > capacity) {
    return {StatusCode::kResourceExhausted,
            fmt::format("prompt ({} tokens) + max_tokens ({}) exceeds max_total_tokens ({})",
                        prompt.size(), max_new_tokens, capacity)};
  }
  auto seq = std::make_unique<Seq>();
  seq->id = id;
  seq->prompt_len = int32_t(prompt.size());
  seq->tokens = std::move(prompt);
  seq->node = cache_.root();
  waiting_.push_back(seq.get());
  seqs_.emplace(id, std::move(seq));
  return {};
}

Status Scheduler::add_remote(RequestId id, std::vector<int32_t> prompt, int32_t max_new_tokens,
                             int32_t reserve_tokens) {
  if (reserve_tokens < 0) {
    return {StatusCode::kInvalidArgument,
            fmt::format("decode reserve must be >= 0 tokens, got {}", reserve_tokens)};
  }
  if (Status s = add(id, std::move(prompt), max_new_tokens); !s.ok()) return s;
  Seq& seq = get(id);
  waiting_.pop_back();
  seq.state = RequestState::kAwaitingKv;
  seq.reserve_tokens = std::min(reserve_tokens, std::max(max_new_tokens, 0));
  remote_waiting_.push_back(&seq);
  return {};
}

// Makes `n` pages free, evicting unlocked prefix-cache pages if needed.
bool Scheduler::ensure_free_pages(int32_t n) {
  const int32_t free = allocator_.num_free();
  if (free >= n) return true;
  if (config_.enable_prefix_cache) cache_.evict(n - free);
  return allocator_.num_free() >= n;
}

Decision Scheduler::schedule() {
  Decision d;
  d.seqs.reserve(running_.size() + 1);
  planned_.clear();
  int32_t budget = config_.max_batch_tokens;
  bool decode_only = true;
  const int32_t ps = config_.page_size;

  // 1. Running requests, oldest first. Retraction removes entries behind `i` or `i` itself.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Seq& s = *running_[i];
    const int32_t pending = int32_t(s.tokens.size()) - s.num_computed;
    if (s.state == RequestState::kPrefilling) {
      const int32_t chunk = std::min(pending, budget);
      d.seqs.push_back({s.id, s.num_computed, chunk, chunk == pending});
      planned_.push_back(&s);
      budget -= chunk;
      decode_only = false;
      ++i;
      continue;
    }
    const int32_t need = pages_for(s.num_computed + 1, ps) - int32_t(s.pages.size());
    bool self_retracted = false;
    while (need > 0 && !ensure_free_pages(need)) {
      // The newest decoding request gives its pages back; it is this one when none is newer.
      Seq* victim = &s;
      for (size_t j = running_.size(); j-- > i + 1;) {
        if (running_[j]->state == RequestState::kDecoding) {
          victim = running_[j];
          break;
        }
      }
      d.preempted.push_back(victim->id);
      retract(*victim);
      if (victim == &s) {
        self_retracted = true;
        break;
      }
    }
    if (self_retracted) continue;  // running_[i] is now the next request
    if (need > 0) {
      allocator_.alloc(need, s.pages);
      used_pages_ += need;
    }
    d.seqs.push_back({s.id, s.num_computed, 1, true});
    planned_.push_back(&s);
    budget -= 1;
    ++i;
  }

  // 2. Waiting requests in order. Not in a step that had to retract: pages are short, and a
  // request just retracted would come straight back.
  while (d.preempted.empty() && !waiting_.empty() && budget > 0 &&
         int32_t(running_.size() + reserved_.size()) < config_.max_running_requests) {
    if (!try_admit(*waiting_.front(), budget, d)) break;
    waiting_.pop_front();
    budget -= d.seqs.back().num_tokens;
    decode_only = false;
  }

  // 3. Reservations of remote requests (PD decode role), in order; they compute nothing.
  while (d.preempted.empty() && !remote_waiting_.empty() &&
         int32_t(running_.size() + reserved_.size()) < config_.max_running_requests) {
    if (!try_reserve(*remote_waiting_.front())) break;
    d.reserved.push_back(remote_waiting_.front()->id);
    remote_waiting_.pop_front();
  }

  for (const ScheduledSeq& s : d.seqs) d.num_tokens += s.num_tokens;
  d.decode_only = decode_only && !d.seqs.empty();
  return d;
}

bool Scheduler::try_admit(Seq& s, int32_t budget, Decision& d) {
  const int32_t ps = config_.page_size;
  const int32_t len = int32_t(s.tokens.size());
  RadixCache::Match m{{}, cache_.root()};
  if (config_.enable_prefix_cache) {
    // At least the last token is computed, so the step yields logits to sample from.
    m = cache_.match(std::span<const int32_t>(s.tokens).first(size_t(len - 1)));
    cache_.lock(m.node);  // the hit must survive the eviction below
  }
  const int32_t hit_pages = int32_t(m.pages.size());
  const int32_t need = pages_for(len, ps) - hit_pages;
  // One page kept per running request, so the next decode step rarely has to retract.
  const int32_t reserve = int32_t(running_.size() + reserved_.size());
  if (!ensure_free_pages(need + reserve)) {
    cache_.unlock(m.node);
    return false;
  }
  s.pages = std::move(m.pages);
  allocator_.alloc(need, s.pages);
  used_pages_ += need;
  s.tree_pages = hit_pages;
  s.node = m.node;
  s.num_computed = hit_pages * ps;
  s.state = RequestState::kPrefilling;
  running_.push_back(&s);
  const int32_t pending = len - s.num_computed;
  const int32_t chunk = std::min(pending, budget);
  d.seqs.push_back({s.id, s.num_computed, chunk, chunk == pending});
  planned_.push_back(&s);
  d.prefix_hit_tokens += s.num_computed;
  prefix_hit_tokens_ += s.num_computed;
  prefix_query_tokens_ += len;
  return true;
}

bool Scheduler::try_reserve(Seq& s) {
  const int32_t need =
      pages_for(int64_t(s.tokens.size()) + s.reserve_tokens, config_.page_size);
  // The same rule as admission: one page stays free per running (or reserved) request.
  const int32_t keep = int32_t(running_.size() + reserved_.size());
  if (!ensure_free_pages(need + keep)) return false;
  allocator_.alloc(need, s.pages);
  used_pages_ += need;
  reserved_.push_back(&s);
  return true;
}

bool Scheduler::is_reserved(RequestId id) const {
  const Seq& s = get(id);
  return s.state == RequestState::kAwaitingKv && !s.pages.empty();
}

void Scheduler::kv_arrived(RequestId id, int32_t first_token) {
  Seq& s = get(id);
  TANDEM_CHECK(s.state == RequestState::kAwaitingKv && erase_one(reserved_, &s),
               "Scheduler::kv_arrived: request {} is {}, not reserved", id,
               s.pages.empty() ? state_name(s.state) : "reserved");
  s.num_computed = s.prompt_len;
  s.tokens.push_back(first_token);
  s.state = RequestState::kDecoding;
  running_.push_back(&s);
  cache_computed_pages(s);  // the prompt's whole pages are valid KV now: share them
}

void Scheduler::hold(RequestId id) {
  Seq& s = get(id);
  TANDEM_CHECK(s.state == RequestState::kDecoding,
               "Scheduler::hold: request {} is {}, not done with its prefill", id,
               state_name(s.state));
  remove_running(s);
  planned_.clear();
  s.state = RequestState::kTransferring;
  held_.push_back(&s);
}

void Scheduler::complete(const Decision& decision, std::span<const int32_t> next_tokens) {
  TANDEM_CHECK(next_tokens.size() == decision.seqs.size(),
               "Scheduler::complete: {} tokens for {} scheduled requests", next_tokens.size(),
               decision.seqs.size());
  for (size_t i = 0; i < decision.seqs.size(); ++i) {
    const ScheduledSeq& sched = decision.seqs[i];
    Seq* seq = nullptr;
    if (planned_.size() == decision.seqs.size() && planned_[i]->id == sched.id) {
      seq = planned_[i];
    } else if (auto it = seqs_.find(sched.id); it != seqs_.end()) {
      seq = it->second.get();
    } else {
      continue;  // aborted after the step was planned
    }
    Seq& s = *seq;
    TANDEM_CHECK(s.num_computed == sched.cached_len && !is_terminal(s.state) &&
                     s.state != RequestState::kWaiting,
                 "Scheduler::complete: request {} is not in the state this step planned", s.id);
    s.num_computed += sched.num_tokens;
    if (sched.sample) {
      TANDEM_CHECK(s.num_computed == int32_t(s.tokens.size()),
                   "Scheduler::complete: request {} sampled before its last token", s.id);
      s.tokens.push_back(next_tokens[i]);
      s.state = RequestState::kDecoding;
    }
    cache_computed_pages(s);
  }
}

// Moves the request's newly filled pages into the prefix cache (a concurrent request with the
// same prefix can then share them) and moves its lock to the new deepest node.
void Scheduler::cache_computed_pages(Seq& s) {
  const int32_t ps = config_.page_size;
  const int32_t full = s.num_computed / ps;
  if (!config_.enable_prefix_cache || full <= s.tree_pages) return;
  const int32_t n = full - s.tree_pages;
  const auto tokens = std::span<const int32_t>(s.tokens).subspan(size_t(s.tree_pages) * ps, size_t(n) * ps);
  const auto pages = std::span<int32_t>(s.pages).subspan(size_t(s.tree_pages), size_t(n));
  if (cache_.extendable(s.node)) {
    cache_.extend(s.node, tokens, pages);  // the usual decode case: no one shares the tail
  } else {
    RadixCache::Node* node = cache_.insert(s.node, tokens, pages);
    cache_.move_lock(s.node, node);
    s.node = node;
  }
  s.tree_pages = full;
  used_pages_ -= n;
}

// Gives back everything the request holds: computed whole pages to the prefix cache, the
// rest to the allocator. Its tokens (and so its output) stay.
void Scheduler::release(Seq& s) {
  if (config_.enable_prefix_cache) {
    cache_computed_pages(s);
    cache_.unlock(s.node);
  }
  for (size_t p = size_t(s.tree_pages); p < s.pages.size(); ++p) allocator_.free(s.pages[p]);
  used_pages_ -= int32_t(s.pages.size()) - s.tree_pages;
  s.pages.clear();
  s.tree_pages = 0;
  s.node = cache_.root();
  s.num_computed = 0;
}

void Scheduler::remove_running(Seq& s) {
  auto it = std::find(running_.begin(), running_.end(), &s);
  TANDEM_CHECK(it != running_.end(), "Scheduler: request {} is not running", s.id);
  running_.erase(it);
}

void Scheduler::retract(Seq& s) {
  release(s);
  remove_running(s);
  s.state = RequestState::kWaiting;
  waiting_.push_front(&s);
  ++preemptions_;
}

void Scheduler::finish(RequestId id) {
  Seq& s = get(id);
  TANDEM_CHECK(s.state == RequestState::kPrefilling || s.state == RequestState::kDecoding ||
                   s.state == RequestState::kTransferring,
               "Scheduler::finish: request {} is {}, not running", id, state_name(s.state));
  release(s);
  if (s.state == RequestState::kTransferring) {
    erase_one(held_, &s);
  } else {
    remove_running(s);
  }
  planned_.clear();
  seqs_.erase(id);
}

bool Scheduler::abort(RequestId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  Seq& s = *it->second;
  if (s.state == RequestState::kWaiting) {
    erase_one(waiting_, &s);
  } else if (s.state == RequestState::kAwaitingKv) {
    // Reserved pages hold no valid KV yet (num_computed is 0): all go back to the allocator.
    if (!erase_one(remote_waiting_, &s)) erase_one(reserved_, &s);
    release(s);
  } else if (s.state == RequestState::kTransferring) {
    release(s);
    erase_one(held_, &s);
  } else {
    release(s);
    remove_running(s);
  }
  planned_.clear();
  seqs_.erase(it);
  return true;
}

RequestState Scheduler::state(RequestId id) const { return get(id).state; }
std::span<const int32_t> Scheduler::tokens(RequestId id) const { return get(id).tokens; }
std::span<const int32_t> Scheduler::pages(RequestId id) const { return get(id).pages; }
int32_t Scheduler::num_output_tokens(RequestId id) const {
  const Seq& s = get(id);
  return int32_t(s.tokens.size()) - s.prompt_len;
}

std::vector<RequestId> Scheduler::waiting_ids() const {
  std::vector<RequestId> ids;
  for (const Seq* s : waiting_) ids.push_back(s->id);
  return ids;
}

std::vector<RequestId> Scheduler::running_ids() const {
  std::vector<RequestId> ids;
  for (const Seq* s : running_) ids.push_back(s->id);
  return ids;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st;
  st.waiting = int32_t(waiting_.size());
  st.running = int32_t(running_.size());
  st.free_pages = allocator_.num_free();
  st.used_pages = used_pages_;
  st.cached_pages = cache_.total_pages();
  st.evictable_pages = cache_.evictable_pages();
  st.awaiting_kv = int32_t(remote_waiting_.size() + reserved_.size());
  st.transferring = int32_t(held_.size());
  st.preemptions = preemptions_;
  st.prefix_hit_tokens = prefix_hit_tokens_;
  st.prefix_query_tokens = prefix_query_tokens_;
  return st;
}

void Scheduler::check_invariants() const {
  const int32_t ps = config_.page_size;
  cache_.check_invariants();
  int32_t used = 0;
  std::vector<uint8_t> seen(size_t(allocator_.num_pages()), 0);
  std::vector<const Seq*> holding(running_.begin(), running_.end());
  for (const Seq* s : held_) {
    TANDEM_CHECK(s->state == RequestState::kTransferring, "request {} is held but {}", s->id,
                 state_name(s->state));
    holding.push_back(s);
  }
  for (const Seq* s : reserved_) {
    TANDEM_CHECK(s->state == RequestState::kAwaitingKv && s->tree_pages == 0 &&
                     s->num_computed == 0 && !s->pages.empty(),
                 "request {} is reserved but {} with {} pages", s->id, state_name(s->state),
                 s->pages.size());
    for (const int32_t page : s->pages) {
      TANDEM_CHECK(!allocator_.is_free(page) && !seen[size_t(page)],
                   "request {}: page {} is free or held twice", s->id, page);
      seen[size_t(page)] = 1;
    }
    used += int32_t(s->pages.size());
  }
  for (const Seq* s : remote_waiting_) {
    TANDEM_CHECK(s->state == RequestState::kAwaitingKv && s->pages.empty(),
                 "request {} waits for a reservation but holds pages or is {}", s->id,
                 state_name(s->state));
  }
  for (const Seq* s : holding) {
    TANDEM_CHECK(s->state == RequestState::kPrefilling || s->state == RequestState::kDecoding ||
                     s->state == RequestState::kTransferring,
                 "request {} is running but {}", s->id, state_name(s->state));
    TANDEM_CHECK(int64_t(s->pages.size()) * ps >= s->num_computed &&
                     s->tree_pages * ps <= s->num_computed &&
                     s->num_computed < int32_t(s->tokens.size()),
                 "request {}: {} pages, {} cached, {} computed of {} tokens", s->id,
                 s->pages.size(), s->tree_pages, s->num_computed, s->tokens.size());
    for (size_t p = size_t(s->tree_pages); p < s->pages.size(); ++p) {
      const int32_t page = s->pages[p];
      TANDEM_CHECK(!allocator_.is_free(page) && !seen[size_t(page)],
                   "request {}: page {} is free or held twice", s->id, page);
      seen[size_t(page)] = 1;
    }
    used += int32_t(s->pages.size()) - s->tree_pages;
  }
  for (const Seq* s : waiting_) {
    TANDEM_CHECK(s->state == RequestState::kWaiting && s->pages.empty() && s->num_computed == 0,
                 "request {} is queued but holds pages or state {}", s->id, state_name(s->state));
  }
  TANDEM_CHECK(running_.size() + waiting_.size() + remote_waiting_.size() + reserved_.size() +
                       held_.size() == seqs_.size(),
               "{} running + {} waiting + {} awaiting KV + {} held, but {} requests known",
               running_.size(), waiting_.size(), remote_waiting_.size() + reserved_.size(),
               held_.size(), seqs_.size());
  TANDEM_CHECK(used == used_pages_, "used pages: counted {}, counter {}", used, used_pages_);
  TANDEM_CHECK(allocator_.num_free() + used + cache_.total_pages() == allocator_.num_pages(),
               "pages: {} free + {} used + {} cached != {} total", allocator_.num_free(), used,
               cache_.total_pages(), allocator_.num_pages());
}

}  // namespace tandem::runtime
