// The PD roles on top of an Engine (DESIGN.md "Request flow (PD)", docs/disagg.md "Roles").
//
// PrefillWorker (tandem serve --role prefill): owns the bootstrap listener and a transfer
// engine over the engine's KV pool. submit(room, request) starts the request's prefill at once
// (Engine::submit_prefill); the decode server for that room connects to the bootstrap
// endpoint with its KvPagesRequest. As the engine reports chunks, their KV pages are written
// into decode's pages, each followed by KvChunkDone, then PrefillMeta (the first token); the
// engine then releases the pages. Any failure (no decode peer within the bootstrap timeout,
// a bad or mismatched request, a transfer error or timeout, decode's Abort, decode gone)
// sends Abort where possible, frees the pages and ends the request's stream with the error.
//
// DecodeWorker (tandem serve --role decode): submit(room, prefill endpoint, request) reserves
// pages (Engine::submit_decode), connects to the prefill's bootstrap endpoint, sends the page
// ids and its KV regions, receives the chunks and the first token (room checked, every wait
// bounded), then lets the engine decode (Engine::kv_arrived). Any failure frees the reserved
// pages and ends the stream with a clear error; abort(id) also tells the prefill side.
//
// Both run one thread per room (and the prefill an accept thread); fine for tests and modest
// loads, to be replaced by an event loop before high concurrency (docs/disagg.md).
// Thread-safety: submit and abort may be called from any thread; destroy the worker before
// the engine (the destructor fails rooms still in flight and joins its threads).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "disagg/pd_session.h"
#include "disagg/transfer_engine.h"
#include "runtime/engine.h"

namespace tandem::disagg {

struct PdWorkerConfig {
  TransferConfig transfer;             // --transfer-backend, --pd-token (also the bootstrap's)
  std::string bootstrap_host = "127.0.0.1";
  uint16_t bootstrap_port = 0;         // prefill: --disaggregation-bootstrap-port; 0: any free
  // Connect + request/ack; how long a prefill room waits for its decode peer; how long a decode
  // request waits for its page reservation.
  int bootstrap_timeout_ms = 10000;
  // Per chunk: a transfer batch, and the gap decode accepts between prefill's messages.
  int transfer_timeout_ms = 30000;

  Status validate() const;  // names the field at fault
};

class PrefillWorker {
 public:
  static Status create(runtime::Engine& engine, const PdWorkerConfig& config,
                       std::unique_ptr<PrefillWorker>* out);
  ~PrefillWorker();

  std::string bootstrap_endpoint() const { return listener_->endpoint(); }
  // Starts the prefill of `request` for `room` (n = 1). The stream yields the first token and
  // ends once the KV is sent ("length") or with the error that stopped it.
  Status submit(uint64_t room, runtime::GenerateRequest request,
                std::shared_ptr<runtime::RequestStream>* stream);
  // Client abort: decode is sent Abort and the request ends with an error once no transfer
  // reads its pages any more (never free them under a running transfer with Engine::abort).
  void abort(runtime::RequestId id);
  int32_t rooms_in_flight() const;

 private:
  struct Room;
  PrefillWorker(runtime::Engine& engine, const PdWorkerConfig& config);
  void accept_loop();
  void serve(std::unique_ptr<BootstrapChannel> ch);
  Status run_room(BootstrapChannel& ch, const KvPagesRequest& request, Room& room);
  void end_room(uint64_t room, const Status& status);
  void reap_threads(bool all);

  runtime::Engine& engine_;
  PdWorkerConfig config_;
  KvLayout layout_;
  std::unique_ptr<TransferEngine> transfer_;
  std::vector<uint64_t> regions_;  // one per layer
  std::unique_ptr<BootstrapListener> listener_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<uint64_t, std::shared_ptr<Room>> rooms_;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::mutex threads_mu_;
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> threads_;  // + done
};

class DecodeWorker {
 public:
  static Status create(runtime::Engine& engine, const PdWorkerConfig& config,
                       std::unique_ptr<DecodeWorker>* out);
  ~DecodeWorker();

  // Queues `request` (n = 1) for `room`, whose prompt KV the prefill server behind
  // `prefill_bootstrap` ("host:port") computes. The stream yields every output token,
  // the first one from the prefill side.
  Status submit(uint64_t room, const std::string& prefill_bootstrap,
                runtime::GenerateRequest request, std::shared_ptr<runtime::RequestStream>* stream);
  // Client abort: sends the prefill side Abort and ends the request ("abort"); once the KV
  // request went out, only after prefill confirmed it stopped writing (see fence()).
  void abort(runtime::RequestId id);
  int32_t rooms_in_flight() const;
  // Failed rooms that waited for prefill to stop writing, and those among them released
  // when the fence's time ran out instead of by prefill's confirmation.
  int64_t fences() const { return fences_.load(); }
  int64_t fences_timed_out() const { return fences_timed_out_.load(); }

  // The fence's allowance beyond transfer_timeout_ms for bytes already in flight.
  static constexpr int kFenceMarginMs = 200;

 private:
  struct Room;
  DecodeWorker(runtime::Engine& engine, const PdWorkerConfig& config);
  void run(std::shared_ptr<Room> room);
  Status receive_kv(Room& room, PrefillMeta* meta);
  // Page safety after a decode-side failure once prefill may be writing: sends Abort and
  // returns `why` when prefill answers with its Abort or closes the connection (it does both
  // only after its last batch for the room ended), or after transfer_timeout_ms +
  // kFenceMarginMs (prefill's batches fail by themselves by then). Only then are the room's
  // pages freed, so no late write lands in pages given to another request.
  Status fence(BootstrapChannel& ch, uint64_t room, Status why);
  void reap_threads(bool all);

  runtime::Engine& engine_;
  PdWorkerConfig config_;
  KvLayout layout_;
  std::unique_ptr<TransferEngine> transfer_;
  std::vector<RegionHandle> regions_;  // one per layer, sent to the prefill side

  mutable std::mutex mu_;
  std::unordered_map<runtime::RequestId, std::shared_ptr<Room>> rooms_;  // by request id
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> fences_{0}, fences_timed_out_{0};
  std::mutex threads_mu_;
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> threads_;  // + done
};

}  // namespace tandem::disagg
