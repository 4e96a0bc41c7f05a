#include "disagg/transfer_engine.h"

#include "disagg/cuda_ipc_transport.h"
#include "disagg/staging.h"
#include "disagg/tcp_transport.h"
#ifdef TANDEM_DISAGG_UCX
#include "disagg/ucx_transport.h"
#endif

namespace tandem::disagg {

Status TransferConfig::validate() const {
  if (connect_timeout_ms <= 0)
    return {StatusCode::kInvalidArgument, "--pd-connect-timeout-ms must be positive"};
  if (transfer_timeout_ms <= 0)
    return {StatusCode::kInvalidArgument, "--pd-transfer-timeout-ms must be positive"};
  if (staging_bytes < 4096)
    return {StatusCode::kInvalidArgument, "staging buffer must be at least 4096 bytes"};
  return {};
}

Status check_writes(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                    const std::function<bool(uint64_t, uint64_t*)>& src_length) {
  for (const TransferWrite& w : writes) {
    uint64_t length = 0;
    if (!src_length(w.src_region, &length))
      return {StatusCode::kInvalidArgument, "submit: unknown source region"};
    if (!range_in_region(w.src_offset_bytes, w.length_bytes, length))
      return {StatusCode::kInvalidArgument, "submit: source range outside its region"};
    if (w.dst_index >= dst.size())
      return {StatusCode::kInvalidArgument, "submit: dst_index out of range"};
    if (!range_in_region(w.dst_offset_bytes, w.length_bytes, dst[w.dst_index].length_bytes))
      return {StatusCode::kInvalidArgument, "submit: destination range outside its region"};
  }
  return {};
}

Status check_peer_destinations(const std::string& backend, std::span<const RegionHandle> dst) {
  if (dst.empty()) return {StatusCode::kInvalidArgument, "submit: no destination regions"};
  for (const RegionHandle& h : dst) {
    if (h.backend != backend)
      return {StatusCode::kInvalidArgument, "submit: destination is a " + h.backend + " region"};
    if (h.endpoint != dst[0].endpoint)
      return {StatusCode::kInvalidArgument, "submit: destinations on more than one peer"};
  }
  return {};
}

std::string advertised_endpoint(const TransferConfig& config, uint16_t port) {
  std::string host = config.advertise_host.empty() ? config.listen_host : config.advertise_host;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::vector<std::string> transfer_backends() {
  std::vector<std::string> names{"tcp"};
  if (staging_has_cuda()) names.push_back("cuda_ipc");
#ifdef TANDEM_DISAGG_UCX
  names.push_back("ucx");
#endif
  return names;
}

Status make_transfer_engine(const TransferConfig& config, std::unique_ptr<TransferEngine>* out) {
  if (Status s = config.validate(); !s.ok()) return s;
  Status s;
  if (config.backend == "tcp") {
    *out = make_tcp_transfer_engine(config, &s);
  } else if (config.backend == "cuda_ipc") {
    *out = make_cuda_ipc_transfer_engine(config, &s);
  } else if (config.backend == "ucx") {
#ifdef TANDEM_DISAGG_UCX
    *out = make_ucx_transfer_engine(config, &s);
#else
    s = {StatusCode::kInvalidArgument,
         "--transfer-backend ucx: this build has no UCX (install libucx-dev and rebuild)"};
#endif
  } else {
    s = {StatusCode::kInvalidArgument,
         "--transfer-backend '" + config.backend + "': expected tcp, cuda_ipc or ucx"};
  }
  return s;
}

}  // namespace tandem::disagg
