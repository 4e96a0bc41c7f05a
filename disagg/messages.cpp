#include "disagg/messages.h"

#include "disagg/wire.h"

namespace tandem::disagg {
namespace {

constexpr uint32_t kMaxStringBytes = 4096;
constexpr uint32_t kMaxPages = 1u << 22;
constexpr uint32_t kMaxRegions = 4096;
constexpr uint32_t kMaxTopLogprobs = 1024;

Status invalid(const std::string& what) {
  return {StatusCode::kInvalidArgument, "pd message: " + what};
}

void encode_payload(const KvPagesRequest& m, ByteWriter& w) {
  w.u64(m.room_id);
  w.u32(m.page_size);
  w.u32(m.num_layers);
  w.u64(m.bytes_per_token_layer);
  w.u32(m.num_prompt_tokens);
  w.u32(uint32_t(m.page_ids.size()));
  for (int32_t p : m.page_ids) w.i32(p);
  w.u32(uint32_t(m.regions.size()));
  for (const RegionHandle& h : m.regions) encode_region_handle(h, w);
}
void encode_payload(const KvChunkDone& m, ByteWriter& w) {
  w.u64(m.room_id);
  w.u32(m.chunk_index);
  w.u32(m.first_token);
  w.u32(m.num_tokens);
  w.u8(m.last ? 1 : 0);
}
void encode_payload(const PrefillMeta& m, ByteWriter& w) {
  w.u64(m.room_id);
  w.i32(m.first_token);
  w.f32(m.logprob);
  w.u32(m.num_prompt_tokens);
  w.u32(uint32_t(m.top_logprobs.size()));
  for (const TokenLogprob& t : m.top_logprobs) {
    w.i32(t.token);
    w.f32(t.logprob);
  }
}
void encode_payload(const Abort& m, ByteWriter& w) {
  w.u64(m.room_id);
  w.str(m.reason);
}
void encode_payload(const Ack& m, ByteWriter& w) {
  w.u64(m.room_id);
  w.u8(m.ok ? 1 : 0);
  w.str(m.message);
}

bool read_bool(ByteReader& r, bool* out) {
  uint8_t b;
  if (!r.u8(&b) || b > 1) return r.fail();
  *out = b == 1;
  return true;
}

bool decode_payload(ByteReader& r, KvPagesRequest* m) {
  uint32_t n;
  if (!r.u64(&m->room_id) || !r.u32(&m->page_size) || !r.u32(&m->num_layers) ||
      !r.u64(&m->bytes_per_token_layer) || !r.u32(&m->num_prompt_tokens) ||
      !r.count(&n, 4, kMaxPages))
    return false;
  m->page_ids.resize(n);
  for (int32_t& p : m->page_ids)
    if (!r.i32(&p) || p < 0) return r.fail();
  if (!r.count(&n, 8, kMaxRegions)) return false;
  m->regions.resize(n);
  for (RegionHandle& h : m->regions)
    if (!decode_region_handle(r, &h)) return false;
  return true;
}
bool decode_payload(ByteReader& r, KvChunkDone* m) {
  return r.u64(&m->room_id) && r.u32(&m->chunk_index) && r.u32(&m->first_token) &&
         r.u32(&m->num_tokens) && read_bool(r, &m->last);
}
bool decode_payload(ByteReader& r, PrefillMeta* m) {
  uint32_t n;
  if (!r.u64(&m->room_id) || !r.i32(&m->first_token) || !r.f32(&m->logprob) ||
      !r.u32(&m->num_prompt_tokens) || !r.count(&n, 8, kMaxTopLogprobs))
    return false;
  m->top_logprobs.resize(n);
  for (TokenLogprob& t : m->top_logprobs)
    if (!r.i32(&t.token) || !r.f32(&t.logprob)) return false;
  return true;
}
bool decode_payload(ByteReader& r, Abort* m) {
  return r.u64(&m->room_id) && r.str(&m->reason, kMaxStringBytes);
}
bool decode_payload(ByteReader& r, Ack* m) {
  return r.u64(&m->room_id) && read_bool(r, &m->ok) && r.str(&m->message, kMaxStringBytes);
}

template <class T>
Status decode_as(std::span<const uint8_t> payload, Message* out) {
  ByteReader r(payload);
  T m;
  if (!decode_payload(r, &m)) return invalid("truncated or malformed payload");
  if (r.remaining() != 0) return invalid("trailing bytes after payload");
  *out = std::move(m);
  return {};
}

}  // namespace

void encode_region_handle(const RegionHandle& h, ByteWriter& w) {
  w.str(h.backend);
  w.str(h.endpoint);
  w.u64(h.region_id);
  w.u64(h.length_bytes);
  w.u8(uint8_t(h.kind));
  w.i32(h.device_index);
  w.bytes(h.ipc_handle);
  w.u64(h.ipc_offset_bytes);
}

bool decode_region_handle(ByteReader& r, RegionHandle* h) {
  uint8_t kind;
  if (!r.str(&h->backend, kMaxStringBytes) || !r.str(&h->endpoint, kMaxStringBytes) ||
      !r.u64(&h->region_id) || !r.u64(&h->length_bytes) || !r.u8(&kind) ||
      !r.i32(&h->device_index) || !r.bytes(&h->ipc_handle, 256) ||
      !r.u64(&h->ipc_offset_bytes))
    return false;
  if (kind > uint8_t(MemoryKind::kDevice)) return r.fail();
  h->kind = MemoryKind(kind);
  return true;
}

std::vector<uint8_t> encode_frame(const Message& message) {
  ByteWriter w;
  w.u32(kFrameMagic);
  w.u16(kProtocolVersion);
  w.u16(uint16_t(message.index() + 1));  // variant order == MessageType values
  w.u32(0);                              // payload length, patched below
  std::visit([&](const auto& m) { encode_payload(m, w); }, message);
  std::vector<uint8_t>& buf = w.buffer();
  size_t payload = buf.size() - kFrameHeaderBytes;
  TANDEM_CHECK(payload <= kMaxFramePayloadBytes, "pd message of {} bytes exceeds the {} limit",
               payload, kMaxFramePayloadBytes);
  for (int i = 0; i < 4; ++i) buf[8 + i] = uint8_t(payload >> (8 * i));
  return std::move(buf);
}

Status decode_frame_header(std::span<const uint8_t> header, MessageType* type,
                           uint32_t* payload_bytes) {
  if (header.size() < kFrameHeaderBytes) return invalid("truncated frame header");
  ByteReader r(header.first(kFrameHeaderBytes));
  uint32_t magic = 0, length = 0;
  uint16_t version = 0, t = 0;
  r.u32(&magic);
  r.u16(&version);
  r.u16(&t);
  r.u32(&length);
  if (magic != kFrameMagic) return invalid("bad magic (not a tandem PD peer?)");
  if (version != kProtocolVersion)
    return invalid("protocol version " + std::to_string(version) + ", expected " +
                   std::to_string(kProtocolVersion));
  if (t < 1 || t > uint16_t(MessageType::kAck))
    return invalid("unknown message type " + std::to_string(t));
  if (length > kMaxFramePayloadBytes) return invalid("payload length over the limit");
  *type = MessageType(t);
  *payload_bytes = length;
  return {};
}

Status decode_frame(std::span<const uint8_t> frame, Message* out) {
  MessageType type;
  uint32_t length;
  if (Status s = decode_frame_header(frame, &type, &length); !s.ok()) return s;
  if (frame.size() != kFrameHeaderBytes + size_t(length))
    return invalid("frame is " + std::to_string(frame.size()) + " bytes, header says " +
                   std::to_string(kFrameHeaderBytes + size_t(length)));
  std::span<const uint8_t> payload = frame.subspan(kFrameHeaderBytes);
  switch (type) {
    case MessageType::kKvPagesRequest: return decode_as<KvPagesRequest>(payload, out);
    case MessageType::kKvChunkDone: return decode_as<KvChunkDone>(payload, out);
    case MessageType::kPrefillMeta: return decode_as<PrefillMeta>(payload, out);
    case MessageType::kAbort: return decode_as<Abort>(payload, out);
    case MessageType::kAck: return decode_as<Ack>(payload, out);
  }
  return invalid("unknown message type");
}

}  // namespace tandem::disagg
