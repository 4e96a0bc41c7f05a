// The low_latency (decode) dispatcher: fixed buffers allocated once, sized by
// max_dispatch_tokens_per_rank (M). Every dispatch moves whole [L, M] slot blocks between every
// pair of ranks with a count header in front, so sizes never depend on the batch and no count
// exchange precedes the transfer; the GPU version will write the same slots with one kernel
// (and capture it in a CUDA graph). The CPU version copies rows with plain loops.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "ops/ops.h"
#include "parallel/dispatcher_impl.h"

namespace tandem::detail {

namespace {

class LowLatencyDispatcher final : public Dispatcher {
 public:
  LowLatencyDispatcher(ProcessGroup& group, const ExpertPlacement& placement,
                       const DispatchOptions& options);

  DispatchMode mode() const override { return DispatchMode::kLowLatency; }
  const ExpertInput& dispatch(const Tensor& x, const Tensor& topk_ids,
                              const Tensor& topk_weights) override;
  void combine(const Tensor& expert_out, Tensor& out) override;

 private:
  char* row(const Tensor& t, int64_t r) const {
    return static_cast<char*>(t.raw_data()) + r * t.size(-1) * int64_t(dtype_size_bytes(t.dtype()));
  }

  ProcessGroup& group_;
  const ExpertPlacement placement_;
  const DispatchOptions options_;
  const int ranks_;
  const int64_t locals_, max_tokens_, hidden_;

  // Slot (rank, local expert, i) is row (rank * L + e) * M + i of the [R * L * M, H] buffers.
  Tensor send_x_;     // [R * L * M, H] act: rows for (destination, its expert, slot)
  Tensor recv_x_;     // [R * L * M, H] act: rows from (source, my expert, slot)
  Tensor send_meta_;  // i32 [R * L, 1 + M]: count, then the source token of each slot
  Tensor recv_meta_;  // i32 [R * L, 1 + M]
  Tensor send_y_;     // f32 [R * L * M, H]: outputs for (source, my expert, source token)
  Tensor recv_y_;     // f32 [R * L * M, H]: outputs from (expert rank, its expert, my token)

  // State between dispatch and combine.
  bool dispatched_ = false;
  Tensor topk_ids_, topk_weights_;      // this rank's routing, for the weighted sum
  std::vector<int32_t> packed_source_;  // [L, R * M]: (source rank) * M + source token
  ExpertInput input_;
};

LowLatencyDispatcher::LowLatencyDispatcher(ProcessGroup& group, const ExpertPlacement& placement,
                                           const DispatchOptions& options)
    : group_(group),
      placement_(placement),
      options_(options),
      ranks_(group.size()),
      locals_(placement.max_local_experts()),
      max_tokens_(options.max_dispatch_tokens_per_rank),
      hidden_(options.hidden) {
  TANDEM_CHECK(max_tokens_ >= 1, "low_latency dispatcher: max_dispatch_tokens_per_rank must be "
               ">= 1, got {}", max_tokens_);
  TANDEM_CHECK(options.dtype == DType::kF32 || options.dtype == DType::kBF16,
               "low_latency dispatcher: activations must be f32 or bf16, got {}",
               dtype_name(options.dtype));
  for (int r = 0; r < ranks_; ++r) {
    TANDEM_CHECK(placement.num_local_experts(r) == locals_,
                 "low_latency dispatcher: rank {} has {} experts, rank 0 {}; fixed slots need the "
                 "same number on every rank", r, placement.num_local_experts(r), locals_);
  }
  const int64_t slots = ranks_ * locals_ * max_tokens_;
  send_x_ = Tensor::empty({slots, hidden_}, options.dtype);
  recv_x_ = Tensor::empty({slots, hidden_}, options.dtype);
  send_meta_ = Tensor::zeros({ranks_ * locals_, 1 + max_tokens_}, DType::kI32);
  recv_meta_ = Tensor::zeros({ranks_ * locals_, 1 + max_tokens_}, DType::kI32);
  send_y_ = Tensor::zeros({slots, hidden_}, DType::kF32);
  recv_y_ = Tensor::zeros({slots, hidden_}, DType::kF32);
  input_.mode = DispatchMode::kLowLatency;
  input_.x = Tensor::zeros({locals_, ranks_ * max_tokens_, hidden_}, options.dtype);
  input_.counts.assign(locals_, 0);
  packed_source_.assign(locals_ * ranks_ * max_tokens_, -1);
}

const ExpertInput& LowLatencyDispatcher::dispatch(const Tensor& x, const Tensor& topk_ids,
                                                  const Tensor& topk_weights) {
  check_dispatch_args("low_latency dispatch", options_, x, topk_ids, topk_weights, Device::cpu());
  TANDEM_CHECK(!dispatched_, "low_latency dispatch: the previous dispatch was not combined");
  const int64_t tokens = x.size(0), k = options_.top_k, experts = placement_.num_experts();
  TANDEM_CHECK(tokens <= max_tokens_,
               "low_latency dispatch: rank {} has {} tokens, more than "
               "max_dispatch_tokens_per_rank = {} (use the normal mode or a larger buffer)",
               group_.rank(), tokens, max_tokens_);
  TANDEM_CHECK(x.dtype() == options_.dtype, "low_latency dispatch: x is {}, the buffers {}",
               dtype_name(x.dtype()), dtype_name(options_.dtype));
  const size_t row_bytes = size_t(hidden_) * dtype_size_bytes(x.dtype());
  const int64_t meta_width = 1 + max_tokens_;
  const int32_t* ids = topk_ids.data<int32_t>();

  // Fill this rank's slots: token t goes once to each of its experts, in token order.
  int32_t* sm = send_meta_.data<int32_t>();
  for (int64_t b = 0; b < ranks_ * locals_; ++b) sm[b * meta_width] = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t g = ids[t * k + j];
      TANDEM_CHECK(g >= 0 && g < experts, "low_latency dispatch: token {} routed to expert {} of {}",
                   t, g, experts);
      const ExpertLocation& loc = placement_.location(g);
      const int64_t block = loc.rank * locals_ + loc.local;
      int32_t& count = sm[block * meta_width];
      TANDEM_CHECK(count < max_tokens_, "low_latency dispatch: expert {} gets token {} twice", g, t);
      std::memcpy(row(send_x_, block * max_tokens_ + count), row(x, t), row_bytes);
      sm[block * meta_width + 1 + count] = int32_t(t);
      ++count;
    }
  }

