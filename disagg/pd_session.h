// One room's control exchange on a bootstrap channel, both sides, with every failure the
// issue lists turned into a returned Status: no answer in time (kDeadlineExceeded), the peer
// gone (kUnavailable), the peer's Abort (kAborted, with its reason), a message for another
// room or out of order (kInvalidArgument; the other side is sent an Abort). The caller frees
// the room's pages on any error. Functions here block the calling thread up to their timeout.
#pragma once

#include <chrono>
#include <functional>

#include "disagg/bootstrap.h"

namespace tandem::disagg {

// What the prefill side's KV cache looks like; a request must match it.
struct KvLayout {
  uint32_t page_size = 0;
  uint32_t num_layers = 0;
  uint64_t bytes_per_token_layer = 0;
};

// Decode: sends the request and waits for the prefill side's Ack.
Status decode_send_request(BootstrapChannel& ch, const KvPagesRequest& request,
                           std::chrono::milliseconds timeout);

// Prefill → decode while a room waits for its prefill (queued or computing): Ack(room, ok,
// kKeepalive) restarts decode's gap timeout, which so bounds silence, not prefill time.
inline constexpr const char* kKeepalive = "keepalive";

// Decode: receives KvChunkDone messages (in order, covering the prompt) until PrefillMeta
// for request.room_id; `gap_timeout` bounds the wait for each message. on_chunk sees each
// chunk (to start using pages early, or for metrics). `cancelled`, when given, is polled
// every few milliseconds: once it returns true, prefill is sent Abort(room, "aborted by the
// client") and the result is kAborted.
Status decode_receive(BootstrapChannel& ch, const KvPagesRequest& request,
                      std::chrono::milliseconds gap_timeout, PrefillMeta* meta,
                      const std::function<void(const KvChunkDone&)>& on_chunk = {},
                      const std::function<bool()>& cancelled = {});

// Prefill: receives one KvPagesRequest, checks it against `layout` (and that its pages hold
// the prompt), and answers Ack ok or Ack with the reason.
Status prefill_receive_request(BootstrapChannel& ch, const KvLayout& layout,
                               std::chrono::milliseconds timeout, KvPagesRequest* request);

// Prefill: after a chunk's transfer batch completed, tells decode; between chunks, checks
// (without blocking) whether decode sent an Abort.
Status prefill_chunk_done(BootstrapChannel& ch, const KvChunkDone& done,
                          std::chrono::milliseconds timeout);

}  // namespace tandem::disagg
