#include "disagg/tcp_transport.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "core/log.h"
#include "disagg/socket.h"
#include "disagg/staging.h"
#include "disagg/transfer_batches.h"
#include "disagg/wire.h"

namespace tandem::disagg {
namespace {

constexpr uint32_t kSegmentMagic = 0x47455354;  // "TSEG"
constexpr uint32_t kAckMagic = 0x4b434154;      // "TACK"
constexpr uint32_t kSegWrite = 1, kSegBatchEnd = 2;
constexpr size_t kSegmentHeaderBytes = 40;  // magic, kind, batch, region, offset, length
constexpr uint32_t kMaxAckMessageBytes = 1024;
constexpr size_t kDrainChunkBytes = 64 << 10;

// The 40-byte header in front of every segment; for a batch end, `length` is the number of
// writes the batch held, so the receiver can tell a lost segment.
struct SegmentHeader {
  uint32_t kind = 0;
  uint64_t batch = 0, region = 0, offset = 0, length = 0;
};

std::vector<uint8_t> encode_segment(const SegmentHeader& h) {
  ByteWriter w;
  w.u32(kSegmentMagic);
  w.u32(h.kind);
  w.u64(h.batch);
  w.u64(h.region);
  w.u64(h.offset);
  w.u64(h.length);
  return std::move(w.buffer());
}

struct Region {
  uint8_t* ptr = nullptr;
  uint64_t length = 0;
  MemoryKind kind = MemoryKind::kHost;
  int device = 0;
};

using Batch = TransferBatch;

struct Peer {
  std::string endpoint;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Batch>> queue;
  std::thread worker;
  Socket sock;  // only the worker touches it
};

struct Conn {
  Socket sock;
  std::thread thread;
  std::atomic<bool> done{false};
};

// A pinned buffer freed on scope exit.
struct StagingBuffer {
  explicit StagingBuffer(size_t bytes) : ptr(static_cast<uint8_t*>(staging_alloc_host(bytes))) {}
  ~StagingBuffer() { staging_free_host(ptr); }
  uint8_t* ptr;
};

class TcpTransferEngine final : public TransferEngine {
 public:
  explicit TcpTransferEngine(const TransferConfig& config) : config_(config) {
    std::random_device rd;
    next_region_id_ = (uint64_t(rd()) << 32 | rd()) & 0x7fffffffffff0000ull;
  }

  Status start() {
    uint16_t port = 0;
    if (Status s = tcp_listen(config_.listen_host, config_.listen_port, &listener_, &port);
        !s.ok())
      return s;
    endpoint_ = advertised_endpoint(config_, port);
    accept_thread_ = std::thread([this] { accept_loop(); });
    return {};
  }

  ~TcpTransferEngine() override {
    stop_ = true;
    batches_.cancel_all();
    if (accept_thread_.joinable()) accept_thread_.join();
    {
      std::lock_guard lock(conns_mu_);
      for (auto& c : conns_) c->sock.shutdown();
    }
    for (auto& c : conns_) c->thread.join();
    std::lock_guard lock(peers_mu_);
    for (auto& [ep, p] : peers_) {
      {
        std::lock_guard pl(p->mu);
        p->cv.notify_all();
      }
      p->worker.join();
    }
  }

  std::string backend() const override { return "tcp"; }

  Status register_region(void* ptr, size_t length, MemoryKind kind, int device,
                         RegionHandle* out) override {
    if (ptr == nullptr || length == 0)
      return {StatusCode::kInvalidArgument, "register_region: null pointer or zero length"};
    if (kind == MemoryKind::kDevice && !staging_has_cuda())
      return {StatusCode::kInvalidArgument, "register_region: device memory needs a CUDA build"};
    std::unique_lock lock(regions_mu_);
    uint64_t id = ++next_region_id_;
    regions_[id] = {static_cast<uint8_t*>(ptr), length, kind, device};
    *out = RegionHandle{};
    out->backend = "tcp";
    out->endpoint = endpoint_;
    out->region_id = id;
    out->length_bytes = length;
    out->kind = kind;
    out->device_index = device;
    return {};
  }

