#include "disagg/cuda_ipc_transport.h"

#ifdef TANDEM_DISAGG_CUDA
#include "disagg/cuda_page_copy.h"
#endif

#ifdef TANDEM_DISAGG_CUDA

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

namespace tandem::disagg {
namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return {};
  return {StatusCode::kInternal, std::string("cuda_ipc: ") + what + ": " + cudaGetErrorString(e)};
}

// The IPC handle names a whole allocation; cuMemGetAddressRange finds the one holding a
// pointer. Fetched through the runtime so the library does not link libcuda (test binaries
// must start on machines without a driver).
Status allocation_base(const void* ptr, CUdeviceptr* base, size_t* bytes) {
  using Fn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static Fn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<Fn>(f);
  }();
  if (!fn) return {StatusCode::kInternal, "cuda_ipc: cuMemGetAddressRange unavailable"};
  if (fn(base, bytes, CUdeviceptr(ptr)) != CUDA_SUCCESS)
    return {StatusCode::kInvalidArgument, "cuda_ipc: pointer is not device memory"};
  return {};
}

class CudaIpcTransferEngine final : public TransferEngine {
 public:
  explicit CudaIpcTransferEngine(const TransferConfig& config) : config_(config) {
    std::random_device rd;
    next_region_id_ = (uint64_t(rd()) << 32 | rd()) & 0x7fffffffffff0000ull;
  }

  Status start() {
    // How a batch's writes are issued: "memcpy" (one cudaMemcpyAsync each, copy engines),
    // "kernel" (launch_page_copies, kPageCopiesPerLaunch writes per launch), or "auto" (the
    // default): the kernel from kKernelMinWrites writes on, where per-copy launch overhead
    // would dominate 64-token pages (measured by bench/transfer_bench).
    const char* mode = std::getenv("TANDEM_CUDA_IPC_COPY");
    std::string m = mode ? mode : "auto";
    if (m == "memcpy") kernel_min_writes_ = SIZE_MAX;
    else if (m == "kernel") kernel_min_writes_ = 1;
    else if (m != "auto")
      return {StatusCode::kInvalidArgument,
              "TANDEM_CUDA_IPC_COPY: '" + m + "' is not auto, memcpy or kernel"};
    if (Status s = cuda_status(cudaSetDevice(config_.device_index), "cudaSetDevice"); !s.ok())
      return s;
    return cuda_status(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                       "cudaStreamCreate");
  }

