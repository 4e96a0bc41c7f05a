#include "router/upstream_pool.h"

#include <httplib.h>

#include <chrono>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/log.h"

namespace tandem::router {

const char* role_name(Role role) { return role == Role::kPrefill ? "prefill" : "decode"; }

UpstreamPool::UpstreamPool(const RouterConfig& config) : config_(config), policy_(config.policy_kind()) {
  auto add = [&](const std::vector<std::string>& urls, Role role, const char* flag) {
    for (const auto& url : urls) {
      auto u = std::make_unique<Upstream>();
      u->role = role;
      Status s = parse_upstream_url(url, flag, u->url);
      TANDEM_CHECK(s.ok(), "{}", s.message());
      upstreams_.push_back(std::move(u));
    }
  };
  add(config.prefill_urls, Role::kPrefill, "--prefill");
  add(config.decode_urls, Role::kDecode, "--decode");
}

UpstreamPool::~UpstreamPool() { stop(); }

void UpstreamPool::start() {
  poll_now();
  poller_ = std::thread([this] {
    std::unique_lock lock(mu_);
    const auto interval = std::chrono::duration<double>(config_.health_interval_s);
    while (!cv_.wait_for(lock, interval, [this] { return stopping_; })) {
      lock.unlock();
      poll_now();
      lock.lock();
    }
  });
}

void UpstreamPool::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

void UpstreamPool::poll_now() {
  // One thread per upstream, so one slow upstream does not delay the others' verdicts.
  std::vector<std::thread> threads;
  for (auto& u : upstreams_) threads.emplace_back([this, p = u.get()] { poll_one(*p); });
  for (auto& t : threads) t.join();
}

void UpstreamPool::poll_one(Upstream& u) {
  httplib::Client client(u.url.host, u.url.port);
  const auto timeout_us = static_cast<int64_t>(std::min(config_.health_interval_s, 5.0) * 1e6);
  client.set_connection_timeout(0, timeout_us);
  client.set_read_timeout(0, timeout_us);
  client.set_write_timeout(0, timeout_us);
  auto health = client.Get("/health");
  if (!health) return set_state(u, false, "/health: " + httplib::to_string(health.error()));
  if (health->status != 200) return set_state(u, false, "/health answered " + std::to_string(health->status));
  auto info = client.Get("/pd_info");
  if (!info) return set_state(u, false, "/pd_info: " + httplib::to_string(info.error()));
  if (info->status != 200) return set_state(u, false, "/pd_info answered " + std::to_string(info->status));
  nlohmann::json j = nlohmann::json::parse(info->body, nullptr, false);
  if (!j.is_object() || !j.contains("role") || !j["role"].is_string()) {
    return set_state(u, false, "/pd_info: not {\"role\": ..., \"bootstrap_port\": ...}");
  }
  const std::string role = j["role"];
  if (role != role_name(u.role)) {
    return set_state(u, false, std::string("/pd_info says role '") + role + "' but it was given as --" +
                                   role_name(u.role));
  }
  if (u.role == Role::kPrefill) {
    const int64_t port = j.value("bootstrap_port", int64_t(0));
    if (port < 1 || port > 65535) {
      return set_state(u, false, "/pd_info: prefill bootstrap_port " + std::to_string(port) + " is not a port");
    }
    u.bootstrap_port = static_cast<int>(port);
    std::string advertised;
    if (j.contains("bootstrap_host")) {
      if (!j["bootstrap_host"].is_string() || j["bootstrap_host"].get<std::string>().empty()) {
        return set_state(u, false, "/pd_info: bootstrap_host is not a non-empty string");
      }
      advertised = j["bootstrap_host"];
    }
    std::lock_guard lock(mu_);
    u.advertised_host = advertised;
  }
  set_state(u, true, "");
}

std::string UpstreamPool::bootstrap_host(const Upstream& u) const {
  std::lock_guard lock(mu_);
  return u.advertised_host.empty() ? u.url.host : u.advertised_host;
}

void UpstreamPool::set_state(Upstream& u, bool healthy, const std::string& problem) {
  std::lock_guard lock(mu_);
  const bool was = u.healthy.exchange(healthy);
  if (healthy && !was) {
    TANDEM_LOG_INFO("router: {} {} is healthy", role_name(u.role), u.url.url);
  } else if (!healthy && (was || problem != u.last_problem)) {
    TANDEM_LOG_WARN("router: {} {} is unhealthy: {}", role_name(u.role), u.url.url, problem);
  }
  u.last_problem = problem;
}

void UpstreamPool::mark_down(Upstream* u, const std::string& why) { set_state(*u, false, why); }

bool UpstreamPool::any_healthy(Role role) const {
  for (const auto& u : upstreams_) {
    if (u->role == role && u->healthy) return true;
  }
  return false;
}

Upstream* UpstreamPool::acquire(Role role, const Upstream* exclude) {
  std::vector<Upstream*> candidates;
  for (const auto& u : upstreams_) {
    if (u->role == role && u->healthy && u.get() != exclude) candidates.push_back(u.get());
  }
  if (candidates.empty()) return nullptr;
  // The round-robin cursor also breaks least-load ties, so equal loads still rotate.
  std::atomic<uint64_t>& cursor = role == Role::kPrefill ? rr_prefill_ : rr_decode_;
  const uint64_t start = cursor.fetch_add(1);
  const size_t n = candidates.size();
  Upstream* pick = candidates[start % n];
  if (policy_ == Policy::kLeastLoad) {
    int64_t best = std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i < n; ++i) {
      Upstream* c = candidates[(start + i) % n];
      const int64_t load = c->in_flight.load();
      if (load < best) {
        best = load;
        pick = c;
      }
    }
  }
  pick->in_flight.fetch_add(1);
  return pick;
}

}  // namespace tandem::router
