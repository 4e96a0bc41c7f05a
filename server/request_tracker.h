// RequestTracker: the requests in flight. It bounds them (admission control: past the limit a
// request is refused with 503 and Retry-After rather than queued without bound), maps the
// client-visible request ids ("cmpl-...", /generate's rid) to engine ids for POST /abort, and
// lets shutdown wait for the in-flight requests or abort them all.
// Thread-safe: every method may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/request.h"

namespace tandem::server {

class RequestTracker {
 public:
  explicit RequestTracker(int64_t max_sequences) : max_sequences_(max_sequences) {}

  enum class Admit { kOk, kOverloaded, kDraining };
  // Reserves `n` sequences (a request's n completions).
  Admit admit(int32_t n);
  // Gives them back (the request ended or was never submitted).
  void release(int32_t n);

  // Names an admitted request; false when `rid` is already in use.
  bool bind(const std::string& rid, runtime::RequestId id);
  void unbind(const std::string& rid);
  std::optional<runtime::RequestId> find(const std::string& rid) const;
  std::vector<runtime::RequestId> all() const;

  // From now on admit() answers kDraining.
  void start_draining();
  bool draining() const;
  // Waits until nothing is in flight; false on timeout or after interrupt_wait().
  bool wait_idle(double timeout_s);
  // Makes the current and later wait_idle calls with a timeout give up at once.
  void interrupt_wait();
  int64_t in_flight() const;
  int64_t rejected() const;

 private:
  const int64_t max_sequences_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  int64_t in_flight_ = 0;  // sequences
  int64_t rejected_ = 0;
  bool draining_ = false;
  bool interrupted_ = false;
  std::unordered_map<std::string, runtime::RequestId> by_rid_;
};

}  // namespace tandem::server
