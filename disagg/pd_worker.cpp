#include "disagg/pd_worker.h"

#include <algorithm>
#include <deque>
#include <optional>

#include "core/log.h"

namespace tandem::disagg {

using std::chrono::milliseconds;

namespace {

std::string room_str(uint64_t room) { return fmt::format("room {:#x}", room); }

// Registers each layer of the engine's KV pool with `transfer`.
Status register_kv(TransferEngine& transfer, const runtime::KvMemory& mem, KvLayout* layout,
                   std::vector<RegionHandle>* out) {
  if (mem.layers.empty() || mem.bytes_per_token == 0) {
    return {StatusCode::kInvalidArgument,
            "PD worker: the engine's model runner exposes no KV cache memory"};
  }
  for (const runtime::KvRegion& r : mem.layers) {
    RegionHandle h;
    const MemoryKind kind = r.device.is_cpu() ? MemoryKind::kHost : MemoryKind::kDevice;
    if (Status s = transfer.register_region(r.ptr, r.length_bytes, kind, r.device.index, &h);
        !s.ok()) {
      return {s.code(), "PD worker: registering the KV cache: " + s.message()};
    }
    out->push_back(std::move(h));
  }
  *layout = {uint32_t(mem.page_size), uint32_t(mem.layers.size()), uint64_t(mem.bytes_per_token)};
  return {};
}

// Moves finished (or, with `all`, every) thread out of `threads` under `mu` and joins it
// outside the lock, so a thread that takes `mu` on its way out cannot deadlock the join.
void reap(std::mutex& mu,
          std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>>& threads,
          bool all) {
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> done;
  {
    std::lock_guard lk(mu);
    for (auto it = threads.begin(); it != threads.end();) {
      auto next = std::next(it);
      if (all || it->second->load()) done.splice(done.end(), threads, it);
      it = next;
    }
  }
  for (auto& [t, flag] : done) t.join();
}

template <typename F>
void spawn(std::mutex& mu,
           std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>>& threads, F f) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread t([done, f = std::move(f)]() mutable {
    f();
    done->store(true);
  });
  std::lock_guard lk(mu);
  threads.emplace_back(std::move(t), std::move(done));
}

}  // namespace

Status PdWorkerConfig::validate() const {
  if (Status s = transfer.validate(); !s.ok()) return s;
  if (bootstrap_timeout_ms <= 0) {
    return {StatusCode::kInvalidArgument,
            fmt::format("bootstrap_timeout_ms must be > 0, got {}", bootstrap_timeout_ms)};
  }
  if (transfer_timeout_ms <= 0) {
    return {StatusCode::kInvalidArgument,
            fmt::format("transfer_timeout_ms must be > 0, got {}", transfer_timeout_ms)};
  }
  return {};
}

// ---- Prefill ----

struct PrefillWorker::Room {
  uint64_t id = 0;
  runtime::RequestId request_id = 0;  // 0 until submit has the engine's id
  Clock::time_point deadline;         // for the decode peer to connect
  bool connected = false;
  bool aborted = false;  // by the client, while connected
  std::deque<runtime::PrefillChunk> chunks;  // reported by the engine, not yet sent
};

PrefillWorker::PrefillWorker(runtime::Engine& engine, const PdWorkerConfig& config)
    : engine_(engine), config_(config) {}

Status PrefillWorker::create(runtime::Engine& engine, const PdWorkerConfig& config,
                             std::unique_ptr<PrefillWorker>* out) {
  if (Status s = config.validate(); !s.ok()) return s;
  auto w = std::unique_ptr<PrefillWorker>(new PrefillWorker(engine, config));
  if (Status s = make_transfer_engine(config.transfer, &w->transfer_); !s.ok()) return s;
  std::vector<RegionHandle> handles;
  if (Status s = register_kv(*w->transfer_, engine.kv_memory(), &w->layout_, &handles); !s.ok())
    return s;
  for (const RegionHandle& h : handles) w->regions_.push_back(h.region_id);
  if (Status s = BootstrapListener::listen(config.bootstrap_host, config.bootstrap_port,
                                           config.transfer.token,
                                           milliseconds(config.bootstrap_timeout_ms),
                                           &w->listener_);
      !s.ok()) {
    return {s.code(), fmt::format("PD prefill: cannot listen on bootstrap {}:{}: {}",
                                  config.bootstrap_host, config.bootstrap_port, s.message())};
  }
  w->accept_thread_ = std::thread([p = w.get()] { p->accept_loop(); });
  *out = std::move(w);
  return {};
}

