// A request's lifecycle (docs/runtime.md):
//
//   waiting ──admit──▶ prefilling ──last chunk──▶ decoding ──stop──▶ finished
//      ▲                                            │
//      └────────────── retract (preemption) ◀───────┘      any state ──abort──▶ aborted
//
// A retracted request keeps its output; on re-admission it recomputes prompt + output (most of
// it usually a prefix-cache hit) and continues decoding where it stopped.
//
// PD disaggregation (docs/disagg.md "Roles") adds two states:
//   decode role:  awaiting KV (pages reserved, prompt KV written by a prefill server)
//                 ──KV and first token arrived──▶ decoding
//   prefill role: prefilling ──first token sampled──▶ transferring (pages held until the PD
//                 layer is done sending them) ──released──▶ finished
#pragma once

#include <cstdint>
#include <string_view>

namespace tandem::runtime {

using RequestId = uint64_t;

enum class RequestState : uint8_t {
  kWaiting, kPrefilling, kDecoding, kFinished, kAborted, kAwaitingKv, kTransferring };

enum class FinishReason : uint8_t {
  kNone,
  kStop,    // EOS, a stop token id or a stop string
  kLength,  // max_tokens, or the context / KV pool limit
  kAbort,   // aborted by the client
  kError,   // the engine failed; the message says why
};

std::string_view state_name(RequestState state);
std::string_view finish_reason_name(FinishReason reason);  // "stop", "length", ...

inline bool is_terminal(RequestState s) {
  return s == RequestState::kFinished || s == RequestState::kAborted;
}

}  // namespace tandem::runtime
