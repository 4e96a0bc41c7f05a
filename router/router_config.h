// RouterConfig: the settings of `tandem router` (flags in app/cmd_router.cpp), validated once;
// UpstreamUrl: one upstream's http://HOST:PORT split into its parts.
// Thread-safety: plain values.
#pragma once

#include <string>
#include <vector>

#include "core/error.h"

namespace tandem::router {

enum class Policy { kRoundRobin, kLeastLoad };

struct UpstreamUrl {
  std::string url;   // as given on the command line
  std::string host;  // as written in the URL: what a decode server is told as bootstrap_host
  int port = 0;
};

// Parses http://HOST:PORT (optional trailing '/'); InvalidArgument names `flag`.
Status parse_upstream_url(const std::string& url, const std::string& flag, UpstreamUrl& out);

struct RouterConfig {
  std::vector<std::string> prefill_urls;  // --prefill
  std::vector<std::string> decode_urls;   // --decode
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  std::string policy = "round-robin";
  double health_interval_s = 2.0;
  double request_timeout_s = 600.0;
  double connect_timeout_s = 2.0;  // per upstream connection attempt (not a flag)
  std::string api_key;
  int http_threads = 256;  // cpp-httplib serves one connection per thread (docs/router.md)

  // Checks every field; the message names the flag at fault.
  Status validate() const;
  Policy policy_kind() const { return policy == "least-load" ? Policy::kLeastLoad : Policy::kRoundRobin; }
};

}  // namespace tandem::router
