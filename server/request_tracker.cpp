#include "server/request_tracker.h"

#include <chrono>

namespace tandem::server {

RequestTracker::Admit RequestTracker::admit(int32_t n) {
  std::lock_guard lk(mu_);
  if (draining_) {
    ++rejected_;
    return Admit::kDraining;
  }
  if (in_flight_ + n > max_sequences_) {
    ++rejected_;
    return Admit::kOverloaded;
  }
  in_flight_ += n;
  return Admit::kOk;
}

void RequestTracker::release(int32_t n) {
  {
    std::lock_guard lk(mu_);
    in_flight_ -= n;
  }
  idle_cv_.notify_all();
}

bool RequestTracker::bind(const std::string& rid, runtime::RequestId id) {
  std::lock_guard lk(mu_);
  return by_rid_.emplace(rid, id).second;
}

void RequestTracker::unbind(const std::string& rid) {
  std::lock_guard lk(mu_);
  by_rid_.erase(rid);
}

std::optional<runtime::RequestId> RequestTracker::find(const std::string& rid) const {
  std::lock_guard lk(mu_);
  auto it = by_rid_.find(rid);
  if (it == by_rid_.end()) return std::nullopt;
  return it->second;
}

std::vector<runtime::RequestId> RequestTracker::all() const {
  std::lock_guard lk(mu_);
  std::vector<runtime::RequestId> ids;
  for (const auto& [rid, id] : by_rid_) ids.push_back(id);
  return ids;
}

void RequestTracker::start_draining() {
  std::lock_guard lk(mu_);
  draining_ = true;
}

bool RequestTracker::draining() const {
  std::lock_guard lk(mu_);
  return draining_;
}

bool RequestTracker::wait_idle(double timeout_s) {
  std::unique_lock lk(mu_);
  idle_cv_.wait_for(lk, std::chrono::duration<double>(timeout_s),
                    [&] { return in_flight_ == 0 || interrupted_; });
  return in_flight_ == 0;
}

void RequestTracker::interrupt_wait() {
  {
    std::lock_guard lk(mu_);
    interrupted_ = true;
  }
  idle_cv_.notify_all();
}

int64_t RequestTracker::in_flight() const {
  std::lock_guard lk(mu_);
  return in_flight_;
}

int64_t RequestTracker::rejected() const {
  std::lock_guard lk(mu_);
  return rejected_;
}

}  // namespace tandem::server
