#include "ops/cuda/device.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "ops/cuda/cuda_check.h"

namespace tandem::ops::cuda {

namespace {

constexpr int kMaxDevices = 16;
constexpr size_t kSmallLimitBytes = size_t(1) << 20;
constexpr size_t kSmallStepBytes = 512;
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

size_t round_size(size_t bytes) {
  if (bytes <= kSmallLimitBytes) return (bytes + kSmallStepBytes - 1) / kSmallStepBytes * kSmallStepBytes;
  // Four classes per power of two: at most 25% waste, and few distinct sizes to reuse.
  size_t p = kSmallLimitBytes;
  while (p * 2 <= bytes) p *= 2;
  for (size_t q = 1; q <= 4; ++q) {
    const size_t c = p + p / 4 * q;
    if (c >= bytes) return c;
  }
  return p * 2;
}

int check_index(int device) {
  TANDEM_CHECK(device >= 0 && device < kMaxDevices, "CUDA device index {} out of range", device);
  return device;
}

struct DeviceState {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;  // rounded size -> blocks
  std::unordered_map<void*, size_t> live;                     // block -> rounded size
  std::unordered_map<void*, GraphPool*> pool_of;              // blocks of graph pools
  AllocatorStats stats;
  cudaStream_t stream = nullptr;
  KernelErrorWord* error_host = nullptr;
  KernelErrorWord* error_device = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* lt_workspace = nullptr;
};

std::array<DeviceState, kMaxDevices>& states() {
  static std::array<DeviceState, kMaxDevices> s;
  return s;
}

thread_local std::array<cudaStream_t, kMaxDevices> t_stream_override{};
thread_local std::array<GraphPool*, kMaxDevices> t_graph_pool{};

// Frees every cached block of `st` (caller holds st.mu).
void release_cached(DeviceState& st, int device) {
  DeviceGuard guard(device);
  for (auto& [size, blocks] : st.free_lists) {
    for (void* p : blocks) {
      TANDEM_CUDA_CHECK(cudaFree(p));
      st.stats.cached_bytes -= size;
    }
  }
  st.free_lists.clear();
}

void copy_registered(void* dst, const void* src, size_t bytes, Device dst_dev, Device src_dev) {
  copy_bytes(dst, src, bytes, dst_dev.is_cuda() ? dst_dev.index : -1,
             src_dev.is_cuda() ? src_dev.index : -1);
}

}  // namespace

void after_launch(const char* op_name, const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw_error(file, line, fmt::format("{}: kernel launch failed: {} ({})", op_name,
                                        cudaGetErrorName(err), cudaGetErrorString(err)));
  }
  static const bool sync_each = [] {
    const char* v = std::getenv("TANDEM_CUDA_SYNC");
    return v && v[0] == '1';
  }();
  if (sync_each) {
    int device = 0;
    TANDEM_CUDA_CHECK(cudaGetDevice(&device));
    synchronize(device);
  }
}

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_(unknown)";
  }
}

const char* kernel_error_name(int32_t code) {
  switch (code) {
    case kErrEmbeddingId: return "embedding: token id outside the vocabulary";
    case kErrGatherIndex: return "gather_rows: index outside the source rows";
    case kErrScatterIndex: return "scatter_add_rows: index outside the output rows";
    case kErrKvSlot: return "kv_store: slot outside the cache";
    case kErrDecodeSeqLen: return "mla_decode_attention: seq_len outside [1, max_pages * page_size]";
    case kErrDecodeSlot: return "mla_decode_attention: page table names a slot outside the cache";
    case kErrPrefillLengths: return "mla_prefill_attention: cu_q/cu_kv inconsistent";
    case kErrExpertId: return "moe_experts: expert id outside [0, experts)";
    case kErrPenaltyToken: return "apply_penalties: token id outside the vocabulary";
    default: return "unknown kernel error";
  }
}

DeviceGuard::DeviceGuard(int device) {
  TANDEM_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) TANDEM_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_device_allocator(
        DeviceType::kCUDA,
        DeviceAllocator{[](size_t bytes, int device) { return device_alloc(bytes, device); },
                        [](void* p, int device) { device_free(p, device); }, copy_registered,
                        [](void* p, size_t bytes, int device) {
                          DeviceGuard guard(device);
                          TANDEM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, current_stream(device)));
                        }});
  });
}

