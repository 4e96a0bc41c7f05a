#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"

namespace tandem {

namespace {

thread_local bool t_in_worker = false;

class ThreadPool {
 public:
  explicit ThreadPool(int n) { resize(n); }
  ~ThreadPool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    for (int i = 0; i + 1 < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  // Runs fn(chunk) for chunk in [0, chunks) across the pool; rethrows the first exception.
  void run(int64_t chunks, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> submit(submit_mutex_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_chunks_ = chunks;
      next_chunk_ = 0;
      done_chunks_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work_on_job();
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return done_chunks_ == job_chunks_; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work_on_job() {
    const bool was_in_worker = t_in_worker;
    t_in_worker = true;
    for (;;) {
      const int64_t c = next_chunk_.fetch_add(1);
      if (c >= job_chunks_) break;
      try {
        (*job_)(c);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_chunks_.fetch_add(1) + 1 == job_chunks_) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_all();
      }
    }
    t_in_worker = was_in_worker;
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stopping_ || (generation_ != seen && job_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
      }
      work_on_job();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t job_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<int64_t> done_chunks_{0};
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* env = std::getenv("TANDEM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::mutex g_pool_mutex;
std::unique_ptr<ThreadPool> g_pool;
int g_threads = 0;

ThreadPool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_threads) g_threads = default_threads();
  if (!g_pool || g_pool->size() != g_threads) g_pool = std::make_unique<ThreadPool>(g_threads);
  return *g_pool;
}

}  // namespace

int cpu_num_threads() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_threads) g_threads = default_threads();
  return g_threads;
}

void set_cpu_num_threads(int n) {
  TANDEM_CHECK(n >= 1, "thread count must be at least 1, got {}", n);
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_threads = n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int threads = t_in_worker ? 1 : cpu_num_threads();
  const int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(threads) * 4);
  if (chunks <= 1 || threads == 1) {
    fn(0, n);
    return;
  }
  const int64_t per = (n + chunks - 1) / chunks;
  pool().run(chunks, [&](int64_t c) {
    const int64_t b = c * per, e = std::min(n, b + per);
    if (b < e) fn(b, e);
  });
}

}  // namespace tandem
