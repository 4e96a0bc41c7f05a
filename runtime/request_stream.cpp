#include "runtime/request_stream.h"

namespace tandem::runtime {

bool RequestStream::next(StreamEvent& event) {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return !events_.empty() || open_ == 0; });
  if (events_.empty()) return false;
  event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void RequestStream::push(StreamEvent event) {
  {
    std::lock_guard lk(mu_);
    if (event.finished) --open_;
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

}  // namespace tandem::runtime