namespace {
// Registration at static initialization, so tensors can move to the GPU before any op runs.
[[maybe_unused]] const bool g_registered = (init(), true);
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int sm_count(int device) {
  check_index(device);
  static std::array<std::atomic<int>, kMaxDevices> counts{};
  int n = counts[size_t(device)].load();
  if (n == 0) {
    TANDEM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    counts[size_t(device)].store(n);
  }
  return n;
}

cudaStream_t current_stream(int device) {
  check_index(device);
  if (cudaStream_t s = t_stream_override[device]) return s;
  DeviceState& st = states()[device];
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.stream) {
    DeviceGuard guard(device);
    TANDEM_CUDA_CHECK(cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking));
  }
  return st.stream;
}

void set_current_stream(int device, cudaStream_t stream) {
  t_stream_override[check_index(device)] = stream;
}

void* device_alloc(size_t bytes, int device) {
  DeviceState& st = states()[check_index(device)];
  const size_t size = round_size(std::max<size_t>(bytes, 1));
  GraphPool* pool = t_graph_pool[device];
  std::lock_guard<std::mutex> lock(st.mu);
  if (pool) {
    auto pit = pool->free_lists_.find(size);
    if (pit != pool->free_lists_.end() && !pit->second.empty()) {
      void* p = pit->second.back();
      pit->second.pop_back();
      st.live.emplace(p, size);
      st.stats.in_use_bytes += size;
      return p;
    }
  }
  auto it = pool ? st.free_lists.end() : st.free_lists.find(size);
  if (it != st.free_lists.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    st.live.emplace(p, size);
    st.stats.cached_bytes -= size;
    st.stats.in_use_bytes += size;
    return p;
  }
  DeviceGuard guard(device);
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, size);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cached(st, device);
    err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
  }
  TANDEM_CUDA_CHECK(err);
  ++st.stats.malloc_count;
  st.live.emplace(p, size);
  st.stats.in_use_bytes += size;
  if (pool) {
    st.pool_of.emplace(p, pool);
    pool->bytes_ += size;
  }
  return p;
}

void device_free(void* ptr, int device) {
  if (!ptr) return;
  DeviceState& st = states()[check_index(device)];
  std::lock_guard<std::mutex> lock(st.mu);
  auto it = st.live.find(ptr);
  TANDEM_CHECK(it != st.live.end(), "device_free: {} was not allocated on cuda:{}", ptr, device);
  const size_t size = it->second;
  st.live.erase(it);
  st.stats.in_use_bytes -= size;
  if (auto pit = st.pool_of.find(ptr); pit != st.pool_of.end()) {
    pit->second->free_lists_[size].push_back(ptr);
    return;
  }
  st.free_lists[size].push_back(ptr);
  st.stats.cached_bytes += size;
}

GraphPool::GraphPool(int device) : device_(check_index(device)) {}

GraphPool::~GraphPool() {
  DeviceState& st = states()[device_];
  DeviceGuard guard(device_);
  cudaStreamSynchronize(current_stream(device_));
  std::lock_guard<std::mutex> lock(st.mu);
  for (auto& [size, blocks] : free_lists_) {
    for (void* p : blocks) {
      st.pool_of.erase(p);
      cudaFree(p);  // no throw from a destructor
    }
  }
  // Blocks still in use (a tensor outlived the pool) become ordinary blocks.
  for (auto it = st.pool_of.begin(); it != st.pool_of.end();) {
    it = it->second == this ? st.pool_of.erase(it) : std::next(it);
  }
}

size_t GraphPool::bytes() const {
  DeviceState& st = states()[device_];
  std::lock_guard<std::mutex> lock(st.mu);
  return bytes_;
}

ScopedGraphPool::ScopedGraphPool(GraphPool& pool)
    : device_(pool.device()), previous_(t_graph_pool[pool.device()]) {
  t_graph_pool[device_] = &pool;
}

ScopedGraphPool::~ScopedGraphPool() { t_graph_pool[device_] = previous_; }

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
}

void CudaGraph::begin_capture(int device) {
  TANDEM_CHECK(!exec_ && device_ < 0, "CudaGraph: already captured");
  device_ = check_index(device);
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaStreamBeginCapture(current_stream(device_), cudaStreamCaptureModeRelaxed));
}