  // Whole slot blocks to every rank: the sizes are fixed, known to both sides.
  const std::vector<int64_t> x_rows(ranks_, locals_ * max_tokens_), meta_rows(ranks_, locals_);
  all_to_all_rows(group_, send_x_, x_rows, recv_x_, x_rows);
  all_to_all_rows(group_, send_meta_, meta_rows, recv_meta_, meta_rows);

  // Pack each expert's received rows to the front of its block, source rank by source rank.
  const int32_t* rm = recv_meta_.data<int32_t>();
  for (int64_t e = 0; e < locals_; ++e) {
    int64_t n = 0;
    for (int s = 0; s < ranks_; ++s) {
      const int64_t block = s * locals_ + e;
      const int64_t count = rm[block * meta_width];
      TANDEM_CHECK(count >= 0 && count <= max_tokens_,
                   "low_latency dispatch: rank {} sent {} rows for one expert, max {}", s, count,
                   max_tokens_);
      if (count > 0) {
        std::memcpy(row(input_.x, e * ranks_ * max_tokens_ + n), row(recv_x_, block * max_tokens_),
                    size_t(count) * row_bytes);
      }
      for (int64_t i = 0; i < count; ++i) {
        packed_source_[e * ranks_ * max_tokens_ + n + i] =
            int32_t(s * max_tokens_ + rm[block * meta_width + 1 + i]);
      }
      n += count;
    }
    input_.counts[e] = n;
  }
  topk_ids_ = topk_ids.clone();
  topk_weights_ = topk_weights.clone();
  dispatched_ = true;
  return input_;
}

void LowLatencyDispatcher::combine(const Tensor& expert_out, Tensor& out) {
  TANDEM_CHECK(dispatched_, "low_latency combine without a dispatch");
  TANDEM_CHECK(expert_out.dtype() == DType::kF32 && expert_out.is_contiguous() &&
                   expert_out.shape() == input_.x.shape(),
               "low_latency combine: expert_out must be contiguous f32 {}, got {}",
               shape_str(input_.x.shape()), expert_out.describe());
  const int64_t tokens = topk_ids_.size(0), k = options_.top_k;
  TANDEM_CHECK(out.dtype() == DType::kF32 && out.shape() == Shape({tokens, hidden_}),
               "low_latency combine: out must be f32 [{}, {}], got {}", tokens, hidden_,
               out.describe());
  dispatched_ = false;
  const size_t row_bytes = size_t(hidden_) * sizeof(float);

  // Each output row to its source rank's slot (that rank, my expert, its token).
  for (int64_t e = 0; e < locals_; ++e) {
    for (int64_t i = 0; i < input_.counts[e]; ++i) {
      const int32_t src = packed_source_[e * ranks_ * max_tokens_ + i];
      const int64_t s = src / max_tokens_, t = src % max_tokens_;
      std::memcpy(row(send_y_, (s * locals_ + e) * max_tokens_ + t),
                  row(expert_out, e * ranks_ * max_tokens_ + i), row_bytes);
    }
  }
  const std::vector<int64_t> y_rows(ranks_, locals_ * max_tokens_);
  all_to_all_rows(group_, send_y_, y_rows, recv_y_, y_rows);

  // out[t] += w * y over the token's experts in ascending expert order.
  if (tokens == 0) return;
  const int32_t* ids = topk_ids_.data<int32_t>();
  const float* w = topk_weights_.data<float>();
  std::vector<int32_t> source, target;
  std::vector<float> weight;
  std::vector<int64_t> order(k);
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return ids[t * k + a] < ids[t * k + b]; });
    for (int64_t j : order) {
      const ExpertLocation& loc = placement_.location(ids[t * k + j]);
      source.push_back(int32_t((loc.rank * locals_ + loc.local) * max_tokens_ + t));
      target.push_back(int32_t(t));
      weight.push_back(w[t * k + j]);
    }
  }
  const int64_t n = int64_t(source.size());
  Tensor rows = Tensor::empty({n, hidden_}, DType::kF32);
  ops::gather_rows(recv_y_, Tensor::from_vector(source, {n}), rows);
  ops::scatter_add_rows(rows, Tensor::from_vector(target, {n}), Tensor::from_vector(weight, {n}),
                        out);
}

}  // namespace

std::unique_ptr<Dispatcher> make_low_latency_dispatcher(ProcessGroup& group,
                                                        const ExpertPlacement& placement,
                                                        const DispatchOptions& options) {
  return std::make_unique<LowLatencyDispatcher>(group, placement, options);
}

}  // namespace tandem::detail