  Status unregister_region(uint64_t id) override {
    std::unique_lock lock(regions_mu_);  // waits for segments reading or writing it
    if (regions_.erase(id) == 0)
      return {StatusCode::kNotFound, "unregister_region: unknown region " + std::to_string(id)};
    return {};
  }

  Status submit(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                BatchId* out) override {
    if (Status s = check_peer_destinations("tcp", dst); !s.ok()) return s;
    {
      std::shared_lock lock(regions_mu_);
      if (Status s = check_writes(dst, writes, regions_); !s.ok()) return s;
    }
    auto batch = batches_.add(dst, writes, std::chrono::milliseconds(config_.transfer_timeout_ms));
    Peer& peer = peer_for(dst[0].endpoint);
    {
      std::lock_guard lock(peer.mu);
      peer.queue.push_back(batch);
    }
    peer.cv.notify_one();
    *out = batch->id;
    return {};
  }

  Status poll(BatchId id, bool* done) override { return batches_.poll(id, done); }
  Status wait(BatchId id, std::chrono::milliseconds timeout) override {
    return batches_.wait(id, timeout);
  }
  void cancel(BatchId id) override { batches_.cancel(id); }


 private:

  Peer& peer_for(const std::string& endpoint) {
    std::lock_guard lock(peers_mu_);
    auto& slot = peers_[endpoint];
    if (!slot) {
      slot = std::make_unique<Peer>();
      slot->endpoint = endpoint;
      Peer* p = slot.get();
      p->worker = std::thread([this, p] { peer_loop(*p); });
    }
    return *slot;
  }

  static void finish(Batch& b, Status s) { finish_batch(b, std::move(s)); }

  void peer_loop(Peer& peer) {
    for (;;) {
      std::shared_ptr<Batch> b;
      {
        std::unique_lock lock(peer.mu);
        peer.cv.wait(lock, [&] { return stop_ || !peer.queue.empty(); });
        if (stop_) {
          for (auto& q : peer.queue) finish(*q, {StatusCode::kAborted, "transfer engine stopped"});
          peer.queue.clear();
          return;
        }
        b = peer.queue.front();
        peer.queue.pop_front();
      }
      if (b->cancel) continue;
      Status s = Clock::now() >= b->deadline
                     ? Status{StatusCode::kDeadlineExceeded, "transfer timed out in the queue"}
                     : run_batch(peer, *b);
      if (!s.ok()) {
        peer.sock.close();  // the stream may be mid-segment: start clean next time
        if (b->cancel) s = {StatusCode::kAborted, "transfer cancelled"};
        TANDEM_LOG_DEBUG("pd tcp: batch {} to {} failed: {}", b->id, peer.endpoint, s.message());
      }
      finish(*b, s);
    }
  }

