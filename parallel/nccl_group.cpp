// NcclGroup (nccl_group.h): ProcessGroup over NCCL, libnccl.so.2 loaded with dlopen.
// Host waits poll the stream (cudaStreamQuery) instead of blocking in cudaStreamSynchronize, so
// a rank whose peer failed sees the world's abort flag or NCCL's async error and throws.
#include "parallel/nccl_group.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "core/log.h"
#include "ops/cuda/device.h"

namespace tandem {

namespace {

// The NCCL entry points tandem uses, resolved once from libnccl.so.2.
struct NcclApi {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclGetLastError) get_last_error = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
};

const NcclApi& nccl() {
  static const NcclApi api = [] {
    // NVLink multicast (NVLS) stays off: on shared hosts a program using it can take the GPUs
    // out of service (docs/parallel.md). Set before NCCL reads its environment.
    if (std::getenv("NCCL_NVLS_ENABLE") == nullptr) {
      setenv("NCCL_NVLS_ENABLE", "0", 0);
      TANDEM_LOG_INFO("nccl: NCCL_NVLS_ENABLE was unset; set to 0 (NVLink multicast off)");
    }
    const char* path = std::getenv("TANDEM_NCCL_LIB");
    if (path == nullptr || path[0] == '\0') path = "libnccl.so.2";
    void* lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    TANDEM_CHECK(lib != nullptr,
                 "nccl: dlopen({}) failed: {} (put libnccl.so.2's directory on LD_LIBRARY_PATH, "
                 "e.g. the nvidia-nccl pip package's nvidia/nccl/lib, or set TANDEM_NCCL_LIB)",
                 path, dlerror());
    NcclApi a;
    auto load = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      TANDEM_CHECK(fn != nullptr, "nccl: {} has no symbol {}", path, name);
    };
    load(a.get_unique_id, "ncclGetUniqueId");
    load(a.comm_init_rank, "ncclCommInitRank");
    load(a.comm_destroy, "ncclCommDestroy");
    load(a.comm_abort, "ncclCommAbort");
    load(a.comm_get_async_error, "ncclCommGetAsyncError");
    load(a.get_error_string, "ncclGetErrorString");
    load(a.get_last_error, "ncclGetLastError");
    load(a.group_start, "ncclGroupStart");
    load(a.group_end, "ncclGroupEnd");
    load(a.send, "ncclSend");
    load(a.recv, "ncclRecv");
    load(a.all_gather, "ncclAllGather");
    load(a.all_reduce, "ncclAllReduce");
    int version = 0;
    auto get_version = reinterpret_cast<ncclResult_t (*)(int*)>(dlsym(lib, "ncclGetVersion"));
    if (get_version != nullptr) get_version(&version);
    TANDEM_LOG_INFO("nccl: loaded {} (version code {}, headers {})", path, version,
                    NCCL_VERSION_CODE);
    return a;
  }();
  return api;
}

// Throws naming the call, NCCL's error string and its last-error detail.
void check_nccl(ncclResult_t r, const char* call, ncclComm_t comm) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = nccl().get_last_error(comm);
  TANDEM_FAIL("{} failed: {} ({})", call, nccl().get_error_string(r),
              last != nullptr && last[0] != '\0' ? last : "no detail");
}
#define TANDEM_NCCL_CHECK(call, comm) check_nccl((call), #call, (comm))

void check_cuda(cudaError_t e, const char* call) {
  TANDEM_CHECK(e == cudaSuccess, "{} failed: {} ({})", call, cudaGetErrorName(e),
               cudaGetErrorString(e));
}

// Shared by the ranks of run_nccl_ranks: the first failure sets it, the others' waits see it.
struct AbortFlag {
  std::atomic<bool> aborted{false};
  std::mutex mutex;
  std::string why;
};