PrefillWorker::~PrefillWorker() {
  stop_ = true;
  cv_.notify_all();
  if (accept_thread_.joinable()) accept_thread_.join();
  reap_threads(true);  // room threads see stop_ and end their rooms
  std::vector<runtime::RequestId> left;
  {
    std::lock_guard lk(mu_);
    for (auto& [id, room] : rooms_)
      if (room->request_id) left.push_back(room->request_id);
    rooms_.clear();
  }
  for (runtime::RequestId id : left)
    engine_.pd_done(id, {StatusCode::kUnavailable, "PD prefill: worker shut down"});
  for (uint64_t r : regions_) (void)transfer_->unregister_region(r);
}

int32_t PrefillWorker::rooms_in_flight() const {
  std::lock_guard lk(mu_);
  return int32_t(rooms_.size());
}

Status PrefillWorker::submit(uint64_t room_id, runtime::GenerateRequest request,
                             std::shared_ptr<runtime::RequestStream>* stream) {
  auto room = std::make_shared<Room>();
  room->id = room_id;
  room->deadline = Clock::now() + milliseconds(config_.bootstrap_timeout_ms);
  {
    std::lock_guard lk(mu_);
    if (rooms_.count(room_id))
      return {StatusCode::kInvalidArgument, "bootstrap_room: " + room_str(room_id) + " is in use"};
    rooms_[room_id] = room;
  }
  std::weak_ptr<Room> weak = room;
  Status s = engine_.submit_prefill(
      std::move(request),
      [this, weak](const runtime::PrefillChunk& c) {  // engine thread: queue, never block
        auto r = weak.lock();
        if (!r) return;
        {
          std::lock_guard lk(mu_);
          r->chunks.push_back(c);
        }
        cv_.notify_all();
      },
      stream);
  {
    std::lock_guard lk(mu_);
    if (!s.ok()) {
      rooms_.erase(room_id);
      return s;
    }
    room->request_id = (*stream)->id();
  }
  cv_.notify_all();
  return {};
}

void PrefillWorker::reap_threads(bool all) { reap(threads_mu_, threads_, all); }

void PrefillWorker::abort(runtime::RequestId id) {
  uint64_t unconnected = 0;
  bool found = false;
  {
    std::lock_guard lk(mu_);
    for (auto it = rooms_.begin(); it != rooms_.end(); ++it) {
      Room& r = *it->second;
      if (r.request_id != id) continue;
      found = true;
      if (r.connected) {
        r.aborted = true;  // the room thread ends it between transfers
      } else {
        unconnected = r.id;
        rooms_.erase(it);
      }
      break;
    }
  }
  cv_.notify_all();
  if (!found) return engine_.abort(id);  // no room (yet or any more): a plain abort
  if (unconnected) {
    engine_.pd_done(id, {StatusCode::kAborted, fmt::format("PD prefill, {}: aborted by the client",
                                                           room_str(unconnected))});
  }
}