  ~CudaIpcTransferEngine() override {
    cudaSetDevice(config_.device_index);
    for (auto& [id, b] : batches_) {
      cudaEventSynchronize(b.event);
      cudaEventDestroy(b.event);
    }
    for (auto& [key, ptr] : opened_) cudaIpcCloseMemHandle(ptr);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string backend() const override { return "cuda_ipc"; }

  Status register_region(void* ptr, size_t length, MemoryKind kind, int device,
                         RegionHandle* out) override {
    if (ptr == nullptr || length == 0)
      return {StatusCode::kInvalidArgument, "register_region: null pointer or zero length"};
    if (kind != MemoryKind::kDevice)
      return {StatusCode::kInvalidArgument, "cuda_ipc moves device memory only"};
    if (Status s = cuda_status(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
    CUdeviceptr base = 0;
    size_t alloc_bytes = 0;
    if (Status s = allocation_base(ptr, &base, &alloc_bytes); !s.ok()) return s;
    cudaIpcMemHandle_t h;
    if (Status s = cuda_status(cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(base)),
                               "cudaIpcGetMemHandle");
        !s.ok())
      return s;
    std::lock_guard lock(mu_);
    uint64_t id = ++next_region_id_;
    regions_[id] = {static_cast<uint8_t*>(ptr), length};
    *out = RegionHandle{};
    out->backend = "cuda_ipc";
    out->region_id = id;
    out->length_bytes = length;
    out->kind = MemoryKind::kDevice;
    out->device_index = device;
    out->ipc_handle.assign(reinterpret_cast<uint8_t*>(&h), reinterpret_cast<uint8_t*>(&h) + sizeof(h));
    out->ipc_offset_bytes = uint64_t(reinterpret_cast<uintptr_t>(ptr) - base);
    return {};
  }

  Status unregister_region(uint64_t id) override {
    std::lock_guard lock(mu_);
    // Copies on the stream may still read it: drain the stream first.
    cudaStreamSynchronize(stream_);
    if (regions_.erase(id) == 0) return {StatusCode::kNotFound, "unregister_region: unknown"};
    return {};
  }

  Status submit(std::span<const RegionHandle> dst, std::span<const TransferWrite> writes,
                BatchId* out) override {
    std::lock_guard lock(mu_);
    std::vector<uint8_t*> dst_base(dst.size());
    for (size_t i = 0; i < dst.size(); ++i) {
      if (dst[i].backend != "cuda_ipc" || dst[i].ipc_handle.size() != sizeof(cudaIpcMemHandle_t))
        return {StatusCode::kInvalidArgument, "submit: destination is not a cuda_ipc region"};
      if (Status s = open(dst[i], &dst_base[i]); !s.ok()) return s;
    }
    if (Status s = cuda_status(cudaSetDevice(config_.device_index), "cudaSetDevice"); !s.ok())
      return s;
    if (Status s = check_writes(dst, writes, regions_); !s.ok()) return s;
    if (writes.size() >= kernel_min_writes_) {
      std::vector<PageCopy> copies;
      copies.reserve(std::min(writes.size(), kPageCopiesPerLaunch));
      for (size_t i = 0; i < writes.size(); ++i) {
        const TransferWrite& w = writes[i];
        if (w.length_bytes > 0)
          copies.push_back({regions_[w.src_region].ptr + w.src_offset_bytes,
                            dst_base[w.dst_index] + w.dst_offset_bytes, w.length_bytes});
        if (copies.size() == kPageCopiesPerLaunch || (i + 1 == writes.size() && !copies.empty())) {
          if (Status s = cuda_status(cudaError_t(launch_page_copies(copies.data(), copies.size(),
                                                                    stream_)),
                                     "page copy kernel");
              !s.ok())
            return s;
          copies.clear();
        }
      }
    } else {
      for (const TransferWrite& w : writes) {
        const uint8_t* src = regions_[w.src_region].ptr + w.src_offset_bytes;
        uint8_t* d = dst_base[w.dst_index] + w.dst_offset_bytes;
        if (Status s = cuda_status(cudaMemcpyAsync(d, src, w.length_bytes, cudaMemcpyDefault,
                                                   stream_),
                                   "cudaMemcpyAsync");
            !s.ok())
          return s;
      }
    }
    Pending p;
    if (Status s = cuda_status(cudaEventCreateWithFlags(&p.event, cudaEventDisableTiming),
                               "cudaEventCreate");
        !s.ok())
      return s;
    cudaEventRecord(p.event, stream_);
    p.deadline = Clock::now() + std::chrono::milliseconds(config_.transfer_timeout_ms);
    *out = ++next_batch_id_;
    batches_[*out] = p;
    return {};
  }

  Status poll(BatchId id, bool* done) override {
    std::lock_guard lock(mu_);
    auto it = batches_.find(id);
    if (it == batches_.end()) return {StatusCode::kNotFound, "unknown or finished batch"};
    cudaError_t e = cudaEventQuery(it->second.event);
    *done = e == cudaSuccess;
    if (e == cudaErrorNotReady) {
      if (Clock::now() < it->second.deadline) return {};
      e = cudaErrorTimeout;
    }
    cudaEventDestroy(it->second.event);  // destroying a pending event is allowed
    batches_.erase(it);
    return cuda_status(e, "transfer");
  }

  Status wait(BatchId id, std::chrono::milliseconds timeout) override {
    // A batch of a few MB over NVLink takes tens of microseconds, less than one sleep_for's
    // wake-up: yield for the first 2 ms, then nap (measured by bench/transfer_bench).
    const auto start = Clock::now(), until = start + timeout;
    for (;;) {
      bool done = false;
      Status s = poll(id, &done);
      if (!s.ok() || done) return s;
      const auto now = Clock::now();
      if (now >= until) return {StatusCode::kDeadlineExceeded, "transfer still running"};
      if (now - start < std::chrono::milliseconds(2))
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void cancel(BatchId id) override {
    // Copies already queued cannot be recalled: wait for them, so that after cancel no write
    // of the batch can land (the PD fence relies on it), then forget the batch.
    std::lock_guard lock(mu_);
    auto it = batches_.find(id);
    if (it == batches_.end()) return;
    cudaEventSynchronize(it->second.event);
    cudaEventDestroy(it->second.event);
    batches_.erase(it);
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Region {
    uint8_t* ptr = nullptr;
    uint64_t length = 0;
  };
  struct Pending {
    cudaEvent_t event = nullptr;
    Clock::time_point deadline;
  };

  Status open(const RegionHandle& h, uint8_t** out) {
    std::string key(h.ipc_handle.begin(), h.ipc_handle.end());
    auto it = opened_.find(key);
    if (it == opened_.end()) {
      cudaIpcMemHandle_t handle;
      std::memcpy(&handle, h.ipc_handle.data(), sizeof(handle));
      void* ptr = nullptr;
      cudaSetDevice(config_.device_index);
      if (Status s = cuda_status(cudaIpcOpenMemHandle(&ptr, handle,
                                                      cudaIpcMemLazyEnablePeerAccess),
                                 "cudaIpcOpenMemHandle");
          !s.ok())
        return s;
      it = opened_.emplace(key, ptr).first;
    }
    *out = static_cast<uint8_t*>(it->second) + h.ipc_offset_bytes;
    return {};
  }

  TransferConfig config_;
  std::mutex mu_;
  cudaStream_t stream_ = nullptr;
  std::unordered_map<uint64_t, Region> regions_;
  std::unordered_map<BatchId, Pending> batches_;
  std::map<std::string, void*> opened_;
  uint64_t next_region_id_ = 0;
  BatchId next_batch_id_ = 0;
  static constexpr size_t kKernelMinWrites = 8;
  size_t kernel_min_writes_ = kKernelMinWrites;
};

}  // namespace

std::unique_ptr<TransferEngine> make_cuda_ipc_transfer_engine(const TransferConfig& config,
                                                              Status* status) {
  auto engine = std::make_unique<CudaIpcTransferEngine>(config);
  *status = engine->start();
  if (!status->ok()) return nullptr;
  return engine;
}

}  // namespace tandem::disagg

#else

namespace tandem::disagg {
std::unique_ptr<TransferEngine> make_cuda_ipc_transfer_engine(const TransferConfig&,
                                                              Status* status) {
  *status = {StatusCode::kInvalidArgument, "transfer backend cuda_ipc needs a CUDA build"};
  return nullptr;
}
}  // namespace tandem::disagg

#endif
