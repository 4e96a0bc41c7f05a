#include "disagg/ucx_transport.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/log.h"
#include "disagg/socket.h"
#include "disagg/staging.h"
#include "disagg/transfer_batches.h"
#include "disagg/wire.h"

namespace tandem::disagg {
namespace {

// Active message ids; the header layouts are part of the wire format.
constexpr unsigned kAmHello = 1;      // header: cookie u64; data: the token
constexpr unsigned kAmVerdict = 2;    // header: cookie u64, accepted u8; data: worker address
constexpr unsigned kAmCommit = 3;     // header: cookie u64, batch u64; data: count u32, ranges
constexpr unsigned kAmCommitAck = 4;  // header: cookie u64, batch u64, code u32; data: message
constexpr size_t kMaxTokenBytes = 4096;
constexpr size_t kMaxHandleBytes = 256;  // decode_region_handle's cap on ipc_handle
constexpr size_t kCommitRangeBytes = 24;  // region u64, offset u64, length u64
constexpr uint32_t kMaxCommitRanges = 1u << 16;
constexpr size_t kMaxAckMessageBytes = 1024;
constexpr auto kCloseTimeout = std::chrono::seconds(2);

Status ucs_error(StatusCode code, const std::string& what, ucs_status_t s) {
  return {code, "pd ucx: " + what + ": " + ucs_status_string(s)};
}

// "host:port" or "[v6]:port" to a socket address; passive for the listener.
Status resolve(const std::string& host, uint16_t port, bool passive, sockaddr_storage* out,
               socklen_t* out_len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string port_str = std::to_string(port);
  if (int e = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_str.c_str(), &hints, &res))
    return {StatusCode::kUnavailable, "pd ucx: resolve " + host + ": " + gai_strerror(e)};
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *out_len = res->ai_addrlen;
  freeaddrinfo(res);
  return {};
}

Status split_endpoint(const std::string& endpoint, std::string* host, uint16_t* port) {
  size_t colon = endpoint.rfind(':');
  Status bad{StatusCode::kInvalidArgument, "pd ucx: endpoint '" + endpoint + "' is not host:port"};
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) return bad;
  *host = endpoint.substr(0, colon);
  if (host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  unsigned long p = 0;
  for (char c : endpoint.substr(colon + 1)) {
    if (c < '0' || c > '9' || (p = p * 10 + unsigned(c - '0')) > 65535) return bad;
  }
  if (p == 0) return bad;
  *port = uint16_t(p);
  return {};
}

std::vector<uint8_t> u64s(std::initializer_list<uint64_t> values) {
  ByteWriter w;
  for (uint64_t v : values) w.u64(v);
  return std::move(w.buffer());
}

struct Region {
  uint8_t* ptr = nullptr;
  uint64_t length = 0;
  MemoryKind kind = MemoryKind::kHost;
  int device = 0;
  uint8_t* mirror = nullptr;  // kDevice: the pinned host copy peers write into, we put from
  ucp_mem_h memh = nullptr;   // maps ptr (host) or mirror (device)
  int busy = 0;               // batches reading it right now; unregister waits for 0
};

using Batch = TransferBatch;

// Completion of one request whose callback may run after its waiter gave up: the callback
// owns a reference.
struct Completion {
  bool done = false;
  ucs_status_t status = UCS_OK;
};

// Where the running batch of a peer stands: connect and handshake (first batch or after an
// error), puts issued and flushing, device ranges committed.
enum class Phase { kStart, kHandshake, kFlush, kCommit };

// An unpacked rkey of one destination region, valid while its endpoint lives.
struct RemoteKey {
  std::vector<uint8_t> packed;
  ucp_rkey_h rkey = nullptr;
};

// A peer we write to. Only the progress thread touches it.
struct Peer {
  std::string endpoint;
  ucp_ep_h ep = nullptr;            // through the peer's listener: token, commits
  ucp_ep_h data_ep = nullptr;       // to the peer's worker address: puts and flushes
  std::vector<uint8_t> worker_address;  // from the verdict
  uint64_t cookie = 0;              // names this connection in the peer's replies
  bool ready = false;               // token accepted
  int verdict = -1;                 // from kAmVerdict: 1 accepted, 0 refused
  ucs_status_t ep_error = UCS_OK;   // from the endpoint's error handler
  std::unordered_map<uint64_t, RemoteKey> rkeys;
  uint64_t acked_batch = 0;         // from kAmCommitAck
  Status ack_status;
  // Batches: queued, and the running one with where it stands.
  std::deque<std::shared_ptr<Batch>> queue;
  std::shared_ptr<Batch> current;
  Phase phase = Phase::kStart;
  Clock::time_point handshake_deadline;
  std::vector<uint64_t> busy_regions;     // source regions the running batch holds
  std::shared_ptr<Completion> flushed;    // the running batch's flush
  std::vector<uint8_t> commit;            // its device ranges, sent after the flush
};


void on_completion(void* request, ucs_status_t status, void* user_data) {
  auto* holder = static_cast<std::shared_ptr<Completion>*>(user_data);
  (*holder)->done = true;
  (*holder)->status = status;
  delete holder;
  ucp_request_free(request);
}

struct SendBuffers {
  std::vector<uint8_t> header, data;
};

void on_am_sent(void* request, ucs_status_t, void* user_data) {
  delete static_cast<SendBuffers*>(user_data);
  ucp_request_free(request);
}

class UcxTransferEngine final : public TransferEngine {
 public:
  explicit UcxTransferEngine(const TransferConfig& config) : config_(config) {
    std::random_device rd;
    next_region_id_ = (uint64_t(rd()) << 32 | rd()) & 0x7fffffffffff0000ull;
    next_cookie_ = uint64_t(rd()) << 32 | rd();
  }

