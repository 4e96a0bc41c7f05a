#include "runtime/request.h"

namespace tandem::runtime {

std::string_view state_name(RequestState state) {
  switch (state) {
    case RequestState::kWaiting: return "waiting";
    case RequestState::kPrefilling: return "prefilling";
    case RequestState::kDecoding: return "decoding";
    case RequestState::kFinished: return "finished";
    case RequestState::kAborted: return "aborted";
    case RequestState::kAwaitingKv: return "awaiting_kv";
    case RequestState::kTransferring: return "transferring";
  }
  return "?";
}

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "?";
}

}  // namespace tandem::runtime
