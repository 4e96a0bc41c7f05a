// UpstreamPool: the prefill and decode servers behind the router, their health and their
// in-flight counts, and the choice of one per request (round-robin or least-load, healthy only).
// A background thread polls every upstream's /health and /pd_info each interval: an upstream is
// healthy when /health answers 200 and /pd_info names the role it was given (and, for a
// prefill, a bootstrap port). A connection failure seen by a request marks it unhealthy at once.
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "router/router_config.h"

namespace tandem::router {

enum class Role { kPrefill, kDecode };
const char* role_name(Role role);

struct Upstream {
  Role role = Role::kPrefill;
  UpstreamUrl url;
  std::atomic<bool> healthy{false};
  std::atomic<int> bootstrap_port{0};  // from /pd_info; prefill only
  std::atomic<int64_t> in_flight{0};   // requests through this router now
  std::atomic<int64_t> requests_total{0};  // generation requests sent to it
  std::string last_problem;  // guarded by UpstreamPool's mutex; logged when it changes
  std::string advertised_host;  // /pd_info "bootstrap_host" (prefill, optional); guarded by mu_
};

class UpstreamPool {
 public:
  // The URLs must have passed RouterConfig::validate().
  explicit UpstreamPool(const RouterConfig& config);
  ~UpstreamPool();

  // Polls every upstream once now (blocking), then keeps polling on a thread until stop().
  void start();
  void stop();
  void poll_now();

  // A healthy upstream of `role` by the policy, skipping `exclude` (nullptr: none); nullptr when
  // none is healthy. The caller owns one in-flight unit of the result (release() gives it back).
  Upstream* acquire(Role role, const Upstream* exclude = nullptr);
  void release(Upstream* u) { u->in_flight.fetch_sub(1); }
  // A request could not connect: skip it until the next poll that finds it answering.
  void mark_down(Upstream* u, const std::string& why);

  bool any_healthy(Role role) const;
  // Where decode servers reach this prefill's bootstrap endpoint: the host /pd_info advertised
  // (serve --pd-advertise-host), else the host of its URL.
  std::string bootstrap_host(const Upstream& u) const;
  const std::vector<std::unique_ptr<Upstream>>& all() const { return upstreams_; }

 private:
  void poll_one(Upstream& u);
  void set_state(Upstream& u, bool healthy, const std::string& problem);

  RouterConfig config_;
  Policy policy_;
  std::vector<std::unique_ptr<Upstream>> upstreams_;
  std::atomic<uint64_t> rr_prefill_{0}, rr_decode_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread poller_;
};

}  // namespace tandem::router