  Status run_batch(Peer& peer, Batch& b) {
    if (!peer.sock.valid()) {
      auto deadline = std::min(b.deadline, Clock::now() + std::chrono::milliseconds(
                                                              config_.connect_timeout_ms));
      Socket s;
      if (Status st = tcp_connect(peer.endpoint, deadline, &s); !st.ok()) return st;
      if (Status st = client_handshake(s, config_.token, deadline); !st.ok()) return st;
      peer.sock = std::move(s);
    }
    std::unique_ptr<StagingBuffer> staging;
    std::shared_lock lock(regions_mu_);
    for (const TransferWrite& w : b.writes) {
      if (b.cancel) return {StatusCode::kAborted, "transfer cancelled"};
      auto it = regions_.find(w.src_region);
      if (it == regions_.end())
        return {StatusCode::kInvalidArgument, "source region unregistered during the transfer"};
      const Region& src = it->second;
      SegmentHeader h{kSegWrite, b.id, b.dst[w.dst_index].region_id, w.dst_offset_bytes,
                      w.length_bytes};
      if (Status st = send_all(peer.sock, encode_segment(h), b.deadline, &b.cancel); !st.ok())
        return st;
      const uint8_t* p = src.ptr + w.src_offset_bytes;
      if (src.kind == MemoryKind::kHost) {
        if (Status st = send_all(peer.sock, {p, w.length_bytes}, b.deadline, &b.cancel); !st.ok())
          return st;
        continue;
      }
      if (!staging) staging = std::make_unique<StagingBuffer>(config_.staging_bytes);
      for (uint64_t done = 0; done < w.length_bytes;) {
        size_t n = size_t(std::min<uint64_t>(config_.staging_bytes, w.length_bytes - done));
        if (Status st = staging_copy_to_host(staging->ptr, p + done, n, src.device); !st.ok())
          return st;
        if (Status st = send_all(peer.sock, {staging->ptr, n}, b.deadline, &b.cancel); !st.ok())
          return st;
        done += n;
      }
    }
    lock.unlock();
    SegmentHeader end{kSegBatchEnd, b.id, 0, 0, b.writes.size()};
    if (Status st = send_all(peer.sock, encode_segment(end), b.deadline, &b.cancel); !st.ok())
      return st;
    // Ack: magic u32, batch u64, code u32, message (u32 length + bytes).
    uint8_t head[20];
    if (Status st = recv_all(peer.sock, head, b.deadline, &b.cancel); !st.ok()) return st;
    ByteReader r(head);
    uint32_t magic = 0, code = 0, len = 0;
    uint64_t batch = 0;
    r.u32(&magic);
    r.u64(&batch);
    r.u32(&code);
    r.u32(&len);
    if (magic != kAckMagic || batch != b.id || len > kMaxAckMessageBytes ||
        code > uint32_t(StatusCode::kInternal))
      return {StatusCode::kInternal, "pd tcp: malformed acknowledgement from " + peer.endpoint};
    std::string msg(len, '\0');
    if (Status st = recv_all(peer.sock, {reinterpret_cast<uint8_t*>(msg.data()), len},
                             b.deadline, &b.cancel);
        !st.ok())
      return st;
    if (code != 0) return {StatusCode(code), "peer " + peer.endpoint + " rejected: " + msg};
    return {};
  }

