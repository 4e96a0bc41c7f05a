#include "disagg/transfer_batches.h"

#include <string>

namespace tandem::disagg {

void finish_batch(TransferBatch& b, Status s) {
  std::lock_guard lock(b.mu);
  b.finished = true;
  b.status = std::move(s);
  b.cv.notify_all();
}

std::shared_ptr<TransferBatch> BatchTable::add(std::span<const RegionHandle> dst,
                                               std::span<const TransferWrite> writes,
                                               std::chrono::milliseconds timeout) {
  auto batch = std::make_shared<TransferBatch>();
  batch->dst.assign(dst.begin(), dst.end());
  batch->writes.assign(writes.begin(), writes.end());
  batch->deadline = std::chrono::steady_clock::now() + timeout;
  std::lock_guard lock(mu_);
  batch->id = ++next_id_;
  batches_[batch->id] = batch;
  return batch;
}

Status BatchTable::poll(BatchId id, bool* done) {
  return wait_for(id, std::chrono::milliseconds(0), done);
}

Status BatchTable::wait(BatchId id, std::chrono::milliseconds timeout) {
  bool done = false;
  Status s = wait_for(id, timeout, &done);
  if (s.ok() && !done) return {StatusCode::kDeadlineExceeded, "transfer still running"};
  return s;
}

void BatchTable::cancel(BatchId id) {
  std::shared_ptr<TransferBatch> b;
  {
    std::lock_guard lock(mu_);
    auto it = batches_.find(id);
    if (it == batches_.end()) return;
    b = it->second;
    batches_.erase(it);
  }
  b->cancel = true;  // the transport skips it, or stops mid-batch and drops the connection
}

void BatchTable::cancel_all() {
  std::lock_guard lock(mu_);
  for (auto& [id, b] : batches_) b->cancel = true;
}

Status BatchTable::wait_for(BatchId id, std::chrono::milliseconds timeout, bool* done) {
  std::shared_ptr<TransferBatch> b;
  {
    std::lock_guard lock(mu_);
    auto it = batches_.find(id);
    if (it == batches_.end())
      return {StatusCode::kNotFound, "unknown or finished batch " + std::to_string(id)};
    b = it->second;
  }
  // The batch fails by itself at its deadline, so waiting past it (plus a margin for the
  // transport to notice) is pointless; this also keeps a huge `timeout` from overflowing.
  const auto now = std::chrono::steady_clock::now();
  const auto last = b->deadline + std::chrono::seconds(1);
  const auto until =
      timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(last - now)
          ? last
          : now + timeout;
  std::unique_lock bl(b->mu);
  b->cv.wait_until(bl, until, [&] { return b->finished; });
  *done = b->finished;
  if (!b->finished) return {};
  Status s = b->status;
  bl.unlock();
  std::lock_guard lock(mu_);
  batches_.erase(id);
  return s;
}

}  // namespace tandem::disagg
