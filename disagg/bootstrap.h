// The bootstrap endpoint (DESIGN.md "Request flow (PD)", steps 2-3): the prefill side
// listens; the decode side connects, presents the job token, and sends a KvPagesRequest with
// the page ids it reserved and its KV regions; the prefill side answers with an Ack, pushes
// each finished chunk's KV into those pages with the transfer engine, sends KvChunkDone per
// chunk and finally PrefillMeta. Either side may send Abort. Every wait has a timeout.
// A channel is used by one thread at a time; the listener's accept may run on any thread.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "disagg/messages.h"
#include "disagg/socket.h"
#include "disagg/transfer_engine.h"

namespace tandem::disagg {

class BootstrapChannel {
 public:
  explicit BootstrapChannel(Socket socket) : socket_(std::move(socket)) {}
  Status send(const Message& m, std::chrono::milliseconds timeout);
  // kDeadlineExceeded when nothing arrives in time; kUnavailable when the peer is gone.
  Status recv(Message* m, std::chrono::milliseconds timeout);
  void close() { socket_.close(); }

 private:
  Socket socket_;
};

class BootstrapListener {
 public:
  // Listens on host:port (0: any free port) for peers presenting `token`.
  static Status listen(const std::string& host, uint16_t port, std::string token,
                       std::chrono::milliseconds handshake_timeout,
                       std::unique_ptr<BootstrapListener>* out);
  std::string endpoint() const { return endpoint_; }
  // One token-checked connection, or kDeadlineExceeded if none arrives within `timeout`;
  // a peer with the wrong token is refused and counted as no connection.
  Status accept(std::chrono::milliseconds timeout, std::unique_ptr<BootstrapChannel>* out);

 private:
  Socket listener_;
  std::string endpoint_;
  std::string token_;
  std::chrono::milliseconds handshake_timeout_{0};
};

Status bootstrap_connect(const std::string& endpoint, const std::string& token,
                         std::chrono::milliseconds timeout, std::unique_ptr<BootstrapChannel>* out);

// The writes that move tokens [first_token, first_token + num_tokens) of one sequence's KV
// from the prefill side's pages (`src_pages`, one local region per layer in `src_regions`,
// same page size and bytes per token-layer) into the decode side's pages named by `request`
// (dst_index = layer). Runs of tokens contiguous on both sides become one write.
Status kv_page_writes(const KvPagesRequest& request, std::span<const uint64_t> src_regions,
                      std::span<const int32_t> src_pages, uint32_t first_token,
                      uint32_t num_tokens, std::vector<TransferWrite>* out);

}  // namespace tandem::disagg
