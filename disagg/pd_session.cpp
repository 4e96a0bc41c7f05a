#include "disagg/pd_session.h"

#include <algorithm>
#include <string>

namespace tandem::disagg {
namespace {

std::string room_str(uint64_t room) { return fmt::format("room {:#x}", room); }

// Tells the peer we give up on `room` (best effort: it may be gone) and returns `why`.
Status abort_room(BootstrapChannel& ch, uint64_t room, Status why) {
  (void)ch.send(Abort{room, why.message()}, std::chrono::milliseconds(1000));
  return why;
}

}  // namespace

Status decode_send_request(BootstrapChannel& ch, const KvPagesRequest& request,
                           std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  if (Status s = ch.send(request, timeout); !s.ok()) return s;
  Message m;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (Status s = ch.recv(&m, std::max(left, std::chrono::milliseconds(0))); !s.ok())
    return {s.code(), "bootstrap: no answer to the KV pages request: " + s.message()};
  const Ack* ack = std::get_if<Ack>(&m);
  if (!ack || ack->room_id != request.room_id)
    return abort_room(ch, request.room_id,
                      {StatusCode::kInvalidArgument, "bootstrap: unexpected answer for " +
                                                         room_str(request.room_id)});
  if (!ack->ok) return {StatusCode::kAborted, "prefill refused the request: " + ack->message};
  return {};
}

Status decode_receive(BootstrapChannel& ch, const KvPagesRequest& request,
                      std::chrono::milliseconds gap_timeout, PrefillMeta* meta,
                      const std::function<void(const KvChunkDone&)>& on_chunk,
                      const std::function<bool()>& cancelled) {
  using std::chrono::milliseconds;
  uint32_t tokens = 0, chunk = 0;
  bool last_seen = false;
  // Without a cancel check one wait covers the whole gap; with one, slices of 20 ms (a
  // timed-out wait consumes nothing, so slicing does not disturb the stream).
  const milliseconds slice = cancelled ? std::min(gap_timeout, milliseconds(20)) : gap_timeout;
  for (;;) {
    Message m;
    const auto gap_deadline = Clock::now() + gap_timeout;
    Status s;
    for (;;) {
      if (cancelled && cancelled())
        return abort_room(ch, request.room_id, {StatusCode::kAborted, "aborted by the client"});
      const auto left =
          std::chrono::duration_cast<milliseconds>(gap_deadline - Clock::now());
      s = ch.recv(&m, std::clamp(left, milliseconds(0), slice));
      if (s.code() != StatusCode::kDeadlineExceeded || Clock::now() >= gap_deadline) break;
    }
    if (!s.ok()) {
      if (s.code() == StatusCode::kDeadlineExceeded)
        return abort_room(ch, request.room_id,
                          {s.code(), "prefill sent nothing for " +
                                         std::to_string(gap_timeout.count()) + " ms"});
      return {s.code(), "prefill side: " + s.message()};
    }
    if (const Abort* a = std::get_if<Abort>(&m)) {
      if (a->room_id == request.room_id)
        return {StatusCode::kAborted, "prefill aborted: " + a->reason};
      return abort_room(ch, request.room_id,
                        {StatusCode::kInvalidArgument, "abort for another room"});
    }
    if (const Ack* a = std::get_if<Ack>(&m);
        a && a->ok && a->room_id == request.room_id && a->message == kKeepalive) {
      continue;
    }
    if (const KvChunkDone* d = std::get_if<KvChunkDone>(&m)) {
      if (d->room_id != request.room_id)
        return abort_room(ch, request.room_id,
                          {StatusCode::kInvalidArgument,
                           "chunk for " + room_str(d->room_id) + ", expected " +
                               room_str(request.room_id)});
      if (last_seen || d->chunk_index != chunk || d->first_token != tokens ||
          uint64_t(tokens) + d->num_tokens > request.num_prompt_tokens)
        return abort_room(ch, request.room_id,
                          {StatusCode::kInvalidArgument, "chunk out of order"});
      ++chunk;
      tokens += d->num_tokens;
      last_seen = d->last;
      if (on_chunk) on_chunk(*d);
      continue;
    }
    if (const PrefillMeta* p = std::get_if<PrefillMeta>(&m)) {
      if (p->room_id != request.room_id)
        return abort_room(ch, request.room_id,
                          {StatusCode::kInvalidArgument,
                           "prefill metadata for " + room_str(p->room_id) + ", expected " +
                               room_str(request.room_id)});
      if (tokens != request.num_prompt_tokens || p->num_prompt_tokens != tokens)
        return abort_room(ch, request.room_id,
                          {StatusCode::kInvalidArgument,
                           fmt::format("prefill metadata after {} of {} prompt tokens", tokens,
                                       request.num_prompt_tokens)});
      *meta = *p;
      return {};
    }
    return abort_room(ch, request.room_id,
                      {StatusCode::kInvalidArgument, "unexpected message from prefill"});
  }
}

Status prefill_receive_request(BootstrapChannel& ch, const KvLayout& layout,
                               std::chrono::milliseconds timeout, KvPagesRequest* request) {
  Message m;
  if (Status s = ch.recv(&m, timeout); !s.ok())
    return {s.code(), "bootstrap: no KV pages request: " + s.message()};
  KvPagesRequest* r = std::get_if<KvPagesRequest>(&m);
  if (!r) return {StatusCode::kInvalidArgument, "bootstrap: expected a KV pages request"};
  std::string why;
  const uint64_t pages_needed =
      layout.page_size ? (uint64_t(r->num_prompt_tokens) + layout.page_size - 1) / layout.page_size
                       : 0;
  if (r->page_size != layout.page_size || r->num_layers != layout.num_layers ||
      r->bytes_per_token_layer != layout.bytes_per_token_layer)
    why = fmt::format("KV layout mismatch: decode has page size {}, {} layers, {} bytes per "
                      "token-layer; prefill has {}, {}, {}",
                      r->page_size, r->num_layers, r->bytes_per_token_layer, layout.page_size,
                      layout.num_layers, layout.bytes_per_token_layer);
  else if (r->regions.size() != r->num_layers)
    why = "need one region per layer";
  else if (r->page_ids.size() < pages_needed)
    why = fmt::format("{} pages cannot hold {} prompt tokens", r->page_ids.size(),
                      r->num_prompt_tokens);
  Status reply = ch.send(Ack{r->room_id, why.empty(), why}, timeout);
  if (!why.empty()) return {StatusCode::kInvalidArgument, why};
  if (!reply.ok()) return reply;
  *request = std::move(*r);
  return {};
}

Status prefill_chunk_done(BootstrapChannel& ch, const KvChunkDone& done,
                          std::chrono::milliseconds timeout) {
  if (Status s = ch.send(done, timeout); !s.ok()) return {s.code(), "decode side: " + s.message()};
  Message m;
  Status s = ch.recv(&m, std::chrono::milliseconds(0));  // anything from decode?
  if (s.code() == StatusCode::kDeadlineExceeded) return {};
  if (!s.ok()) return {s.code(), "decode side: " + s.message()};
  if (const Abort* a = std::get_if<Abort>(&m))
    return {StatusCode::kAborted, "decode aborted: " + a->reason};
  return {StatusCode::kInvalidArgument, "unexpected message from decode"};
}

}  // namespace tandem::disagg