class NcclGroup final : public ProcessGroup {
 public:
  NcclGroup(const NcclGroupOptions& o, AbortFlag* abort) : options_(o), abort_(abort) {
    TANDEM_CHECK(o.size >= 1 && o.rank >= 0 && o.rank < o.size,
                 "nccl group: rank {} of a group of {}", o.rank, o.size);
    const int devices = ops::cuda::device_count();
    TANDEM_CHECK(o.device_index >= 0 && o.device_index < devices,
                 "nccl group: rank {} on cuda:{}, but {} CUDA devices are visible", o.rank,
                 o.device_index, devices);
    ops::cuda::DeviceGuard guard(o.device_index);
    stream_ = o.stream != nullptr ? static_cast<cudaStream_t>(o.stream)
                                  : ops::cuda::current_stream(o.device_index);
    ncclUniqueId id;
    static_assert(sizeof(id.internal) == std::tuple_size_v<NcclUniqueId>);
    std::memcpy(id.internal, o.unique_id.data(), sizeof(id.internal));
    TANDEM_NCCL_CHECK(nccl().comm_init_rank(&comm_, o.size, id, o.rank), comm_);
    scratch_ = static_cast<int64_t*>(ops::cuda::device_alloc(kScratchBytes, o.device_index));
    host_ = static_cast<int64_t*>(ops::cuda::pinned_host_alloc(kScratchBytes));
    TANDEM_CHECK(scratch_ != nullptr, "nccl group: no device memory for the scratch buffer");
    TANDEM_LOG_DEBUG("nccl: rank {} of {} on cuda:{}", o.rank, o.size, o.device_index);
  }

  ~NcclGroup() override {
    ops::cuda::DeviceGuard guard(options_.device_index);
    if (failed_ || (abort_ != nullptr && abort_->aborted)) {
      nccl().comm_abort(comm_);
    } else {
      cudaStreamSynchronize(stream_);
      nccl().comm_destroy(comm_);
    }
    ops::cuda::device_free(scratch_, options_.device_index);
    ops::cuda::pinned_host_free(host_);
  }

  int rank() const override { return options_.rank; }
  int size() const override { return options_.size; }
  Device device() const override { return Device::cuda(options_.device_index); }