void PrefillWorker::accept_loop() {
  while (!stop_) {
    std::unique_ptr<BootstrapChannel> ch;
    const Status s = listener_->accept(milliseconds(50), &ch);
    if (s.ok()) {
      spawn(threads_mu_, threads_, [this, c = std::move(ch)]() mutable { serve(std::move(c)); });
    } else if (s.code() != StatusCode::kDeadlineExceeded) {
      TANDEM_LOG_WARN("PD prefill: bootstrap accept failed: {}", s.message());
      std::this_thread::sleep_for(milliseconds(50));
    }
    // Rooms whose decode peer never came.
    std::vector<std::pair<uint64_t, runtime::RequestId>> expired;
    {
      std::lock_guard lk(mu_);
      const auto now = Clock::now();
      for (auto it = rooms_.begin(); it != rooms_.end();) {
        const Room& r = *it->second;
        if (!r.connected && r.request_id && now > r.deadline) {
          expired.emplace_back(r.id, r.request_id);
          it = rooms_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto [room, id] : expired) {
      engine_.pd_done(id, {StatusCode::kDeadlineExceeded,
                           fmt::format("PD prefill, {}: no decode server connected within {} ms",
                                       room_str(room), config_.bootstrap_timeout_ms)});
    }
    reap_threads(false);
  }
}

void PrefillWorker::serve(std::unique_ptr<BootstrapChannel> ch) {
  const milliseconds boot(config_.bootstrap_timeout_ms);
  KvPagesRequest request;
  if (Status s = prefill_receive_request(*ch, layout_, boot, &request); !s.ok()) {
    TANDEM_LOG_WARN("PD prefill: bad KV pages request: {}", s.message());
    return;  // decode got the refusal in the Ack (or is gone); no room was claimed
  }
  std::shared_ptr<Room> room;
  std::string refuse;
  {
    // The decode server may be quicker than this request's own submit: wait for the room.
    std::unique_lock lk(mu_);
    cv_.wait_until(lk, Clock::now() + boot, [&] {
      auto it = rooms_.find(request.room_id);
      return stop_ || (it != rooms_.end() && it->second->request_id != 0);
    });
    auto it = rooms_.find(request.room_id);
    if (stop_) {
      refuse = "prefill server shutting down";
    } else if (it == rooms_.end()) {
      refuse = fmt::format("prefill has no request for {}", room_str(request.room_id));
    } else if (it->second->connected) {
      refuse = fmt::format("{} already has a decode peer", room_str(request.room_id));
    } else {
      room = it->second;
      room->connected = true;
    }
  }
  if (!room) {
    TANDEM_LOG_WARN("PD prefill: {}", refuse);
    (void)ch->send(Abort{request.room_id, refuse}, milliseconds(1000));
    return;
  }
  const Status s = run_room(*ch, request, *room);
  if (!s.ok()) {
    // Best effort: decode may be what failed; either way it frees its pages.
    (void)ch->send(Abort{request.room_id, s.message()}, milliseconds(1000));
  }
  end_room(request.room_id, s);
}

Status PrefillWorker::run_room(BootstrapChannel& ch, const KvPagesRequest& request, Room& room) {
  const milliseconds transfer_timeout(config_.transfer_timeout_ms);
  const milliseconds boot(config_.bootstrap_timeout_ms);
  uint32_t index = 0;
  // While the request waits in the engine (queued behind others, or between long chunks),
  // a keepalive every quarter of decode's gap timeout tells decode this side is alive.
  const auto keepalive_every = std::max(milliseconds(10), transfer_timeout / 4);
  auto last_sent = Clock::now();
  for (;;) {
    std::optional<runtime::PrefillChunk> chunk;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, milliseconds(20),
                   [&] { return stop_ || room.aborted || !room.chunks.empty(); });
      if (stop_) return {StatusCode::kUnavailable, "prefill server shutting down"};
      if (room.aborted) return {StatusCode::kAborted, "aborted by the client"};
      if (!room.chunks.empty()) {
        chunk = std::move(room.chunks.front());
        room.chunks.pop_front();
      }
    }
    if (!chunk) {
      // Nothing to send yet: notice decode's Abort or its departure now, not at the next chunk.
      Message m;
      const Status s = ch.recv(&m, milliseconds(0));
      if (s.ok()) {
        if (const Abort* a = std::get_if<Abort>(&m))
          return {StatusCode::kAborted, "decode aborted: " + a->reason};
        return {StatusCode::kInvalidArgument, "unexpected message from decode"};
      }
      if (s.code() != StatusCode::kDeadlineExceeded)
        return {s.code(), "decode side: " + s.message()};
      if (Clock::now() - last_sent >= keepalive_every) {
        if (Status k = ch.send(Ack{request.room_id, true, kKeepalive}, boot); !k.ok())
          return {k.code(), "decode side: " + k.message()};
        last_sent = Clock::now();
      }
      continue;
    }
    const runtime::PrefillChunk& c = *chunk;
    if (c.ended) {
      return {StatusCode::kAborted, "the prefill request ended before its KV was sent"};
    }
    const uint64_t end = uint64_t(c.first_token) + uint64_t(c.num_tokens);
    if (end > request.num_prompt_tokens || (c.last && end != request.num_prompt_tokens)) {
      return {StatusCode::kInvalidArgument,
              fmt::format("decode expects a prompt of {} tokens, prefill has {}{}",
                          request.num_prompt_tokens, c.last ? "" : "at least ", end)};
    }
    if (c.num_tokens > 0) {
      std::vector<TransferWrite> writes;
      if (Status s = kv_page_writes(request, regions_, c.pages, uint32_t(c.first_token),
                                    uint32_t(c.num_tokens), &writes);
          !s.ok())
        return s;
      BatchId batch = 0;
      if (Status s = transfer_->submit(request.regions, writes, &batch); !s.ok())
        return {s.code(), "KV transfer: " + s.message()};
      const Status s = transfer_->wait(batch, transfer_timeout);
      if (s.code() == StatusCode::kDeadlineExceeded) {
        transfer_->cancel(batch);
        return {s.code(), fmt::format("KV transfer of {} tokens not done in {} ms", c.num_tokens,
                                      config_.transfer_timeout_ms)};
      }
      if (!s.ok()) return {s.code(), "KV transfer: " + s.message()};
    }
    const KvChunkDone done{request.room_id, index++, uint32_t(c.first_token),
                           uint32_t(c.num_tokens), c.last};
    if (Status s = prefill_chunk_done(ch, done, boot); !s.ok()) return s;
    last_sent = Clock::now();
    if (!c.last) continue;
    PrefillMeta meta;
    meta.room_id = request.room_id;
    meta.first_token = c.first.token;
    meta.logprob = c.first.logprob;
    for (const runtime::TokenLogprob& t : c.first.top) meta.top_logprobs.push_back({t.token, t.logprob});
    meta.num_prompt_tokens = request.num_prompt_tokens;
    if (Status s = ch.send(meta, boot); !s.ok()) return {s.code(), "decode side: " + s.message()};
    return {};
  }
}

