// The GPU low_latency Dispatcher: receive regions allocated once per rank, peer pointers from
// cudaDeviceEnablePeerAccess (ranks are threads of one process driving their GPUs), kernels in
// cuda_low_latency.cu. dispatch and combine only enqueue kernels on the device's current
// stream: no host synchronization, so a decode step can be captured in a CUDA graph and
// replayed (the step's sequence number lives on the device).
//
// Separate processes would exchange cudaIpcMemHandle_t of `base_` instead of the raw pointer in
// the constructor's all_gather and open them with cudaIpcOpenMemHandle; nothing else changes.
// Thread-safety: one dispatcher per rank, used by that rank's thread (like its group).
#include <cuda_runtime_api.h>

#include <cstring>

#include "core/log.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device.h"
#include "parallel/cuda_low_latency.h"
#include "parallel/dispatcher_impl.h"

namespace tandem::detail {

namespace {

namespace pc = parallel_cuda;

// A spin wait for a peer's flag gives up after this long and reports it (no hang).
constexpr int64_t kFlagTimeoutNs = 20'000'000'000;

class CudaLowLatencyDispatcher final : public Dispatcher {
 public:
  CudaLowLatencyDispatcher(ProcessGroup& group, const ExpertPlacement& placement,
                           const DispatchOptions& options);
  ~CudaLowLatencyDispatcher() override;

  DispatchMode mode() const override { return DispatchMode::kLowLatency; }
  const ExpertInput& dispatch(const Tensor& x, const Tensor& topk_ids,
                              const Tensor& topk_weights) override;
  void combine(const Tensor& expert_out, Tensor& out) override;

 private:
  void check_error_word() const;

  ProcessGroup& group_;
  const ExpertPlacement placement_;
  const DispatchOptions options_;
  const int ranks_, device_;
  const int64_t locals_, max_tokens_, hidden_;

  void* base_ = nullptr;                  // this rank's receive region (cudaMalloc)
  pc::LocalState* state_ = nullptr;       // device
  pc::LlErrorWord* error_ = nullptr;      // mapped host memory
  pc::LlErrorWord* error_device_ = nullptr;
  Tensor expert_rank_, expert_local_;     // i32 [E] on the device
  pc::LlParams params_{};