void CudaGraph::end_capture() {
  DeviceGuard guard(device_);
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(current_stream(device_), &graph);
  if (err != cudaSuccess || !graph) {
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    TANDEM_FAIL("CudaGraph: capture on cuda:{} failed: {} (an op synchronized or copied to "
                "the host inside the captured region?)", device_, cudaGetErrorString(err));
  }
  graph_ = graph;
  TANDEM_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
}

void CudaGraph::replay() {
  TANDEM_CHECK(exec_, "CudaGraph: replay before capture");
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaGraphLaunch(exec_, current_stream(device_)));
}

void empty_cache(int device) {
  DeviceState& st = states()[check_index(device)];
  std::lock_guard<std::mutex> lock(st.mu);
  release_cached(st, device);
}

AllocatorStats allocator_stats(int device) {
  DeviceState& st = states()[check_index(device)];
  std::lock_guard<std::mutex> lock(st.mu);
  return st.stats;
}

void copy_bytes(void* dst, const void* src, size_t bytes, int dst_device, int src_device) {
  const int device = dst_device >= 0 ? dst_device : src_device;
  TANDEM_CHECK(device >= 0, "copy_bytes: neither side is a CUDA device");
  if (bytes == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  if (dst_device >= 0 && src_device >= 0 && dst_device != src_device) {
    TANDEM_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, stream));
  } else {
    TANDEM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  }
  if (dst_device < 0 || src_device < 0) synchronize(device);
}

StreamTimer::StreamTimer(int device) : device_(check_index(device)) {
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaEventCreate(&start_));
  TANDEM_CUDA_CHECK(cudaEventCreate(&stop_));
}

StreamTimer::~StreamTimer() {
  if (start_) cudaEventDestroy(start_);
  if (stop_) cudaEventDestroy(stop_);
}

void StreamTimer::start() {
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaEventRecord(start_, current_stream(device_)));
}

void StreamTimer::stop() {
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaEventRecord(stop_, current_stream(device_)));
}

double StreamTimer::elapsed_ms() {
  DeviceGuard guard(device_);
  TANDEM_CUDA_CHECK(cudaEventSynchronize(stop_));
  float ms = 0;
  TANDEM_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
  return double(ms);
}

void* pinned_host_alloc(size_t bytes) {
  void* p = nullptr;
  TANDEM_CUDA_CHECK(cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault));
  return p;
}

void pinned_host_free(void* ptr) {
  if (ptr) cudaFreeHost(ptr);
}

KernelErrorWord* error_word(int device) {
  DeviceState& st = states()[check_index(device)];
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.error_host) {
    DeviceGuard guard(device);
    void* h = nullptr;
    TANDEM_CUDA_CHECK(cudaHostAlloc(&h, sizeof(KernelErrorWord), cudaHostAllocMapped));
    st.error_host = static_cast<KernelErrorWord*>(h);
    *st.error_host = KernelErrorWord{};
    void* d = nullptr;
    TANDEM_CUDA_CHECK(cudaHostGetDevicePointer(&d, h, 0));
    st.error_device = static_cast<KernelErrorWord*>(d);
  }
  return st.error_device;
}

void synchronize(int device) {
  DeviceGuard guard(device);
  TANDEM_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
  DeviceState& st = states()[check_index(device)];
  KernelErrorWord word{};
  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (!st.error_host) return;
    volatile KernelErrorWord* w = st.error_host;
    if (w->code == kErrNone) return;
    word.code = w->code;
    word.value = w->value;
    word.bound = w->bound;
    word.position = w->position;
    w->code = kErrNone;  // reported once
  }
  TANDEM_FAIL("cuda:{}: {} (value {} at position {}, bound {})", device,
              kernel_error_name(word.code), word.value, word.position, word.bound);
}

cublasLtHandle_t cublaslt_handle(int device) {
  DeviceState& st = states()[check_index(device)];
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.lt) {
    DeviceGuard guard(device);
    TANDEM_CUBLAS_CHECK(cublasLtCreate(&st.lt));
    TANDEM_CUDA_CHECK(cudaMalloc(&st.lt_workspace, kCublasWorkspaceBytes));
  }
  return st.lt;
}

void* cublaslt_workspace(int device, size_t* bytes) {
  cublaslt_handle(device);
  *bytes = kCublasWorkspaceBytes;
  return states()[device].lt_workspace;
}

}  // namespace tandem::ops::cuda

namespace tandem::ops::cuda {

bool available() { return device_count() > 0; }

}  // namespace tandem::ops::cuda
