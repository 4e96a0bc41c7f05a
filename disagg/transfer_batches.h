// The batch bookkeeping the transfer engine's transports share (tcp, ucx): a submitted
// batch, its completion, and the table that poll / wait / cancel read. How a batch moves is the
// transport's business; how it is found, waited for and forgotten is the same for all.
// Thread-safety: BatchTable is thread-safe; a Batch's result is guarded by its own mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "disagg/transfer_engine.h"

namespace tandem::disagg {

struct TransferBatch {
  BatchId id = 0;
  std::vector<RegionHandle> dst;
  std::vector<TransferWrite> writes;
  std::chrono::steady_clock::time_point deadline;  // the batch fails by itself after this
  std::atomic<bool> cancel{false};
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;  // guarded by mu
  Status status;          // guarded by mu
};

// Records the batch's result and wakes its waiters.
void finish_batch(TransferBatch& b, Status s);

class BatchTable {
 public:
  // A new batch of these writes, registered under a fresh id, failing `timeout` from now.
  std::shared_ptr<TransferBatch> add(std::span<const RegionHandle> dst,
                                     std::span<const TransferWrite> writes,
                                     std::chrono::milliseconds timeout);
  // TransferEngine::poll / wait / cancel: a finished batch is reported once, then forgotten.
  Status poll(BatchId id, bool* done);
  Status wait(BatchId id, std::chrono::milliseconds timeout);
  void cancel(BatchId id);
  void cancel_all();  // flags every batch still known (engine shutdown)

 private:
  Status wait_for(BatchId id, std::chrono::milliseconds timeout, bool* done);

  std::mutex mu_;
  std::unordered_map<BatchId, std::shared_ptr<TransferBatch>> batches_;
  BatchId next_id_ = 0;
};

}  // namespace tandem::disagg