  // State between dispatch and combine.
  bool dispatched_ = false;
  int64_t tokens_ = 0;
  Tensor topk_ids_, topk_weights_;  // on the device; must stay unchanged until combine
  Tensor packed_src_;               // i32 [L, R * M]
  ExpertInput input_;
};

CudaLowLatencyDispatcher::CudaLowLatencyDispatcher(ProcessGroup& group,
                                                   const ExpertPlacement& placement,
                                                   const DispatchOptions& options)
    : group_(group),
      placement_(placement),
      options_(options),
      ranks_(group.size()),
      device_(group.device().index),
      locals_(placement.max_local_experts()),
      max_tokens_(options.max_dispatch_tokens_per_rank),
      hidden_(options.hidden) {
  TANDEM_CHECK(max_tokens_ >= 1 && max_tokens_ <= 12288,
               "low_latency dispatcher (GPU): max_dispatch_tokens_per_rank must be in [1, 12288], "
               "got {}", max_tokens_);
  TANDEM_CHECK(options.dtype == DType::kF32 || options.dtype == DType::kBF16,
               "low_latency dispatcher (GPU): activations must be f32 or bf16, got {}",
               dtype_name(options.dtype));
  TANDEM_CHECK(ranks_ <= pc::kMaxRanks, "low_latency dispatcher (GPU): {} ranks, at most {} (one node)",
               ranks_, pc::kMaxRanks);
  TANDEM_CHECK(options.top_k <= 32, "low_latency dispatcher (GPU): top_k {} > 32", options.top_k);
  for (int r = 0; r < ranks_; ++r) {
    TANDEM_CHECK(placement.num_local_experts(r) == locals_,
                 "low_latency dispatcher (GPU): rank {} has {} experts, rank 0 {}; fixed slots need "
                 "the same number on every rank", r, placement.num_local_experts(r), locals_);
  }
  ops::cuda::DeviceGuard guard(device_);
  const Device dev = group.device();
  const int64_t row_bytes = hidden_ * int64_t(dtype_size_bytes(options.dtype));
  const pc::RankLayout layout = pc::rank_layout(ranks_, locals_, max_tokens_, hidden_, row_bytes);

  // Peer access to every other rank's GPU (same process).
  const std::vector<int64_t> devices = group.all_gather({int64_t(device_)});
  for (int r = 0; r < ranks_; ++r) {
    const int peer = int(devices[r]);
    if (peer == device_) continue;
    int can = 0;
    TANDEM_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device_, peer));
    TANDEM_CHECK(can == 1, "low_latency dispatcher (GPU): cuda:{} cannot access cuda:{} as a peer "
                 "(no NVLink/P2P path); use the normal mode", device_, peer);
    const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();
    } else {
      TANDEM_CUDA_CHECK(e);
    }
  }

  const cudaError_t alloc = cudaMalloc(&base_, layout.total);
  TANDEM_CHECK(alloc == cudaSuccess, "low_latency dispatcher (GPU): cudaMalloc of {} MiB of "
               "receive buffers (max_dispatch_tokens_per_rank {}, {} local experts, hidden {}) "
               "failed: {}", layout.total >> 20, max_tokens_, locals_, hidden_,
               cudaGetErrorString(alloc));
  TANDEM_CUDA_CHECK(cudaMemset(base_, 0, layout.total));
  TANDEM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&state_), sizeof(pc::LocalState)));
  TANDEM_CUDA_CHECK(cudaMemset(state_, 0, sizeof(pc::LocalState)));
  TANDEM_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&error_), sizeof(pc::LlErrorWord),
                                  cudaHostAllocMapped));
  std::memset(error_, 0, sizeof(pc::LlErrorWord));
  TANDEM_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&error_device_), error_, 0));
  TANDEM_CUDA_CHECK(cudaDeviceSynchronize());

  // Everyone's region base; a peer's arrays are at the same offsets.
  const std::vector<int64_t> bases = group.all_gather({int64_t(reinterpret_cast<intptr_t>(base_))});
  for (int r = 0; r < ranks_; ++r) {
    params_.peers[r] = pc::rank_buffers(reinterpret_cast<void*>(intptr_t(bases[r])), layout);
  }

  std::vector<int32_t> owner(placement.num_experts()), local(placement.num_experts());
  for (int64_t g = 0; g < placement.num_experts(); ++g) {
    owner[g] = int32_t(placement.location(g).rank);
    local[g] = int32_t(placement.location(g).local);
  }
  expert_rank_ = Tensor::from_vector(owner, {placement.num_experts()}).to(dev);
  expert_local_ = Tensor::from_vector(local, {placement.num_experts()}).to(dev);
  packed_src_ = Tensor::empty({locals_, ranks_ * max_tokens_}, DType::kI32, dev);

  input_.mode = DispatchMode::kLowLatency;
  input_.x = Tensor::zeros({locals_, ranks_ * max_tokens_, hidden_}, options.dtype, dev);
  input_.counts.assign(locals_, -1);  // on the device only (counts_device)
  input_.counts_device = Tensor::zeros({locals_}, DType::kI32, dev);

  params_.ranks = ranks_;
  params_.me = group.rank();
  params_.num_experts = placement.num_experts();
  params_.locals = locals_;
  params_.max_tokens = max_tokens_;
  params_.hidden = hidden_;
  params_.row_bytes = row_bytes;
  params_.expert_rank = expert_rank_.data<int32_t>();
  params_.expert_local = expert_local_.data<int32_t>();
  params_.state = state_;
  params_.error = error_device_;
  params_.timeout_ns = kFlagTimeoutNs;
  params_.out_x = input_.x.raw_data();
  params_.out_counts = input_.counts_device.data<int32_t>();
  params_.packed_src = packed_src_.data<int32_t>();
  ops::cuda::synchronize(device_);
  // No rank may write into a peer's region before the peer has zeroed it.
  group.barrier();
  TANDEM_LOG_INFO("low_latency dispatcher (GPU): rank {} on cuda:{}, {} MiB of receive buffers "
                  "({} local experts x {} ranks x {} tokens)", group.rank(), device_,
                  layout.total >> 20, locals_, ranks_, max_tokens_);
}

