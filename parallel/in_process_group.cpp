#include "parallel/in_process_group.h"

#include <cstring>
#include <exception>
#include <thread>

namespace tandem {

namespace {

enum OpKind { kBarrier = 1, kAllGather = 2, kAllToAll = 3 };

const char* kind_name(int kind) {
  switch (kind) {
    case kBarrier: return "barrier";
    case kAllGather: return "all_gather";
    case kAllToAll: return "all_to_all_v";
    default: return "?";
  }
}

}  // namespace

class InProcessGroup final : public ProcessGroup {
 public:
  InProcessGroup(InProcessWorld& world, int rank) : world_(world), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return world_.size(); }
  Device device() const override { return Device::cpu(); }

  void barrier() override {
    post({kBarrier});
    world_.sync_and_check(rank_);
    world_.arrive_and_wait();  // nobody posts the next collective while a peer still checks
  }

  std::vector<int64_t> all_gather(const std::vector<int64_t>& values) override {
    const int64_t n = int64_t(values.size());
    post({kAllGather, 0, values.data(), nullptr, n});
    world_.sync_and_check(rank_);
    std::vector<int64_t> out(size_t(size()) * n);
    std::string error;
    for (int r = 0; r < size() && error.empty(); ++r) {
      const InProcessWorld::Post& p = world_.posts_[r];
      if (p.count != n) {
        error = fmt::format("all_gather: rank {} passes {} values, rank {} passes {}", rank_, n, r,
                            p.count);
      } else if (n > 0) {
        std::memcpy(out.data() + r * n, p.data, size_t(n) * sizeof(int64_t));
      }
    }
    // Errors are raised only after the second barrier: until every rank has copied, peers may
    // still read this rank's buffers, which unwinding would free.
    world_.arrive_and_wait();
    TANDEM_CHECK(error.empty(), "{}", error);
    return out;
  }

  void all_to_all_v(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override {
    TANDEM_CHECK(int(send_bytes.size()) == size() && int(recv_bytes.size()) == size(),
                 "all_to_all_v: {} send and {} recv sizes for {} ranks", send_bytes.size(),
                 recv_bytes.size(), size());
    post({kAllToAll, 0, send, send_bytes.data(), 0});
    world_.sync_and_check(rank_);
    int64_t recv_offset = 0;
    std::string error;
    for (int r = 0; r < size() && error.empty(); ++r) {
      const InProcessWorld::Post& p = world_.posts_[r];
      int64_t peer_offset = 0;  // where the block for this rank starts in r's send buffer
      for (int d = 0; d < rank_; ++d) peer_offset += p.block_bytes[d];
      const int64_t n = p.block_bytes[rank_];
      if (n != recv_bytes[r]) {
        error = fmt::format("all_to_all_v: rank {} expects {} bytes from rank {}, which sends {}",
                            rank_, recv_bytes[r], r, n);
      } else if (n > 0) {
        std::memcpy(static_cast<char*>(recv) + recv_offset,
                    static_cast<const char*>(p.data) + peer_offset, size_t(n));
      }
      recv_offset += n;
    }
    world_.arrive_and_wait();  // as in all_gather: raise only once every rank has copied
    TANDEM_CHECK(error.empty(), "{}", error);
  }

 private:
  void post(InProcessWorld::Post p) {
    p.sequence = ++sequence_;
    world_.posts_[rank_] = p;
  }

  InProcessWorld& world_;
  const int rank_;
  uint64_t sequence_ = 0;
};

InProcessWorld::InProcessWorld(int size) : size_(size), posts_(size_t(std::max(size, 0))) {
  TANDEM_CHECK(size >= 1, "InProcessWorld: size must be >= 1, got {}", size);
  for (int r = 0; r < size; ++r) groups_.push_back(std::make_unique<InProcessGroup>(*this, r));
}

InProcessWorld::~InProcessWorld() = default;

ProcessGroup& InProcessWorld::group(int rank) {
  TANDEM_CHECK(rank >= 0 && rank < size_, "InProcessWorld: rank {} outside [0, {})", rank, size_);
  return *groups_[rank];
}

std::vector<Status> InProcessWorld::run(const std::function<void(ProcessGroup&)>& fn) {
  std::vector<Status> status(size_);
  std::vector<std::thread> threads;
  for (int r = 0; r < size_; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(group(r));
      } catch (const std::exception& e) {
        status[r] = Status(StatusCode::kAborted, e.what());
        abort(r, e.what());
      } catch (...) {
        status[r] = Status(StatusCode::kAborted, "unknown exception");
        abort(r, "unknown exception");
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return status;
}

void InProcessWorld::abort(int rank, const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!aborted_) {
    aborted_ = true;
    abort_message_ = fmt::format("rank {} failed: {}", rank, why);
  }
  cv_.notify_all();
}

void InProcessWorld::arrive_and_wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  TANDEM_CHECK(!aborted_, "in-process group aborted: {}", abort_message_);
  const uint64_t generation = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != generation || aborted_; });
  TANDEM_CHECK(generation_ != generation, "in-process group aborted: {}", abort_message_);
}

void InProcessWorld::sync_and_check(int rank) {
  arrive_and_wait();
  const Post& mine = posts_[rank];
  for (int r = 0; r < size_; ++r) {
    const Post& p = posts_[r];
    TANDEM_CHECK(p.kind == mine.kind && p.sequence == mine.sequence,
                 "collective mismatch: rank {} is in {} #{}, rank {} in {} #{}", rank,
                 kind_name(mine.kind), mine.sequence, r, kind_name(p.kind), p.sequence);
  }
}

void all_to_all_rows(ProcessGroup& group, const Tensor& send, const std::vector<int64_t>& send_rows,
                     Tensor& recv, const std::vector<int64_t>& recv_rows) {
  TANDEM_CHECK(send.is_contiguous() && recv.is_contiguous(),
               "all_to_all_rows: send and recv must be contiguous");
  TANDEM_CHECK(send.dtype() == recv.dtype(), "all_to_all_rows: send is {}, recv {}",
               dtype_name(send.dtype()), dtype_name(recv.dtype()));
  TANDEM_CHECK(send.device() == group.device() && recv.device() == group.device(),
               "all_to_all_rows: buffers on {} and {}, the group runs on {}", send.device().name(),
               recv.device().name(), group.device().name());
  auto row_bytes_of = [](const Tensor& t) {
    int64_t n = int64_t(dtype_size_bytes(t.dtype()));
    for (int d = 1; d < t.dim(); ++d) n *= t.size(d);
    return n;
  };
  const int64_t row_bytes = row_bytes_of(send);
  TANDEM_CHECK(send.dim() >= 1 && recv.dim() >= 1 && row_bytes == row_bytes_of(recv),
               "all_to_all_rows: send {} and recv {} rows differ", send.describe(), recv.describe());
  int64_t send_total = 0, recv_total = 0;
  std::vector<int64_t> send_bytes, recv_bytes;
  for (int64_t n : send_rows) send_total += n, send_bytes.push_back(n * row_bytes);
  for (int64_t n : recv_rows) recv_total += n, recv_bytes.push_back(n * row_bytes);
  TANDEM_CHECK(send_total == send.size(0) && recv_total == recv.size(0),
               "all_to_all_rows: blocks of {} send / {} recv rows for tensors of {} / {}", send_total,
               recv_total, send.size(0), recv.size(0));
  group.all_to_all_v(send.raw_data(), send_bytes, recv.raw_data(), recv_bytes);
}

}  // namespace tandem