void PrefillWorker::end_room(uint64_t room_id, const Status& status) {
  runtime::RequestId id = 0;
  {
    std::lock_guard lk(mu_);
    auto it = rooms_.find(room_id);
    if (it == rooms_.end()) return;
    id = it->second->request_id;
    rooms_.erase(it);
  }
  if (!status.ok()) {
    TANDEM_LOG_WARN("PD prefill, {}: {}", room_str(room_id), status.message());
    engine_.pd_done(id, {status.code(), fmt::format("PD prefill, {}: {}", room_str(room_id),
                                                    status.message())});
    return;
  }
  engine_.pd_done(id, {});  // KV sent: the pages go back (the prefix cache may keep them)
}

// ---- Decode ----

struct DecodeWorker::Room {
  uint64_t id = 0;
  std::string endpoint;
  runtime::RequestId request_id = 0;
  std::mutex mu;
  std::condition_variable cv;
  bool reserved = false;
  runtime::KvReservation reservation;
  std::atomic<bool> cancelled{false};
  // Set (under mu) once the room thread decided how the request ends; before that a client
  // abort only marks the room and the thread ends the request after the fence (see run()).
  bool settled = false;
};

DecodeWorker::DecodeWorker(runtime::Engine& engine, const PdWorkerConfig& config)
    : engine_(engine), config_(config) {}

Status DecodeWorker::create(runtime::Engine& engine, const PdWorkerConfig& config,
                            std::unique_ptr<DecodeWorker>* out) {
  if (Status s = config.validate(); !s.ok()) return s;
  auto w = std::unique_ptr<DecodeWorker>(new DecodeWorker(engine, config));
  if (Status s = make_transfer_engine(config.transfer, &w->transfer_); !s.ok()) return s;
  if (Status s = register_kv(*w->transfer_, engine.kv_memory(), &w->layout_, &w->regions_);
      !s.ok())
    return s;
  *out = std::move(w);
  return {};
}