CudaLowLatencyDispatcher::~CudaLowLatencyDispatcher() {
  ops::cuda::DeviceGuard guard(device_);
  cudaDeviceSynchronize();
  cudaFree(base_);
  cudaFree(state_);
  cudaFreeHost(error_);
}

void CudaLowLatencyDispatcher::check_error_word() const {
  const volatile pc::LlErrorWord* w = error_;
  if (w->code == pc::kLlOk) return;
  if (w->code == pc::kLlTimeout) {
    TANDEM_FAIL("low_latency (GPU) rank {}: no flag from rank {} for step {} within {} s (a peer "
                "stopped or skipped a dispatch/combine); results since then are invalid",
                group_.rank(), w->rank, w->value, kFlagTimeoutNs / 1'000'000'000);
  }
  TANDEM_FAIL("low_latency (GPU) rank {}: token {} routed to expert {} of {}", group_.rank(),
              w->where, w->value, placement_.num_experts());
}

const ExpertInput& CudaLowLatencyDispatcher::dispatch(const Tensor& x, const Tensor& topk_ids,
                                                      const Tensor& topk_weights) {
  const Device dev = group_.device();
  check_dispatch_args("low_latency dispatch", options_, x, topk_ids, topk_weights, dev);
  TANDEM_CHECK(!dispatched_, "low_latency dispatch: the previous dispatch was not combined");
  check_error_word();
  const int64_t tokens = x.size(0);
  TANDEM_CHECK(tokens <= max_tokens_,
               "low_latency dispatch: rank {} has {} tokens, more than "
               "max_dispatch_tokens_per_rank = {} (use the normal mode or a larger buffer)",
               group_.rank(), tokens, max_tokens_);
  TANDEM_CHECK(x.dtype() == options_.dtype, "low_latency dispatch: x is {}, the buffers {}",
               dtype_name(x.dtype()), dtype_name(options_.dtype));
  ops::cuda::DeviceGuard guard(device_);
  topk_ids_ = to_device(topk_ids, dev);
  topk_weights_ = to_device(topk_weights, dev);
  pc::LlParams p = params_;
  p.x = x.raw_data();
  p.topk_ids = topk_ids_.data<int32_t>();
  p.topk_weights = topk_weights_.data<float>();
  p.tokens = tokens;
  p.top_k = options_.top_k;
  pc::launch_ll_dispatch(p, ops::cuda::current_stream(device_));
  TANDEM_CUDA_CHECK(cudaGetLastError());
  tokens_ = tokens;
  dispatched_ = true;
  return input_;
}

void CudaLowLatencyDispatcher::combine(const Tensor& expert_out, Tensor& out) {
  TANDEM_CHECK(dispatched_, "low_latency combine without a dispatch");
  const Device dev = group_.device();
  TANDEM_CHECK(expert_out.dtype() == DType::kF32 && expert_out.is_contiguous() &&
                   expert_out.shape() == input_.x.shape() && expert_out.device() == dev,
               "low_latency combine: expert_out must be contiguous f32 {} on {}, got {}",
               shape_str(input_.x.shape()), dev.name(), expert_out.describe());
  TANDEM_CHECK(out.dtype() == DType::kF32 && out.is_contiguous() &&
                   out.shape() == Shape({tokens_, hidden_}) && out.device() == dev,
               "low_latency combine: out must be contiguous f32 [{}, {}] on {}, got {}", tokens_,
               hidden_, dev.name(), out.describe());
  dispatched_ = false;
  ops::cuda::DeviceGuard guard(device_);
  pc::LlParams p = params_;
  p.topk_ids = topk_ids_.data<int32_t>();
  p.topk_weights = topk_weights_.data<float>();
  p.tokens = tokens_;
  p.top_k = options_.top_k;
  p.expert_out = expert_out.data<float>();
  p.out = out.data<float>();
  pc::launch_ll_combine(p, ops::cuda::current_stream(device_));
  TANDEM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

std::unique_ptr<Dispatcher> make_cuda_low_latency_dispatcher(ProcessGroup& group,
                                                             const ExpertPlacement& placement,
                                                             const DispatchOptions& options) {
  return std::make_unique<CudaLowLatencyDispatcher>(group, placement, options);
}

}  // namespace tandem::detail
