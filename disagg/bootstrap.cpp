#include "disagg/bootstrap.h"

#include <algorithm>

#include "core/log.h"

namespace tandem::disagg {

Status BootstrapChannel::send(const Message& m, std::chrono::milliseconds timeout) {
  if (!socket_.valid()) return {StatusCode::kUnavailable, "bootstrap channel closed"};
  return send_message(socket_, m, Clock::now() + timeout);
}

Status BootstrapChannel::recv(Message* m, std::chrono::milliseconds timeout) {
  if (!socket_.valid()) return {StatusCode::kUnavailable, "bootstrap channel closed"};
  Status s = recv_message(socket_, m, Clock::now() + timeout);
  // A partial frame leaves the stream out of step: nothing more can be read from it.
  if (!s.ok() && s.code() != StatusCode::kDeadlineExceeded) socket_.close();
  return s;
}

Status BootstrapListener::listen(const std::string& host, uint16_t port, std::string token,
                                 std::chrono::milliseconds handshake_timeout,
                                 std::unique_ptr<BootstrapListener>* out) {
  auto l = std::unique_ptr<BootstrapListener>(new BootstrapListener());
  uint16_t bound = 0;
  if (Status s = tcp_listen(host, port, &l->listener_, &bound); !s.ok()) return s;
  std::string h = host.empty() || host == "0.0.0.0" ? "127.0.0.1" : host;
  l->endpoint_ = h + ":" + std::to_string(bound);
  l->token_ = std::move(token);
  l->handshake_timeout_ = handshake_timeout;
  *out = std::move(l);
  return {};
}

Status BootstrapListener::accept(std::chrono::milliseconds timeout,
                                 std::unique_ptr<BootstrapChannel>* out) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    // Never negative: poll() takes -1 as "wait forever".
    const auto left = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   deadline - Clock::now()));
    Socket s;
    if (Status st = tcp_accept(listener_, left, &s); !st.ok()) return st;
    if (!s.valid()) continue;
    if (Status st = server_handshake(s, token_, Clock::now() + handshake_timeout_); !st.ok()) {
      TANDEM_LOG_WARN("pd bootstrap: refused a connection: {}", st.message());
      continue;
    }
    *out = std::make_unique<BootstrapChannel>(std::move(s));
    return {};
  }
  return {StatusCode::kDeadlineExceeded, "pd bootstrap: no connection in time"};
}

Status bootstrap_connect(const std::string& endpoint, const std::string& token,
                         std::chrono::milliseconds timeout,
                         std::unique_ptr<BootstrapChannel>* out) {
  auto deadline = Clock::now() + timeout;
  Socket s;
  if (Status st = tcp_connect(endpoint, deadline, &s); !st.ok()) return st;
  if (Status st = client_handshake(s, token, deadline); !st.ok()) return st;
  *out = std::make_unique<BootstrapChannel>(std::move(s));
  return {};
}

Status kv_page_writes(const KvPagesRequest& req, std::span<const uint64_t> src_regions,
                      std::span<const int32_t> src_pages, uint32_t first_token,
                      uint32_t num_tokens, std::vector<TransferWrite>* out) {
  auto invalid = [](const std::string& m) {
    return Status{StatusCode::kInvalidArgument, "kv_page_writes: " + m};
  };
  if (req.page_size == 0 || req.bytes_per_token_layer == 0)
    return invalid("page size and bytes per token must be positive");
  if (req.regions.size() != req.num_layers || src_regions.size() != req.num_layers)
    return invalid("need one source and one destination region per layer");
  const uint64_t end = uint64_t(first_token) + num_tokens;
  const uint64_t pages_needed = (end + req.page_size - 1) / req.page_size;
  if (pages_needed > req.page_ids.size() || pages_needed > src_pages.size())
    return invalid("tokens beyond the reserved pages");
  const uint64_t ps = req.page_size, bpt = req.bytes_per_token_layer;
  out->clear();
  for (uint32_t layer = 0; layer < req.num_layers; ++layer) {
    for (uint64_t t = first_token; t < end;) {
      uint64_t page = t / ps, in_page = t % ps;
      uint64_t n = std::min(ps - in_page, end - t);
      TransferWrite w{src_regions[layer], (uint64_t(src_pages[page]) * ps + in_page) * bpt, layer,
                      (uint64_t(req.page_ids[page]) * ps + in_page) * bpt, n * bpt};
      TransferWrite* last = out->empty() ? nullptr : &out->back();
      if (last && last->dst_index == layer &&
          last->src_offset_bytes + last->length_bytes == w.src_offset_bytes &&
          last->dst_offset_bytes + last->length_bytes == w.dst_offset_bytes) {
        last->length_bytes += w.length_bytes;  // pages adjacent on both sides
      } else {
        out->push_back(w);
      }
      t += n;
    }
  }
  return {};
}

}  // namespace tandem::disagg
