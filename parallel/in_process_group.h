// InProcessWorld: `size` ranks as threads of one process, exchanging through shared memory.
// The CPU implementation of ProcessGroup, so expert parallelism runs (and is tested) without
// GPUs. A collective posts this rank's buffers, meets the others at a barrier, copies what it
// receives straight out of the peers' send buffers, and meets them again before returning (so
// no sender reuses a buffer a peer is still reading).
//
// Failure: a rank that throws aborts the world; peers blocked in a collective then throw too
// ("aborted: rank r failed: ..."), so no thread hangs. Collectives also check that every rank
// is in the same call (kind and sequence number) and name the ranks that are not.
// Thread-safety: run() is called from one thread; each rank's group from its own thread.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/process_group.h"

namespace tandem {

class InProcessGroup;

class InProcessWorld {
 public:
  explicit InProcessWorld(int size);
  ~InProcessWorld();
  InProcessWorld(const InProcessWorld&) = delete;
  InProcessWorld& operator=(const InProcessWorld&) = delete;

  int size() const { return size_; }
  ProcessGroup& group(int rank);

  // Runs fn(group(r)) on one thread per rank and joins them. Returns one status per rank:
  // ok, or the error that rank threw (exceptions do not cross the thread boundary). After a
  // failed run the world stays aborted; make a new one.
  std::vector<Status> run(const std::function<void(ProcessGroup&)>& fn);

  // Wakes every rank blocked in a collective with an error naming `rank` and `why`.
  void abort(int rank, const std::string& why);

 private:
  friend class InProcessGroup;

  // What a rank posts for the collective it is in.
  struct Post {
    int kind = 0;
    uint64_t sequence = 0;
    const void* data = nullptr;           // send buffer
    const int64_t* block_bytes = nullptr;  // all_to_all_v: [size] bytes per destination
    int64_t count = 0;                      // all_gather: values per rank
  };

  void arrive_and_wait();  // throws once aborted
  // Barrier, then checks that all ranks posted the same kind and sequence as `rank`.
  void sync_and_check(int rank);

  const int size_;
  std::vector<std::unique_ptr<InProcessGroup>> groups_;
  std::vector<Post> posts_;  // [size]; rank r writes posts_[r] only, between barriers

  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string abort_message_;
};

}  // namespace tandem