  void barrier() override {
    ops::cuda::DeviceGuard guard(options_.device_index);
    guarded([&] {
      TANDEM_NCCL_CHECK(nccl().all_reduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, stream_),
                        comm_);
      wait("barrier");
    });
  }

  std::vector<int64_t> all_gather(const std::vector<int64_t>& values) override {
    const size_t n = values.size(), total = n * size_t(size());
    std::vector<int64_t> out(total);
    if (n == 0) return out;
    TANDEM_CHECK((n + total) * sizeof(int64_t) <= kScratchBytes,
                 "nccl all_gather: {} values per rank, the scratch buffer holds {}", n,
                 kScratchBytes / sizeof(int64_t) / (size() + 1));
    ops::cuda::DeviceGuard guard(options_.device_index);
    guarded([&] {
      std::memcpy(host_, values.data(), n * sizeof(int64_t));
      check_cuda(cudaMemcpyAsync(scratch_, host_, n * sizeof(int64_t), cudaMemcpyHostToDevice,
                                 stream_), "cudaMemcpyAsync (all_gather in)");
      TANDEM_NCCL_CHECK(nccl().all_gather(scratch_, scratch_ + n, n, ncclInt64, comm_, stream_),
                        comm_);
      check_cuda(cudaMemcpyAsync(host_, scratch_ + n, total * sizeof(int64_t),
                                 cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (all_gather out)");
      wait("all_gather");
      std::memcpy(out.data(), host_, total * sizeof(int64_t));
    });
    return out;
  }

  void all_to_all_v(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                    const std::vector<int64_t>& recv_bytes) override {
    const int n = size();
    TANDEM_CHECK(int(send_bytes.size()) == n && int(recv_bytes.size()) == n,
                 "nccl all_to_all_v: {} send and {} recv block sizes for {} ranks",
                 send_bytes.size(), recv_bytes.size(), n);
    ops::cuda::DeviceGuard guard(options_.device_index);
    guarded([&] {
      const char* s = static_cast<const char*>(send);
      char* r = static_cast<char*>(recv);
      TANDEM_NCCL_CHECK(nccl().group_start(), comm_);
      for (int peer = 0; peer < n; ++peer) {
        TANDEM_CHECK(send_bytes[peer] >= 0 && recv_bytes[peer] >= 0,
                     "nccl all_to_all_v: negative block size for rank {}", peer);
        if (send_bytes[peer] > 0) {
          TANDEM_NCCL_CHECK(nccl().send(s, size_t(send_bytes[peer]), ncclInt8, peer, comm_, stream_),
                            comm_);
        }
        if (recv_bytes[peer] > 0) {
          TANDEM_NCCL_CHECK(nccl().recv(r, size_t(recv_bytes[peer]), ncclInt8, peer, comm_, stream_),
                            comm_);
        }
        s += send_bytes[peer];
        r += recv_bytes[peer];
      }
      TANDEM_NCCL_CHECK(nccl().group_end(), comm_);
      // Asynchronous: ordered with the kernels on the same stream, no host wait. A size that
      // disagrees with the peer's shows up as an NCCL error or a hang caught by wait() later.
    });
  }

 private:
  static constexpr size_t kScratchBytes = 1 << 20;

  template <class Fn>
  void guarded(Fn&& fn) {
    if (abort_ != nullptr && abort_->aborted) {
      std::lock_guard lock(abort_->mutex);
      TANDEM_FAIL("nccl rank {}: aborted: {}", rank(), abort_->why);
    }
    try {
      fn();
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  // Waits for the stream, polling so that an abort or NCCL's async error ends the wait.
  void wait(const char* what) {
    for (int spins = 0;; ++spins) {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      TANDEM_CHECK(e == cudaErrorNotReady, "nccl {}: stream error {} ({})", what, cudaGetErrorName(e),
                   cudaGetErrorString(e));
      ncclResult_t async = ncclSuccess;
      nccl().comm_get_async_error(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        TANDEM_FAIL("nccl {}: ncclCommGetAsyncError: {}", what, nccl().get_error_string(async));
      }
      if (abort_ != nullptr && abort_->aborted) {
        std::lock_guard lock(abort_->mutex);
        TANDEM_FAIL("nccl {} on rank {}: aborted: {}", what, rank(), abort_->why);
      }
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  const NcclGroupOptions options_;
  AbortFlag* abort_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int64_t* scratch_ = nullptr;  // device: all_gather in + out, the barrier's word
  int64_t* host_ = nullptr;     // pinned: all_gather staging
  bool failed_ = false;
};

}  // namespace

NcclUniqueId make_nccl_unique_id() {
  ncclUniqueId id;
  TANDEM_NCCL_CHECK(nccl().get_unique_id(&id), nullptr);
  NcclUniqueId out;
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

std::unique_ptr<ProcessGroup> make_nccl_group(const NcclGroupOptions& options) {
  return std::make_unique<NcclGroup>(options, nullptr);
}

std::vector<Status> run_nccl_ranks(int size, const std::function<void(ProcessGroup&)>& fn) {
  TANDEM_CHECK(size >= 1, "run_nccl_ranks: {} ranks", size);
  const NcclUniqueId id = make_nccl_unique_id();
  AbortFlag abort;
  std::vector<Status> status(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        ops::cuda::DeviceGuard guard(r);
        NcclGroupOptions o;
        o.rank = r;
        o.size = size;
        o.device_index = r;
        o.unique_id = id;
        NcclGroup group(o, &abort);
        fn(group);
      } catch (const std::exception& e) {
        status[r] = Status(StatusCode::kInternal, fmt::format("rank {}: {}", r, e.what()));
        std::lock_guard lock(abort.mutex);
        if (!abort.aborted) abort.why = fmt::format("rank {} failed: {}", r, e.what());
        abort.aborted = true;
      }
    });
  }
  for (auto& t : threads) t.join();
  return status;
}

}  // namespace tandem