DecodeWorker::~DecodeWorker() {
  stop_ = true;
  std::vector<std::shared_ptr<Room>> rooms;
  {
    std::lock_guard lk(mu_);
    for (auto& [id, r] : rooms_) rooms.push_back(r);
  }
  for (auto& r : rooms) {
    std::lock_guard lk(r->mu);
    r->cv.notify_all();
  }
  reap_threads(true);  // each ends its request with an error, freeing the pages
  for (const RegionHandle& h : regions_) (void)transfer_->unregister_region(h.region_id);
}

int32_t DecodeWorker::rooms_in_flight() const {
  std::lock_guard lk(mu_);
  return int32_t(rooms_.size());
}

void DecodeWorker::reap_threads(bool all) { reap(threads_mu_, threads_, all); }

Status DecodeWorker::submit(uint64_t room_id, const std::string& prefill_bootstrap,
                            runtime::GenerateRequest request,
                            std::shared_ptr<runtime::RequestStream>* stream) {
  if (prefill_bootstrap.empty())
    return {StatusCode::kInvalidArgument, "bootstrap_host: the prefill bootstrap address is empty"};
  auto room = std::make_shared<Room>();
  room->id = room_id;
  room->endpoint = prefill_bootstrap;
  std::weak_ptr<Room> weak = room;
  Status s = engine_.submit_decode(
      std::move(request),
      [weak](const runtime::KvReservation& k) {  // engine thread: hand over, never block
        auto r = weak.lock();
        if (!r) return;
        {
          std::lock_guard lk(r->mu);
          r->reservation = k;
          r->reserved = true;
        }
        r->cv.notify_all();
      },
      stream);
  if (!s.ok()) return s;
  room->request_id = (*stream)->id();
  {
    std::lock_guard lk(mu_);
    rooms_[room->request_id] = room;
  }
  reap_threads(false);
  spawn(threads_mu_, threads_, [this, room] { run(room); });
  return {};
}

void DecodeWorker::abort(runtime::RequestId id) {
  std::shared_ptr<Room> room;
  {
    std::lock_guard lk(mu_);
    if (auto it = rooms_.find(id); it != rooms_.end()) room = it->second;
  }
  if (room) {
    std::lock_guard lk(room->mu);
    if (!room->settled) {
      // The room thread tells prefill, waits until prefill no longer writes into the room's
      // pages, then ends the request (Engine::abort frees the pages).
      room->cancelled = true;
      room->cv.notify_all();
      return;
    }
  }
  engine_.abort(id);  // frees the pages and ends the stream ("abort")
}

void DecodeWorker::run(std::shared_ptr<Room> room) {
  PrefillMeta meta;
  Status s = receive_kv(*room, &meta);  // on failure: returns once prefill stopped writing
  bool cancelled = false;
  {
    std::lock_guard lk(room->mu);
    room->settled = true;
    cancelled = room->cancelled;
  }
  if (cancelled) {
    engine_.abort(room->request_id);  // a client abort: the stream ends with "abort"
  } else if (s.ok()) {
    runtime::SampleResult first;
    first.token = meta.first_token;
    first.logprob = meta.logprob;
    for (const TokenLogprob& t : meta.top_logprobs) first.top.push_back({t.token, t.logprob});
    engine_.kv_arrived(room->request_id, std::move(first));
  } else {
    if (stop_) s = {StatusCode::kUnavailable, "decode worker shut down"};
    TANDEM_LOG_WARN("PD decode, {}: {}", room_str(room->id), s.message());
    engine_.pd_done(room->request_id,
                    {s.code(), fmt::format("PD decode, {}: {}", room_str(room->id), s.message())});
  }
  std::lock_guard lk(mu_);
  rooms_.erase(room->request_id);
}