  Status start() {
    ucp_config_t* ucp_config = nullptr;
    if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &ucp_config); s != UCS_OK)
      return ucs_error(StatusCode::kInternal, "reading the UCX configuration (UCX_*)", s);
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
    params.mt_workers_shared = 1;  // register_region maps memory from callers' threads
    ucs_status_t s = ucp_init(&params, ucp_config, &context_);
    ucp_config_release(ucp_config);
    if (s != UCS_OK) return ucs_error(StatusCode::kInternal, "ucp_init", s);

    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // the progress thread, then the destructor
    if ((s = ucp_worker_create(context_, &wp, &worker_)) != UCS_OK)
      return ucs_error(StatusCode::kInternal, "ucp_worker_create", s);
    for (unsigned id : {kAmHello, kAmVerdict, kAmCommit, kAmCommitAck}) {
      ucp_am_handler_param_t hp{};
      hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG;
      hp.id = id;
      hp.cb = &UcxTransferEngine::on_am;
      hp.arg = new AmArg{this, id};
      am_args_.emplace_back(static_cast<AmArg*>(hp.arg));
      if ((s = ucp_worker_set_am_recv_handler(worker_, &hp)) != UCS_OK)
        return ucs_error(StatusCode::kInternal, "ucp_worker_set_am_recv_handler", s);
    }

    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    if (Status st = resolve(config_.listen_host, config_.listen_port, true, &addr, &addr_len);
        !st.ok())
      return {StatusCode::kInvalidArgument, st.message()};
    ucp_listener_params_t lp{};
    lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
    lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
    lp.sockaddr.addrlen = addr_len;
    lp.conn_handler.cb = &UcxTransferEngine::on_conn_request;
    lp.conn_handler.arg = this;
    if ((s = ucp_listener_create(worker_, &lp, &listener_)) != UCS_OK)
      return ucs_error(StatusCode::kUnavailable,
                       "listen on " + config_.listen_host + ":" +
                           std::to_string(config_.listen_port),
                       s);
    ucp_address_t* address = nullptr;
    size_t address_bytes = 0;
    if ((s = ucp_worker_get_address(worker_, &address, &address_bytes)) != UCS_OK)
      return ucs_error(StatusCode::kInternal, "ucp_worker_get_address", s);
    const uint8_t* ab = reinterpret_cast<const uint8_t*>(address);
    worker_address_.assign(ab, ab + address_bytes);
    ucp_worker_release_address(worker_, address);
    ucp_listener_attr_t la{};
    la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
    if ((s = ucp_listener_query(listener_, &la)) != UCS_OK)
      return ucs_error(StatusCode::kInternal, "ucp_listener_query", s);
    uint16_t port = la.sockaddr.ss_family == AF_INET6
                        ? ntohs(reinterpret_cast<const sockaddr_in6*>(&la.sockaddr)->sin6_port)
                        : ntohs(reinterpret_cast<const sockaddr_in*>(&la.sockaddr)->sin_port);
    endpoint_ = advertised_endpoint(config_, port);
    progress_thread_ = std::thread([this] { progress_loop(); });
    return {};
  }

  ~UcxTransferEngine() override {
    stop_ = true;
    batches_.cancel_all();
    queue_cv_.notify_all();
    if (progress_thread_.joinable()) progress_thread_.join();
    // The progress thread is gone: this thread now owns the worker.
    for (ucp_conn_request_h req : conn_requests_) ucp_listener_reject(listener_, req);
    if (listener_) ucp_listener_destroy(listener_);
    for (auto& [ep, p] : peers_) drop_connection(*p);
    for (auto& [ep, accepted] : server_eps_) close_endpoint(ep);
    server_eps_.clear();
    wait_closing(Clock::now() + kCloseTimeout);
    for (auto& [id, r] : regions_) unmap(r);
    if (worker_) ucp_worker_destroy(worker_);
    if (context_) ucp_cleanup(context_);
  }

  std::string backend() const override { return "ucx"; }

  Status register_region(void* ptr, size_t length, MemoryKind kind, int device,
                         RegionHandle* out) override {
    if (ptr == nullptr || length == 0)
      return {StatusCode::kInvalidArgument, "register_region: null pointer or zero length"};
    if (kind == MemoryKind::kDevice && !staging_has_cuda())
      return {StatusCode::kInvalidArgument, "register_region: device memory needs a CUDA build"};
    Region r{static_cast<uint8_t*>(ptr), length, kind, device};
    if (kind == MemoryKind::kDevice) {
      r.mirror = static_cast<uint8_t*>(staging_alloc_host(length));
      if (r.mirror == nullptr)
        return {StatusCode::kResourceExhausted,
                "register_region: no pinned host mirror of " + std::to_string(length) + " bytes"};
    }
    uint8_t* mapped = kind == MemoryKind::kDevice ? r.mirror : r.ptr;
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = mapped;
    mp.length = length;
    std::vector<uint8_t> handle_bytes = u64s({uint64_t(reinterpret_cast<uintptr_t>(mapped))});
    {
      std::lock_guard lock(context_mu_);
      if (ucs_status_t s = ucp_mem_map(context_, &mp, &r.memh); s != UCS_OK) {
        staging_free_host(r.mirror);
        return ucs_error(StatusCode::kResourceExhausted,
                         "register_region: ucp_mem_map of " + std::to_string(length) + " bytes",
                         s);
      }
      void* packed = nullptr;
      size_t packed_bytes = 0;
      if (ucs_status_t s = ucp_rkey_pack(context_, r.memh, &packed, &packed_bytes); s != UCS_OK) {
        ucp_mem_unmap(context_, r.memh);
        staging_free_host(r.mirror);
        return ucs_error(StatusCode::kInternal, "register_region: ucp_rkey_pack", s);
      }
      const uint8_t* p = static_cast<const uint8_t*>(packed);
      handle_bytes.insert(handle_bytes.end(), p, p + packed_bytes);
      ucp_rkey_buffer_release(packed);
    }
    if (handle_bytes.size() > kMaxHandleBytes) {
      unmap(r);
      return {StatusCode::kInternal,
              fmt::format("register_region: the packed rkey takes {} bytes, the handle holds {} "
                          "(narrow UCX_TLS)",
                          handle_bytes.size() - 8, kMaxHandleBytes - 8)};
    }
    std::lock_guard lock(regions_mu_);
    uint64_t id = ++next_region_id_;
    regions_[id] = r;
    *out = RegionHandle{};
    out->backend = "ucx";
    out->endpoint = endpoint_;
    out->region_id = id;
    out->length_bytes = length;
    out->kind = kind;
    out->device_index = device;
    out->ipc_handle = std::move(handle_bytes);
    return {};
  }

  Status unregister_region(uint64_t id) override {
    Region r;
    {
      std::unique_lock lock(regions_mu_);
      auto busy = [&] {
        auto it = regions_.find(id);
        return it != regions_.end() && it->second.busy > 0;
      };
      regions_cv_.wait(lock, [&] { return !busy(); });  // batches reading it end by deadline
      auto it = regions_.find(id);
      if (it == regions_.end())
        return {StatusCode::kNotFound, "unregister_region: unknown region " + std::to_string(id)};
      r = it->second;
      regions_.erase(it);
    }
    unmap(r);
    return {};
  }

  Status submit(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                BatchId* out) override {
    if (Status s = check_peer_destinations("ucx", dst); !s.ok()) return s;
    for (const RegionHandle& h : dst) {
      if (h.ipc_handle.size() <= 8)
        return {StatusCode::kInvalidArgument, "submit: destination handle carries no rkey"};
    }
    {
      std::lock_guard lock(regions_mu_);
      if (Status s = check_writes(dst, writes, regions_); !s.ok()) return s;
    }
    auto batch = batches_.add(dst, writes, std::chrono::milliseconds(config_.transfer_timeout_ms));
    {
      std::lock_guard lock(queue_mu_);
      queue_.push_back(batch);
    }
    queue_cv_.notify_one();
    *out = batch->id;
    return {};
  }

  Status poll(BatchId id, bool* done) override { return batches_.poll(id, done); }
  Status wait(BatchId id, std::chrono::milliseconds timeout) override {
    return batches_.wait(id, timeout);
  }
  void cancel(BatchId id) override { batches_.cancel(id); }


 private:
  struct AmArg {
    UcxTransferEngine* engine;
    unsigned id;
  };
  // Work a UCX callback found; done after ucp_worker_progress returns (UCX calls are not
  // allowed inside its callbacks).
  struct Verdict {
    ucp_ep_h ep;
    uint64_t cookie;
    bool accepted;
  };
  struct Commit {
    ucp_ep_h ep;
    uint64_t cookie, batch;
    std::vector<uint8_t> ranges;
  };


  static void finish(Batch& b, Status s) { finish_batch(b, std::move(s)); }

  void unmap(Region& r) {
    if (r.memh) {
      std::lock_guard lock(context_mu_);
      ucp_mem_unmap(context_, r.memh);
      r.memh = nullptr;
    }
    staging_free_host(r.mirror);
    r.mirror = nullptr;
  }

  // ---- the progress thread --------------------------------------------------------------

  void progress_loop() {
    auto last_busy = Clock::now();
    while (!stop_) {
      bool busy = progress_once();
      std::deque<std::shared_ptr<Batch>> fresh;
      {
        std::lock_guard lock(queue_mu_);
        fresh.swap(queue_);
      }
      for (auto& b : fresh) peer_for(b->dst[0].endpoint).queue.push_back(std::move(b));
      busy |= !fresh.empty();
      bool in_flight = false;
      for (auto& [endpoint, peer] : peers_) {
        busy |= step(*peer);
        in_flight |= peer->current != nullptr;
      }
      if (busy) {
        last_busy = Clock::now();
        continue;
      }
      // Poll hard for a moment after traffic (a peer's puts over tcp land only while this
      // worker progresses), then nap until a submit or a short while passes.
      if (Clock::now() - last_busy < std::chrono::milliseconds(2)) {
        std::this_thread::yield();
        continue;
      }
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait_for(lock, in_flight ? std::chrono::microseconds(200)
                                         : std::chrono::microseconds(1000),
                         [&] { return stop_ || !queue_.empty(); });
    }
    const Status stopped{StatusCode::kAborted, "transfer engine stopped"};
    for (auto& [endpoint, peer] : peers_) {
      if (peer->current) fail_batch(*peer, stopped);
      for (auto& b : peer->queue) finish(*b, stopped);
      peer->queue.clear();
    }
    std::lock_guard lock(queue_mu_);
    for (auto& b : queue_) finish(*b, stopped);
    queue_.clear();
  }

  // Progresses the worker, then does what its callbacks asked for. True if anything happened.
  bool progress_once() {
    bool busy = false;
    for (int i = 0; i < 64 && ucp_worker_progress(worker_) != 0; ++i) busy = true;
    busy |= !conn_requests_.empty() || !verdicts_.empty() || !commits_.empty() ||
            !failed_server_eps_.empty();
    for (ucp_conn_request_h req : conn_requests_) accept(req);
    conn_requests_.clear();
    for (const Verdict& v : verdicts_) answer_hello(v);
    verdicts_.clear();
    std::vector<Commit> commits = std::move(commits_);
    commits_.clear();
    for (Commit& c : commits) apply_commit(c);
    for (ucp_ep_h ep : failed_server_eps_) {
      if (server_eps_.erase(ep)) close_endpoint(ep);
    }
    failed_server_eps_.clear();
    reap_closing();
    return busy;
  }

  static void on_conn_request(ucp_conn_request_h req, void* arg) {
    static_cast<UcxTransferEngine*>(arg)->conn_requests_.push_back(req);
  }

  static void on_server_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
    TANDEM_LOG_DEBUG("pd ucx: an incoming connection failed: {}", ucs_status_string(status));
    static_cast<UcxTransferEngine*>(arg)->failed_server_eps_.push_back(ep);
  }

  static void on_peer_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
    static_cast<Peer*>(arg)->ep_error = status;
  }

  void accept(ucp_conn_request_h req) {
    if (stop_) {
      ucp_listener_reject(listener_, req);
      return;
    }
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                   UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.conn_request = req;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &UcxTransferEngine::on_server_ep_error;
    p.err_handler.arg = this;
    ucp_ep_h ep = nullptr;
    if (ucs_status_t s = ucp_ep_create(worker_, &p, &ep); s != UCS_OK) {
      TANDEM_LOG_WARN("pd ucx: accepting a connection: {}", ucs_status_string(s));
      return;
    }
    server_eps_[ep] = false;  // no writes acknowledged until the token is accepted
  }

  // All active messages land here; what needs UCX calls is queued for progress_once.
  static ucs_status_t on_am(void* arg, const void* header, size_t header_bytes, void* data,
                            size_t data_bytes, const ucp_am_recv_param_t* param) {
    auto* a = static_cast<AmArg*>(arg);
    UcxTransferEngine& e = *a->engine;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) return UCS_OK;  // never ours: dropped
    ByteReader r({static_cast<const uint8_t*>(header), header_bytes});
    std::span<const uint8_t> payload(static_cast<const uint8_t*>(data), data_bytes);
    const bool has_reply = param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP;
    uint64_t cookie = 0, batch = 0;
    if (!r.u64(&cookie)) return UCS_OK;
    switch (a->id) {
      case kAmHello: {
        if (!has_reply || r.remaining() != 0) break;
        bool ok = data_bytes <= kMaxTokenBytes &&
                  constant_time_equal({reinterpret_cast<const char*>(data), data_bytes},
                                      e.config_.token);
        e.verdicts_.push_back({param->reply_ep, cookie, ok});
        break;
      }
      case kAmVerdict: {
        uint8_t accepted = 0;
        auto it = e.peers_by_cookie_.find(cookie);
        if (!r.u8(&accepted) || it == e.peers_by_cookie_.end()) break;
        it->second->verdict = accepted == 1 ? 1 : 0;
        it->second->worker_address.assign(payload.begin(), payload.end());
        break;
      }
      case kAmCommit: {
        if (!has_reply || !r.u64(&batch) || r.remaining() != 0) break;
        e.commits_.push_back({param->reply_ep, cookie, batch, {payload.begin(), payload.end()}});
        break;
      }
      case kAmCommitAck: {
        uint32_t code = 0;
        std::string message(data_bytes ? reinterpret_cast<const char*>(data) : "",
                            std::min(data_bytes, kMaxAckMessageBytes));
        auto it = e.peers_by_cookie_.find(cookie);
        if (!r.u64(&batch) || !r.u32(&code) || it == e.peers_by_cookie_.end()) break;
        if (code > uint32_t(StatusCode::kInternal)) code = uint32_t(StatusCode::kInternal);
        it->second->acked_batch = batch;
        it->second->ack_status = code == 0 ? Status{}
                                           : Status{StatusCode(code), "peer " +
                                                    it->second->endpoint + " rejected: " +
                                                    message};
        break;
      }
      default:
        break;
    }
    return UCS_OK;
  }

  // Sends an active message asking for a reply endpoint; eager only, so the receiver always
  // gets the bytes in its callback. The buffers live until UCX is done with them.
  Status send_am(ucp_ep_h ep, unsigned id, std::vector<uint8_t> header,
                 std::vector<uint8_t> data) {
    auto* bufs = new SendBuffers{std::move(header), std::move(data)};
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.cb.send = on_am_sent;
    p.user_data = bufs;
    p.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    void* req = ucp_am_send_nbx(ep, id, bufs->header.data(), bufs->header.size(),
                                bufs->data.data(), bufs->data.size(), &p);
    if (UCS_PTR_IS_PTR(req)) return {};  // on_am_sent frees the buffers
    delete bufs;
    if (UCS_PTR_IS_ERR(req))
      return ucs_error(StatusCode::kUnavailable, "active message", UCS_PTR_STATUS(req));
    return {};
  }

  void answer_hello(const Verdict& v) {
    auto it = server_eps_.find(v.ep);
    if (it == server_eps_.end()) return;  // failed meanwhile
    ByteWriter h;
    h.u64(v.cookie);
    h.u8(v.accepted ? 1 : 0);
    (void)send_am(v.ep, kAmVerdict, std::move(h.buffer()),
                  v.accepted ? worker_address_ : std::vector<uint8_t>{});
    if (v.accepted) {
      it->second = true;
      return;
    }
    TANDEM_LOG_WARN("pd ucx: refused a connection: wrong token");
    server_eps_.erase(it);
    close_endpoint(v.ep, /*force=*/false);  // the verdict goes out first
  }

  // Copies the device ranges of a finished batch from their mirrors into device memory and
  // answers; the sender flushed its puts into the mirrors before sending this.
  void apply_commit(const Commit& c) {
    auto it = server_eps_.find(c.ep);
    if (it == server_eps_.end() || !it->second) return;  // never from a refused peer
    ByteReader r(c.ranges);
    uint32_t n = 0;
    Status result;
    if (!r.count(&n, kCommitRangeBytes, kMaxCommitRanges)) {
      result = {StatusCode::kInvalidArgument, "malformed commit"};
    } else {
      std::lock_guard lock(regions_mu_);
      for (uint32_t i = 0; i < n && result.ok(); ++i) {
        uint64_t region = 0, offset = 0, length = 0;
        r.u64(&region);
        r.u64(&offset);
        r.u64(&length);
        auto rit = regions_.find(region);
        if (rit == regions_.end() || rit->second.kind != MemoryKind::kDevice)
          result = {StatusCode::kInvalidArgument,
                    "commit into unknown device region " + std::to_string(region)};
        else if (!range_in_region(offset, length, rit->second.length))
          result = {StatusCode::kOutOfRange,
                    fmt::format("commit [{}, +{}) outside region {} of {} bytes", offset, length,
                                region, rit->second.length)};
        else
          result = staging_copy_to_device(rit->second.ptr + offset, rit->second.mirror + offset,
                                          length, rit->second.device);
      }
    }
    ByteWriter h;
    h.u64(c.cookie);
    h.u64(c.batch);
    h.u32(uint32_t(result.code()));
    const std::string& m = result.message();
    (void)send_am(c.ep, kAmCommitAck, std::move(h.buffer()),
                  {m.begin(), m.begin() + std::min(m.size(), kMaxAckMessageBytes)});
  }

  // Starts closing `ep`; force cancels its outstanding operations (they complete with an
  // error before the close does), otherwise pending sends are flushed first.
  void* close_endpoint(ucp_ep_h ep, bool force = true) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    void* req = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(req)) closing_.push_back(req);
    return UCS_PTR_IS_PTR(req) ? req : nullptr;
  }

  void reap_closing() {
    for (auto it = closing_.begin(); it != closing_.end();) {
      if (ucp_request_check_status(*it) != UCS_INPROGRESS) {
        ucp_request_free(*it);
        it = closing_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void wait_closing(Clock::time_point until) {
    while (!closing_.empty() && Clock::now() < until) {
      ucp_worker_progress(worker_);
      reap_closing();
    }
    for (void* req : closing_) ucp_request_free(req);  // released when it completes
    closing_.clear();
  }

  // Forgets the connection to `peer` (rkeys, endpoint) and waits for the close, so no
  // operation reads a source region after this returns.
  void drop_connection(Peer& peer) {
    for (auto& [id, k] : peer.rkeys) ucp_rkey_destroy(k.rkey);
    peer.rkeys.clear();
    for (ucp_ep_h ep : {peer.data_ep, peer.ep}) {
      if (!ep) continue;
      void* req = close_endpoint(ep);
      auto until = Clock::now() + kCloseTimeout;
      while (req && ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < until)
        ucp_worker_progress(worker_);
      reap_closing();
    }
    peers_by_cookie_.erase(peer.cookie);
    peer.ep = nullptr;
    peer.data_ep = nullptr;
    peer.worker_address.clear();
    peer.ready = false;
    peer.verdict = -1;
    peer.ep_error = UCS_OK;
  }

  Peer& peer_for(const std::string& endpoint) {
    auto& slot = peers_[endpoint];
    if (!slot) {
      slot = std::make_unique<Peer>();
      slot->endpoint = endpoint;
    }
    return *slot;
  }

  // Advances `peer`'s batches as far as they go without waiting; true if anything moved.
  // Batches to one peer run in submission order, batches to different peers side by side.
  bool step(Peer& peer) {
    bool moved = false;
    for (;;) {
      if (!peer.current) {
        if (peer.queue.empty()) return moved;
        peer.current = std::move(peer.queue.front());
        peer.queue.pop_front();
        moved = true;
        if (peer.current->cancel) {  // cancel() already forgot it
          peer.current.reset();
          continue;
        }
        if (Clock::now() >= peer.current->deadline) {
          end_batch(peer, {StatusCode::kDeadlineExceeded, "transfer timed out in the queue"});
          continue;
        }
        peer.phase = Phase::kStart;
      }
      const Phase before = peer.phase;
      bool finished = false;
      Status s = advance(peer, &finished);
      if (!s.ok()) {
        fail_batch(peer, s);
        moved = true;
        continue;
      }
      if (finished) {
        end_batch(peer, {});
        moved = true;
        continue;
      }
      return moved || peer.phase != before;  // waiting on the peer
    }
  }

  Status advance(Peer& peer, bool* finished) {
    Batch& b = *peer.current;
    if (b.cancel) return {StatusCode::kAborted, "transfer cancelled"};
    if (stop_) return {StatusCode::kAborted, "transfer engine stopped"};
    if (peer.ep_error != UCS_OK) {
      std::string what = peer.ready ? "peer " + peer.endpoint : "connect " + peer.endpoint;
      return ucs_error(StatusCode::kUnavailable, what, peer.ep_error);
    }
    const auto now = Clock::now();
    if (now >= b.deadline)
      return {StatusCode::kDeadlineExceeded, "pd ucx: transfer to " + peer.endpoint +
                                                 " timed out"};
    switch (peer.phase) {
      case Phase::kStart:
        if (!peer.ready) {
          if (peer.ep) drop_connection(peer);
          if (Status s = start_connect(peer); !s.ok()) return s;
          peer.handshake_deadline =
              std::min(b.deadline, now + std::chrono::milliseconds(config_.connect_timeout_ms));
          peer.phase = Phase::kHandshake;
          return {};
        }
        return issue(peer, b);
      case Phase::kHandshake:
        if (peer.verdict < 0) {
          if (now >= peer.handshake_deadline)
            return {StatusCode::kDeadlineExceeded, "pd ucx: no answer to the token handshake from " +
                                                       peer.endpoint + " in time"};
          return {};
        }
        if (peer.verdict != 1)
          return {StatusCode::kInvalidArgument, "pd ucx: peer " + peer.endpoint +
                                                    " refused the token"};
        if (Status s = open_data_endpoint(peer); !s.ok()) return s;
        peer.ready = true;
        return issue(peer, b);
      case Phase::kFlush:
        if (!peer.flushed->done) return {};
        if (peer.flushed->status != UCS_OK)
          return ucs_error(StatusCode::kUnavailable, "flush to " + peer.endpoint,
                           peer.flushed->status);
        if (peer.commit.empty()) {
          *finished = true;
          return {};
        }
        peer.acked_batch = 0;
        if (Status s = send_am(peer.ep, kAmCommit, u64s({peer.cookie, b.id}),
                               std::move(peer.commit));
            !s.ok())
          return s;
        peer.commit.clear();
        peer.phase = Phase::kCommit;
        return {};
      case Phase::kCommit:
        if (peer.acked_batch != b.id) return {};
        *finished = true;
        return peer.ack_status;
    }
    return {StatusCode::kInternal, "pd ucx: bad batch phase"};
  }

  // Ends the running batch of `peer` with `s`, after dropping the connection (it may be
  // mid-batch: start clean next time; this also stops every put reading a source region).
  void fail_batch(Peer& peer, Status s) {
    if (peer.current->cancel) s = {StatusCode::kAborted, "transfer cancelled"};
    TANDEM_LOG_DEBUG("pd ucx: batch {} to {} failed: {}", peer.current->id, peer.endpoint,
                     s.message());
    drop_connection(peer);
    end_batch(peer, std::move(s));
  }

  void end_batch(Peer& peer, Status s) {
    release_sources(peer);
    finish(*peer.current, std::move(s));
    peer.current.reset();
    peer.phase = Phase::kStart;
    peer.flushed.reset();
    peer.commit.clear();
  }

  Status start_connect(Peer& peer) {
    std::string host;
    uint16_t port = 0;
    if (Status s = split_endpoint(peer.endpoint, &host, &port); !s.ok()) return s;
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    if (Status s = resolve(host, port, false, &addr, &addr_len); !s.ok()) return s;
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
    p.sockaddr.addrlen = addr_len;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;  // tells us when the peer goes
    p.err_handler.cb = &UcxTransferEngine::on_peer_ep_error;
    p.err_handler.arg = &peer;
    if (ucs_status_t s = ucp_ep_create(worker_, &p, &peer.ep); s != UCS_OK) {
      peer.ep = nullptr;
      return ucs_error(StatusCode::kUnavailable, "connect " + peer.endpoint, s);
    }
    peer.cookie = ++next_cookie_;
    peers_by_cookie_[peer.cookie] = &peer;
    std::vector<uint8_t> token(config_.token.begin(), config_.token.end());
    return send_am(peer.ep, kAmHello, u64s({peer.cookie}), std::move(token));
  }

  // The listener's connection only uses transports of its network device; an endpoint to
  // the worker address can use them all (shared memory on the same host, an RDMA NIC). Its
  // failures show on the listener's endpoint, so it needs no error mode of its own (which
  // would rule out shared memory in UCX 1.13).
  Status open_data_endpoint(Peer& peer) {
    if (peer.worker_address.empty())
      return {StatusCode::kInternal, "pd ucx: peer " + peer.endpoint + " sent no worker address"};
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.address = reinterpret_cast<const ucp_address_t*>(peer.worker_address.data());
    p.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    if (ucs_status_t s = ucp_ep_create(worker_, &p, &peer.data_ep); s != UCS_OK) {
      peer.data_ep = nullptr;
      return ucs_error(StatusCode::kUnavailable, "connect " + peer.endpoint + " (data)", s);
    }
    return {};
  }

  Status rkey_for(Peer& peer, const RegionHandle& h, ucp_rkey_h* out) {
    std::span<const uint8_t> packed(h.ipc_handle.data() + 8, h.ipc_handle.size() - 8);
    RemoteKey& k = peer.rkeys[h.region_id];
    if (k.rkey && std::equal(packed.begin(), packed.end(), k.packed.begin(), k.packed.end())) {
      *out = k.rkey;
      return {};
    }
    if (k.rkey) ucp_rkey_destroy(k.rkey);
    k.rkey = nullptr;
    k.packed.assign(packed.begin(), packed.end());
    if (ucs_status_t s = ucp_ep_rkey_unpack(peer.data_ep, k.packed.data(), &k.rkey);
        s != UCS_OK) {
      peer.rkeys.erase(h.region_id);
      return ucs_error(StatusCode::kInvalidArgument,
                       "destination region " + std::to_string(h.region_id) + ": rkey", s);
    }
    *out = k.rkey;
    return {};
  }

  // Marks the batch's source regions busy until it ends (unregister waits) and copies them.
  Status acquire_sources(Peer& peer, const Batch& b, std::vector<Region>* out) {
    std::lock_guard lock(regions_mu_);
    for (const TransferWrite& w : b.writes) {
      auto it = regions_.find(w.src_region);
      if (it == regions_.end())
        return {StatusCode::kInvalidArgument, "source region unregistered during the transfer"};
      ++it->second.busy;
      peer.busy_regions.push_back(w.src_region);
      out->push_back(it->second);
    }
    return {};
  }

  void release_sources(Peer& peer) {
    if (peer.busy_regions.empty()) return;
    std::lock_guard lock(regions_mu_);
    for (uint64_t id : peer.busy_regions) {
      auto it = regions_.find(id);
      if (it != regions_.end()) --it->second.busy;
    }
    peer.busy_regions.clear();
    regions_cv_.notify_all();
  }

  // Puts every write of the batch and starts the flush that reports them landed.
  Status issue(Peer& peer, Batch& b) {
    std::vector<Region> src;
    if (Status s = acquire_sources(peer, b, &src); !s.ok()) return s;
    ByteWriter commit;  // device destinations of this batch
    uint32_t num_commits = 0;
    for (size_t i = 0; i < b.writes.size(); ++i) {
      const TransferWrite& w = b.writes[i];
      if (w.length_bytes == 0) continue;
      const RegionHandle& dst = b.dst[w.dst_index];
      ucp_rkey_h rkey = nullptr;
      if (Status s = rkey_for(peer, dst, &rkey); !s.ok()) return s;
      uint64_t remote_base = 0;
      ByteReader(dst.ipc_handle).u64(&remote_base);
      const Region& r = src[i];
      const uint8_t* from = r.ptr + w.src_offset_bytes;
      if (r.kind == MemoryKind::kDevice) {
        uint8_t* staged = r.mirror + w.src_offset_bytes;
        if (Status s = staging_copy_to_host(staged, from, w.length_bytes, r.device); !s.ok())
          return s;
        from = staged;
      }
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
      p.memh = r.memh;
      void* req = ucp_put_nbx(peer.data_ep, from, w.length_bytes,
                              remote_base + w.dst_offset_bytes, rkey, &p);
      if (UCS_PTR_IS_ERR(req))
        return ucs_error(StatusCode::kUnavailable, "put to " + peer.endpoint,
                         UCS_PTR_STATUS(req));
      if (UCS_PTR_IS_PTR(req)) ucp_request_free(req);  // the flush reports errors
      if (dst.kind == MemoryKind::kDevice) {
        commit.u64(dst.region_id);
        commit.u64(w.dst_offset_bytes);
        commit.u64(w.length_bytes);
        ++num_commits;
      }
      // Shared-memory puts copy right here, so a long batch takes a while to issue: keep the
      // worker moving and stop early on cancel, shutdown, peer death or the deadline.
      if (i % 16 == 15) {
        progress_once();
        if (b.cancel) return {StatusCode::kAborted, "transfer cancelled"};
        if (stop_) return {StatusCode::kAborted, "transfer engine stopped"};
        if (peer.ep_error != UCS_OK)
          return ucs_error(StatusCode::kUnavailable, "peer " + peer.endpoint, peer.ep_error);
        if (Clock::now() >= b.deadline)
          return {StatusCode::kDeadlineExceeded,
                  "pd ucx: transfer to " + peer.endpoint + " timed out"};
      }
    }
    if (num_commits > 0) {
      ByteWriter ranges;
      ranges.u32(num_commits);
      auto& body = commit.buffer();
      ranges.buffer().insert(ranges.buffer().end(), body.begin(), body.end());
      peer.commit = std::move(ranges.buffer());
    }
    peer.flushed = std::make_shared<Completion>();
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = on_completion;
    p.user_data = new std::shared_ptr<Completion>(peer.flushed);
    void* req = ucp_ep_flush_nbx(peer.data_ep, &p);
    if (!UCS_PTR_IS_PTR(req)) {
      delete static_cast<std::shared_ptr<Completion>*>(p.user_data);
      peer.flushed->done = true;
      peer.flushed->status = UCS_PTR_STATUS(req);
    }
    peer.phase = Phase::kFlush;
    return {};
  }


  TransferConfig config_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};

  ucp_context_h context_ = nullptr;
  std::mutex context_mu_;  // mem_map / unmap / rkey_pack from callers' threads
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  std::vector<uint8_t> worker_address_;  // sent to peers whose token we accept
  std::vector<std::unique_ptr<AmArg>> am_args_;

  std::mutex regions_mu_;
  std::condition_variable regions_cv_;
  std::unordered_map<uint64_t, Region> regions_;
  uint64_t next_region_id_ = 0;

  BatchTable batches_;
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<std::shared_ptr<Batch>> queue_;  // submitted, not yet handed to their peer

  // Progress thread only (the destructor after it has joined).
  std::thread progress_thread_;
  std::unordered_map<std::string, std::unique_ptr<Peer>> peers_;
  std::unordered_map<uint64_t, Peer*> peers_by_cookie_;
  uint64_t next_cookie_ = 0;
  std::unordered_map<ucp_ep_h, bool> server_eps_;  // incoming endpoints: token accepted?
  std::vector<ucp_conn_request_h> conn_requests_;
  std::vector<Verdict> verdicts_;
  std::vector<Commit> commits_;
  std::vector<ucp_ep_h> failed_server_eps_;
  std::vector<void*> closing_;  // ucp_ep_close_nbx requests still running
};

}  // namespace

std::unique_ptr<TransferEngine> make_ucx_transfer_engine(const TransferConfig& config,
                                                         Status* status) {
  auto engine = std::make_unique<UcxTransferEngine>(config);
  *status = engine->start();
  if (!status->ok()) return nullptr;
  return engine;
}

}  // namespace tandem::disagg
