// PD control messages (DESIGN.md "Request flow (PD)"): plain structs with one serializer
// (STYLE.md 12). Every message travels in one frame:
//
//   magic u32 "TDPD" | version u16 | type u16 | payload_bytes u32 | payload
//
// little-endian. decode_frame() checks magic, version, type, length and every field, and
// returns a Status for anything malformed or truncated; it never reads outside its input.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/error.h"

namespace tandem::disagg {

class ByteWriter;
class ByteReader;

inline constexpr uint32_t kFrameMagic = 0x44504454;  // "TDPD" little-endian
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kFrameHeaderBytes = 12;
inline constexpr uint32_t kMaxFramePayloadBytes = 16u << 20;

enum class MemoryKind : uint8_t { kHost = 0, kDevice = 1 };

// A registered memory region as a peer sees it: enough to address writes into it. Made by
// TransferEngine::register_region on the owning side and sent to the writer in KvPagesRequest.
struct RegionHandle {
  std::string backend;        // "tcp", "cuda_ipc", "ucx"
  std::string endpoint;       // tcp, ucx: "host:port" of the owner's listener
  uint64_t region_id = 0;     // the owner's id, unique per engine
  uint64_t length_bytes = 0;
  MemoryKind kind = MemoryKind::kHost;
  int32_t device_index = 0;              // kDevice: the owner's GPU
  std::vector<uint8_t> ipc_handle;       // cuda_ipc: cudaIpcMemHandle_t bytes;
                                         // ucx: mapped address u64 | packed rkey (<= 256)
  uint64_t ipc_offset_bytes = 0;         // cuda_ipc: region start minus allocation base
  bool operator==(const RegionHandle&) const = default;
};

// Decode → prefill, through the bootstrap endpoint: where to put the KV of room `room_id`.
// Token t of layer l goes to regions[l] at byte
// (page_ids[t / page_size] * page_size + t % page_size) * bytes_per_token_layer.
struct KvPagesRequest {
  uint64_t room_id = 0;
  uint32_t page_size = 0;             // tokens per page
  uint32_t num_layers = 0;
  uint64_t bytes_per_token_layer = 0; // 576 * dtype bytes for V3's latent cache
  uint32_t num_prompt_tokens = 0;
  std::vector<int32_t> page_ids;      // decode-side pages, in token order
  std::vector<RegionHandle> regions;  // one per layer
  bool operator==(const KvPagesRequest&) const = default;
};

// Prefill → decode: tokens [first_token, first_token + num_tokens) have landed in the pages.
struct KvChunkDone {
  uint64_t room_id = 0;
  uint32_t chunk_index = 0;
  uint32_t first_token = 0;
  uint32_t num_tokens = 0;
  bool last = false;
  bool operator==(const KvChunkDone&) const = default;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  bool operator==(const TokenLogprob&) const = default;
};

// Prefill → decode after the last chunk: the first sampled token. Decode checks room_id
// against the room it reserved pages for before using them.
struct PrefillMeta {
  uint64_t room_id = 0;
  int32_t first_token = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;
  uint32_t num_prompt_tokens = 0;
  bool operator==(const PrefillMeta&) const = default;
};

// Either side → the other: stop room `room_id`, free its pages.
struct Abort {
  uint64_t room_id = 0;
  std::string reason;
  bool operator==(const Abort&) const = default;
};

// Bootstrap reply to KvPagesRequest and generic ack: ok, or an error the peer can show.
struct Ack {
  uint64_t room_id = 0;
  bool ok = true;
  std::string message;
  bool operator==(const Ack&) const = default;
};

using Message = std::variant<KvPagesRequest, KvChunkDone, PrefillMeta, Abort, Ack>;

// The message type in the frame header; values are part of the wire format.
enum class MessageType : uint16_t {
  kKvPagesRequest = 1, kKvChunkDone = 2, kPrefillMeta = 3, kAbort = 4, kAck = 5 };

std::vector<uint8_t> encode_frame(const Message& message);

// Parses the 12-byte header: on success sets *payload_bytes (the bytes that follow it).
Status decode_frame_header(std::span<const uint8_t> header, MessageType* type,
                           uint32_t* payload_bytes);
// Decodes one whole frame (header + payload, exactly). Trailing bytes are an error.
Status decode_frame(std::span<const uint8_t> frame, Message* out);

// RegionHandle alone (also used inside messages).
void encode_region_handle(const RegionHandle& handle, ByteWriter& w);
bool decode_region_handle(ByteReader& r, RegionHandle* out);

}  // namespace tandem::disagg