Status DecodeWorker::receive_kv(Room& room, PrefillMeta* meta) {
  const milliseconds boot(config_.bootstrap_timeout_ms);
  runtime::KvReservation reservation;
  {
    std::unique_lock lk(room.mu);
    if (!room.cv.wait_for(lk, boot, [&] { return room.reserved || room.cancelled || stop_; }))
      return {StatusCode::kResourceExhausted,
              fmt::format("no KV pages free for the prompt within {} ms", config_.bootstrap_timeout_ms)};
    if (room.cancelled) return {StatusCode::kAborted, "aborted by the client"};
    if (stop_) return {StatusCode::kUnavailable, "decode worker shut down"};
    reservation = room.reservation;
  }
  std::unique_ptr<BootstrapChannel> ch;
  if (Status s = bootstrap_connect(room.endpoint, config_.transfer.token, boot, &ch); !s.ok())
    return {s.code(), fmt::format("cannot reach the prefill bootstrap endpoint {}: {}",
                                  room.endpoint, s.message())};
  KvPagesRequest request;
  request.room_id = room.id;
  request.page_size = layout_.page_size;
  request.num_layers = layout_.num_layers;
  request.bytes_per_token_layer = layout_.bytes_per_token_layer;
  request.num_prompt_tokens = uint32_t(reservation.num_prompt_tokens);
  const size_t prompt_pages =
      (size_t(reservation.num_prompt_tokens) + layout_.page_size - 1) / layout_.page_size;
  request.page_ids.assign(reservation.pages.begin(),
                          reservation.pages.begin() + long(prompt_pages));
  request.regions = regions_;
  // From here on prefill may write into the pages: a failure goes through the fence.
  if (Status s = decode_send_request(*ch, request, boot); !s.ok()) return fence(*ch, room.id, s);
  Status s = decode_receive(*ch, request, milliseconds(config_.transfer_timeout_ms), meta, {},
                            [&] { return room.cancelled.load() || stop_.load(); });
  if (!s.ok()) return fence(*ch, room.id, s);
  return s;
}

Status DecodeWorker::fence(BootstrapChannel& ch, uint64_t room, Status why) {
  auto starts = [&](const char* p) { return why.message().rfind(p, 0) == 0; };
  // Prefill's Abort is sent after its last transfer of the room ended; a refusal came before
  // any; a broken channel means prefill closed it (it writes nothing more for the room).
  if (starts("prefill aborted:") || starts("prefill refused") || starts("prefill side:"))
    return why;
  // Decode gave up (gap timeout, protocol violation, client abort, no answer to the request):
  // prefill may be in the middle of a batch into these pages. Tell it (again: decode_receive
  // may already have) and keep the pages until it answers with its Abort or closes the
  // connection, which it does only once no batch of the room is running, or until its
  // batches have failed by themselves (transfer timeout after submit; a margin for bytes
  // already in the socket).
  (void)ch.send(Abort{room, why.message()}, milliseconds(1000));
  const auto deadline = Clock::now() + milliseconds(config_.transfer_timeout_ms + kFenceMarginMs);
  bool confirmed = false;
  while (!stop_) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    Message m;
    const Status r = ch.recv(&m, std::clamp(left, milliseconds(0), milliseconds(20)));
    if (r.ok()) {
      if (const Abort* a = std::get_if<Abort>(&m); a && a->room_id == room) {
        confirmed = true;
        break;
      }
      continue;  // a keepalive or a chunk report still in flight
    }
    if (r.code() != StatusCode::kDeadlineExceeded) {
      confirmed = true;  // closed: prefill is done with the room
      break;
    }
    if (Clock::now() >= deadline) break;
  }
  fences_.fetch_add(1);
  if (!confirmed && !stop_) {
    fences_timed_out_.fetch_add(1);
    TANDEM_LOG_WARN("PD decode, {}: prefill did not confirm the Abort within {} ms; releasing "
                    "the pages (its transfers have timed out by now)",
                    room_str(room), config_.transfer_timeout_ms + kFenceMarginMs);
  }
  return why;
}

}  // namespace tandem::disagg
