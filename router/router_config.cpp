#include "router/router_config.h"

#include <regex>

namespace tandem::router {

Status parse_upstream_url(const std::string& url, const std::string& flag, UpstreamUrl& out) {
  static const std::regex re(R"(^http://([A-Za-z0-9._-]+|\[[0-9a-fA-F:.]+\]):(\d{1,5})/?$)");
  std::smatch m;
  if (!std::regex_match(url, m, re)) {
    return {StatusCode::kInvalidArgument,
            flag + " '" + url + "' must look like http://HOST:PORT (https is not supported)"};
  }
  out.url = url;
  out.host = m[1];
  out.port = std::stoi(m[2]);
  if (out.port < 1 || out.port > 65535) {
    return {StatusCode::kInvalidArgument, flag + " '" + url + "': port out of range 1-65535"};
  }
  return {};
}

Status RouterConfig::validate() const {
  if (prefill_urls.empty()) return {StatusCode::kInvalidArgument, "--prefill: give at least one prefill server URL"};
  if (decode_urls.empty()) return {StatusCode::kInvalidArgument, "--decode: give at least one decode server URL"};
  UpstreamUrl u;
  for (const auto& url : prefill_urls) {
    if (Status s = parse_upstream_url(url, "--prefill", u); !s.ok()) return s;
  }
  for (const auto& url : decode_urls) {
    if (Status s = parse_upstream_url(url, "--decode", u); !s.ok()) return s;
  }
  if (host.empty()) return {StatusCode::kInvalidArgument, "--host must not be empty"};
  if (port < 0 || port > 65535) return {StatusCode::kInvalidArgument, "--port " + std::to_string(port) + " out of range 0-65535"};
  if (policy != "round-robin" && policy != "least-load") {
    return {StatusCode::kInvalidArgument, "--policy '" + policy + "' must be round-robin or least-load"};
  }
  if (!(health_interval_s > 0.0 && health_interval_s <= 3600.0)) {
    return {StatusCode::kInvalidArgument, "--health-interval-s must be in (0, 3600]"};
  }
  if (!(request_timeout_s > 0.0)) return {StatusCode::kInvalidArgument, "--request-timeout-s must be > 0"};
  if (!(connect_timeout_s > 0.0)) return {StatusCode::kInvalidArgument, "connect timeout must be > 0"};
  if (http_threads < 1) return {StatusCode::kInvalidArgument, "--http-threads must be >= 1"};
  return {};
}

}  // namespace tandem::router