  void accept_loop() {
    while (!stop_) {
      Socket s;
      if (Status st = tcp_accept(listener_, std::chrono::milliseconds(50), &s); !st.ok()) {
        TANDEM_LOG_WARN("pd tcp: {}", st.message());
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      std::lock_guard lock(conns_mu_);
      for (auto it = conns_.begin(); it != conns_.end();) {  // reap finished connections
        if ((*it)->done) {
          (*it)->thread.join();
          it = conns_.erase(it);
        } else {
          ++it;
        }
      }
      if (!s.valid()) continue;
      auto c = std::make_unique<Conn>();
      c->sock = std::move(s);
      Conn* cp = c.get();
      c->thread = std::thread([this, cp] {
        serve_connection(*cp);
        cp->done = true;
      });
      conns_.push_back(std::move(c));
    }
    listener_.close();
  }

  Status send_ack(const Socket& s, uint64_t batch, const Status& status) {
    ByteWriter w;
    w.u32(kAckMagic);
    w.u64(batch);
    w.u32(uint32_t(status.code()));
    w.str(status.message().substr(0, kMaxAckMessageBytes));
    return send_all(s, w.buffer(), Clock::now() + std::chrono::milliseconds(
                                                      config_.transfer_timeout_ms), &stop_);
  }

  // Reads and throws away `length` bytes of a rejected segment, so the connection stays in
  // step and the sender gets a clear error in the batch's ack.
  Status drain(const Socket& s, uint64_t length, Clock::time_point deadline) {
    std::vector<uint8_t> scratch(std::min<uint64_t>(length, kDrainChunkBytes));
    while (length > 0) {
      size_t n = size_t(std::min<uint64_t>(length, scratch.size()));
      if (Status st = recv_all(s, {scratch.data(), n}, deadline, &stop_); !st.ok()) return st;
      length -= n;
    }
    return {};
  }

  void serve_connection(Conn& c) {
    const Socket& s = c.sock;
    auto handshake_deadline = Clock::now() + std::chrono::milliseconds(config_.connect_timeout_ms);
    if (Status st = server_handshake(s, config_.token, handshake_deadline); !st.ok()) {
      TANDEM_LOG_WARN("pd tcp: refused a connection: {}", st.message());
      return;
    }
    std::unique_ptr<StagingBuffer> staging;
    uint64_t current_batch = 0, writes_seen = 0;
    Status batch_error;
    while (!stop_) {
      Status ready = wait_readable(s, Clock::now() + std::chrono::seconds(1), &stop_);
      if (ready.code() == StatusCode::kDeadlineExceeded) continue;  // idle connection
      if (!ready.ok()) return;
      auto deadline = Clock::now() + std::chrono::milliseconds(config_.transfer_timeout_ms);
      uint8_t raw[kSegmentHeaderBytes];
      if (!recv_all(s, raw, deadline, &stop_).ok()) return;
      ByteReader r(raw);
      uint32_t magic = 0;
      SegmentHeader h;
      r.u32(&magic);
      r.u32(&h.kind);
      r.u64(&h.batch);
      r.u64(&h.region);
      r.u64(&h.offset);
      r.u64(&h.length);
      if (magic != kSegmentMagic || (h.kind != kSegWrite && h.kind != kSegBatchEnd)) {
        TANDEM_LOG_WARN("pd tcp: malformed segment; closing the connection");
        return;
      }
      if (h.batch != current_batch) {
        current_batch = h.batch;
        writes_seen = 0;
        batch_error = {};
      }
      if (h.kind == kSegBatchEnd) {
        if (batch_error.ok() && writes_seen != h.length)
          batch_error = {StatusCode::kInternal, "segment count mismatch"};
        if (!send_ack(s, h.batch, batch_error).ok()) return;
        current_batch = 0;
        continue;
      }
      ++writes_seen;
      std::shared_lock lock(regions_mu_);
      auto it = regions_.find(h.region);
      if (batch_error.ok() && it == regions_.end())
        batch_error = {StatusCode::kInvalidArgument,
                       "write into unknown region " + std::to_string(h.region)};
      else if (batch_error.ok() && !range_in_region(h.offset, h.length, it->second.length))
        batch_error = {StatusCode::kOutOfRange,
                       fmt::format("write [{}, +{}) outside region {} of {} bytes", h.offset,
                                   h.length, h.region, it->second.length)};
      if (!batch_error.ok()) {
        lock.unlock();
        if (!drain(s, h.length, deadline).ok()) return;
        continue;
      }
      const Region& dst = it->second;
      uint8_t* p = dst.ptr + h.offset;
      if (dst.kind == MemoryKind::kHost) {
        if (!recv_all(s, {p, h.length}, deadline, &stop_).ok()) return;
        continue;
      }
      if (!staging) staging = std::make_unique<StagingBuffer>(config_.staging_bytes);
      for (uint64_t done = 0; done < h.length;) {
        size_t n = size_t(std::min<uint64_t>(config_.staging_bytes, h.length - done));
        if (!recv_all(s, {staging->ptr, n}, deadline, &stop_).ok()) return;
        if (Status st = staging_copy_to_device(p + done, staging->ptr, n, dst.device); !st.ok()) {
          batch_error = st;
        }
        done += n;
      }
    }
  }

  TransferConfig config_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};

  std::shared_mutex regions_mu_;
  std::unordered_map<uint64_t, Region> regions_;
  uint64_t next_region_id_ = 0;

  BatchTable batches_;

  std::mutex peers_mu_;
  std::unordered_map<std::string, std::unique_ptr<Peer>> peers_;

  Socket listener_;
  std::thread accept_thread_;
  std::mutex conns_mu_;
  std::list<std::unique_ptr<Conn>> conns_;
};

}  // namespace

std::unique_ptr<TransferEngine> make_tcp_transfer_engine(const TransferConfig& config,
                                                         Status* status) {
  auto engine = std::make_unique<TcpTransferEngine>(config);
  *status = engine->start();
  if (!status->ok()) return nullptr;
  return engine;
}

}  // namespace tandem::disagg
