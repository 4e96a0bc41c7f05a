#include "server/server_config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <thread>

namespace tandem::server {

namespace {
Status invalid(std::string message) { return {StatusCode::kInvalidArgument, std::move(message)}; }
}  // namespace

int default_http_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return int(std::clamp(hw, 1u, 4u));
}

Status parse_device(const std::string& name, Device* device) {
  if (name == "cpu") {
    *device = Device::cpu();
    return {};
  }
  if (name == "cuda") {
    *device = Device::cuda(0);
    return {};
  }
  if (name.rfind("cuda:", 0) == 0) {
    int index = -1;
    const char* first = name.data() + 5;
    const char* last = name.data() + name.size();
    auto [ptr, ec] = std::from_chars(first, last, index);
    if (ec == std::errc() && ptr == last && first != last && index >= 0) {
      *device = Device::cuda(index);
      return {};
    }
  }
  return invalid(fmt::format("--device: '{}' is not cpu, cuda or cuda:N", name));
}

Status ServerConfig::validate() const {
  if (model_path.empty()) return invalid("--model-path is required");
  if (port < 0 || port > 65535) return invalid(fmt::format("--port {} is not in [0, 65535]", port));
  if (host.empty()) return invalid("--host must not be empty");
  if (context_length < 0) {
    return invalid(fmt::format("--context-length must be >= 1 (0: the model's), got {}",
                               context_length));
  }
  if (kv_cache_dtype != "auto" && kv_cache_dtype != "bf16" && kv_cache_dtype != "f32") {
    return invalid(fmt::format("--kv-cache-dtype must be auto, bf16 or f32, got '{}'",
                               kv_cache_dtype));
  }
  if (max_queued_requests < 0) {
    return invalid(fmt::format("--max-queued-requests must be >= 0, got {}", max_queued_requests));
  }
  if (max_body_bytes < 1024) {
    return invalid(fmt::format("--max-body-bytes must be >= 1024, got {}", max_body_bytes));
  }
  if (!(shutdown_timeout_s >= 0.0)) {
    return invalid(fmt::format("--shutdown-timeout must be >= 0, got {}", shutdown_timeout_s));
  }
  if (cuda_graph_max_bs < 0 || cuda_graph_max_bs > 4096) {
    return invalid(fmt::format("--cuda-graph-max-bs must be in [0, 4096], got {}", cuda_graph_max_bs));
  }
  if (http_threads < 1 || http_threads > 256) {
    return invalid(fmt::format("--http-threads must be in [1, 256], got {}", http_threads));
  }
  Device d;
  if (Status s = parse_device(device, &d); !s.ok()) return s;
  const runtime::SchedulerConfig& sc = engine.scheduler;
  // The scheduler names its own fields; say which flag sets each.
  if (sc.page_size < 1 || sc.page_size > 64) {
    return invalid(fmt::format("--page-size must be in [1, 64], got {}", sc.page_size));
  }
  if (sc.max_running_requests < 1) {
    return invalid(fmt::format("--max-running-requests must be >= 1, got {}",
                               sc.max_running_requests));
  }
  if (sc.max_total_tokens < 2 * int64_t(sc.page_size)) {
    return invalid(fmt::format("--max-total-tokens ({}) must hold at least two pages of "
                               "--page-size ({}) tokens", sc.max_total_tokens, sc.page_size));
  }
  if (sc.max_batch_tokens < 1) {
    return invalid(fmt::format("--chunked-prefill-size must be >= 1, got {}", sc.max_batch_tokens));
  }
  if (engine.pd_decode_reserve_tokens < 0) {
    return invalid(fmt::format("--disaggregation-decode-reserve must be >= 0, got {}",
                               engine.pd_decode_reserve_tokens));
  }
  if (Status s = engine.validate(); !s.ok()) return invalid("engine settings: " + s.message());
  if (ep < 1) return invalid(fmt::format("--ep must be at least 1, got {}", ep));
  if (ep > 1 && !dp_attention) {
    return invalid(fmt::format("--ep {} needs --dp-attention (each rank runs attention for its own "
                               "requests; expert parallelism under one attention is not built)",
                               ep));
  }
  if (max_dispatch_tokens_per_rank < 0) {
    return invalid(fmt::format("--max-dispatch-tokens-per-rank must be >= 0, got {}",
                               max_dispatch_tokens_per_rank));
  }
  if (dp_attention && role != "colocated") {
    return invalid(fmt::format("--ep / --dp-attention with --role {}: PD roles drive one engine; "
                               "run them without --ep for now", role));
  }
  if (dp_attention && d.is_cuda() && d.index != 0) {
    return invalid(fmt::format("--device {} with --dp-attention: the ranks use GPUs 0..{}; pass "
                               "--device cuda", device, ep - 1));
  }
  if (role != "colocated" && role != "prefill" && role != "decode") {
    return invalid(fmt::format("--role must be colocated, prefill or decode, got '{}'", role));
  }
  if (pd.bootstrap_timeout_ms <= 0) {
    return invalid(fmt::format("--bootstrap-timeout-ms must be > 0, got {}", pd.bootstrap_timeout_ms));
  }
  if (pd.transfer_timeout_ms <= 0) {
    return invalid(fmt::format("--transfer-timeout-ms must be > 0, got {}", pd.transfer_timeout_ms));
  }
  if (pd.transfer.backend != "tcp" && pd.transfer.backend != "ucx" &&
      pd.transfer.backend != "cuda_ipc") {
    return invalid(fmt::format("--transfer-backend must be tcp, ucx or cuda_ipc, got '{}'",
                               pd.transfer.backend));
  }
  if (const std::string& a = pd.transfer.advertise_host; !a.empty()) {
    if (role == "colocated") {
      return invalid("--pd-advertise-host is for --role prefill or decode (this server runs "
                     "colocated)");
    }
    const bool bad_char = std::any_of(a.begin(), a.end(), [](unsigned char ch) {
      return !(std::isalnum(ch) || ch == '.' || ch == '-' || ch == ':' || ch == '_');
    });
    if (bad_char || a.size() > 253 || a.front() == '-' || a.front() == '.') {
      return invalid(fmt::format("--pd-advertise-host '{}' is not a host name or IP address "
                                 "(letters, digits, '.', '-', ':', at most 253 characters)", a));
    }
    if (a == "0.0.0.0" || a == "::" || a.find_first_not_of(":0") == std::string::npos) {
      return invalid(fmt::format("--pd-advertise-host '{}' is a wildcard address: give the "
                                 "address peers should connect to", a));
    }
  }
  if (role != "colocated") {
    if (Status s = pd.validate(); !s.ok()) return invalid("PD settings (--role " + role + "): " + s.message());
  }
  return {};
}

}  // namespace tandem::server
