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

bool RequestStream::try_next(StreamEvent& event) {
  std::lock_guard lk(mu_);
  if (events_.empty()) return false;
  event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void RequestStream::set_on_push(std::function<void()> on_push) {
  std::lock_guard lk(mu_);
  on_push_ = std::move(on_push);
}

void RequestStream::push(StreamEvent event) {
  std::function<void()> wake;
  {
    std::lock_guard lk(mu_);
    if (event.finished) --open_;
    events_.push_back(std::move(event));
    wake = on_push_;  // a copy: the reader may replace it while it runs
  }
  cv_.notify_all();
  if (wake) wake();
}

}  // namespace tandem::runtime
