// The normal (prefill) dispatcher: counts first, then one row per (token, destination rank).
// Three collectives per dispatch (counts, rows, per-row metadata) and one per combine.
// On a GPU group (NCCL) the rows, metadata and index tensors live on the rank's GPU; the routing
// and the received metadata are read on the host to size buffers and build the grouped layout,
// as in DeepEP's normal mode (one host round trip per dispatch, none per combine).
#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

#include "ops/ops.h"
#include "parallel/dispatcher_impl.h"

namespace tandem::detail {

namespace {

// A contiguous 4-byte tensor's buffer seen as another 4-byte dtype (shares the buffer).
Tensor reinterpret_as(const Tensor& t, DType dtype) {
  TANDEM_CHECK(t.is_contiguous() && dtype_size_bytes(t.dtype()) == dtype_size_bytes(dtype),
               "reinterpret_as: {} as {}", t.describe(), dtype_name(dtype));
  auto owner = std::make_shared<Tensor>(t);
  return Tensor::from_blob(t.raw_data(), t.shape(), dtype, t.device(), owner);
}

class NormalDispatcher final : public Dispatcher {
 public:
  NormalDispatcher(ProcessGroup& group, const ExpertPlacement& placement,
                   const DispatchOptions& options)
      : group_(group), placement_(placement), options_(options) {}

  DispatchMode mode() const override { return DispatchMode::kNormal; }

  const ExpertInput& dispatch(const Tensor& x, const Tensor& topk_ids,
                              const Tensor& topk_weights) override;
  void combine(const Tensor& expert_out, Tensor& out) override;

 private:
  ProcessGroup& group_;
  const ExpertPlacement placement_;
  const DispatchOptions options_;

  // State between dispatch and combine.
  bool dispatched_ = false;
  int64_t tokens_ = 0;                // T of this rank
  std::vector<int64_t> send_rows_;    // [ranks]: tokens sent to each rank
  std::vector<int64_t> recv_rows_;    // [ranks]: tokens received from each rank
  Tensor send_token_;                  // i32 [sum(send_rows)]: source token of each sent row
  Tensor send_ones_;                  // f32 [sum(send_rows)]: 1, the weights of the final add
  Tensor row_source_;                 // i32 [P]: received row of each expert row
  Tensor row_weight_;                 // f32 [P]: its routing weight
  ExpertInput input_;
};

const ExpertInput& NormalDispatcher::dispatch(const Tensor& x, const Tensor& topk_ids,
                                              const Tensor& topk_weights) {
  check_dispatch_args("normal dispatch", options_, x, topk_ids, topk_weights, group_.device());
  TANDEM_CHECK(!dispatched_, "normal dispatch: the previous dispatch was not combined");
  const int ranks = group_.size(), me = group_.rank();
  const int64_t tokens = x.size(0), k = options_.top_k, hidden = options_.hidden;
  const int64_t experts = placement_.num_experts();
  const Device dev = group_.device();
  const Tensor ids_host = topk_ids.device().is_cpu() ? topk_ids : topk_ids.to(Device::cpu());
  const Tensor weights_host =
      topk_weights.device().is_cpu() ? topk_weights : topk_weights.to(Device::cpu());
  const int32_t* ids = ids_host.data<int32_t>();
  const float* weights = weights_host.data<float>();

  // Per destination rank, the tokens that have an expert there (ascending) and, per token,
  // meta = k local expert ids (-1 padded) then k weights (as bits), 2k i32 words.
  std::vector<std::vector<int32_t>> dest_tokens(ranks), dest_meta(ranks);
  std::vector<int64_t> counts(ranks + experts, 0);  // [tokens per rank, pairs per expert]
  std::vector<int> slots(ranks);
  for (int64_t t = 0; t < tokens; ++t) {
    std::fill(slots.begin(), slots.end(), 0);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t g = ids[t * k + j];
      TANDEM_CHECK(g >= 0 && g < experts, "normal dispatch: token {} routed to expert {} of {}", t,
                   g, experts);
      const ExpertLocation& loc = placement_.location(g);
      auto& meta = dest_meta[loc.rank];
      if (slots[loc.rank] == 0) {
        dest_tokens[loc.rank].push_back(int32_t(t));
        meta.resize(meta.size() + 2 * k, -1);
      }
      int32_t* m = meta.data() + meta.size() - 2 * k;
      m[slots[loc.rank]] = int32_t(loc.local);
      m[k + slots[loc.rank]] = std::bit_cast<int32_t>(weights[t * k + j]);
      ++slots[loc.rank];
      ++counts[ranks + g];
    }
  }
  for (int d = 0; d < ranks; ++d) counts[d] = int64_t(dest_tokens[d].size());

  // Everyone learns every rank's counts: how many rows come from each rank and how many
  // (token, expert) pairs each local expert gets, so the receive buffers are sized up front.
  const std::vector<int64_t> all = group_.all_gather(counts);
  const int64_t stride = ranks + experts;
  const int64_t locals = placement_.num_local_experts(me);
  send_rows_.assign(counts.begin(), counts.begin() + ranks);
  recv_rows_.assign(ranks, 0);
  std::vector<int64_t> expert_counts(locals, 0);
  for (int s = 0; s < ranks; ++s) {
    recv_rows_[s] = all[s * stride + me];
    for (int64_t e = 0; e < locals; ++e) {
      expert_counts[e] += all[s * stride + ranks + placement_.global_expert(me, e)];
    }
  }
  int64_t sent = 0, received = 0;
  for (int d = 0; d < ranks; ++d) sent += send_rows_[d], received += recv_rows_[d];

  // Pack the rows by destination and exchange them with their metadata.
  std::vector<int32_t> order, meta;
  for (int d = 0; d < ranks; ++d) {
    order.insert(order.end(), dest_tokens[d].begin(), dest_tokens[d].end());
    meta.insert(meta.end(), dest_meta[d].begin(), dest_meta[d].end());
  }
  // One upload (a GPU group's host-to-device copies synchronize): tokens, ones, metadata.
  std::vector<int32_t> packed = order;
  packed.insert(packed.end(), size_t(sent), std::bit_cast<int32_t>(1.0f));
  packed.insert(packed.end(), meta.begin(), meta.end());
  const Tensor uploaded = to_device(Tensor::from_vector(packed, {int64_t(packed.size())}), dev);
  send_token_ = uploaded.slice(0, 0, sent);
  send_ones_ = reinterpret_as(uploaded.slice(0, sent, 2 * sent), DType::kF32);
  Tensor send_meta = uploaded.slice(0, 2 * sent, int64_t(packed.size())).view({sent, 2 * k});
  Tensor send_x = Tensor::empty({sent, hidden}, x.dtype(), dev);
  if (sent > 0) ops::gather_rows(x, send_token_, send_x);
  Tensor recv_x = Tensor::empty({received, hidden}, x.dtype(), dev);
  all_to_all_rows(group_, send_x, send_rows_, recv_x, recv_rows_);
  Tensor recv_meta = Tensor::empty({received, 2 * k}, DType::kI32, dev);
  all_to_all_rows(group_, send_meta, send_rows_, recv_meta, recv_rows_);
  if (!dev.is_cpu()) recv_meta = recv_meta.to(Device::cpu());  // waits for the transfers

  // Group the received (row, local expert) pairs by local expert; within an expert, rows keep
  // their received order: source rank, then token.
  std::vector<int64_t> offsets(locals + 1, 0);
  for (int64_t e = 0; e < locals; ++e) offsets[e + 1] = offsets[e] + expert_counts[e];
  const int64_t pairs = offsets[locals];
  std::vector<int32_t> source(pairs);
  std::vector<float> weight(pairs);
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  const int32_t* rm = recv_meta.data<int32_t>();
  for (int64_t i = 0; i < received; ++i) {  // one pass: rows of an expert stay in received order
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = rm[i * 2 * k + j];
      if (e < 0) continue;
      TANDEM_CHECK(e < locals && cursor[e] < offsets[e + 1],
                   "normal dispatch: local expert {} of {} receives more rows than counted", e,
                   locals);
      source[cursor[e]] = int32_t(i);
      weight[cursor[e]] = std::bit_cast<float>(rm[i * 2 * k + k + j]);
      ++cursor[e];
    }
  }
  for (int64_t e = 0; e < locals; ++e) {
    TANDEM_CHECK(cursor[e] == offsets[e + 1],
                 "normal dispatch: local expert {} received {} rows, counted {}", e,
                 cursor[e] - offsets[e], expert_counts[e]);
  }
  std::vector<int32_t> rows = source;  // one upload: sources, then weights as bits
  for (float w : weight) rows.push_back(std::bit_cast<int32_t>(w));
  const Tensor rows_dev = to_device(Tensor::from_vector(rows, {2 * pairs}), dev);
  row_source_ = rows_dev.slice(0, 0, pairs);
  row_weight_ = reinterpret_as(rows_dev.slice(0, pairs, 2 * pairs), DType::kF32);

  input_.mode = DispatchMode::kNormal;
  input_.x = Tensor::empty({pairs, hidden}, x.dtype(), dev);
  if (pairs > 0) ops::gather_rows(recv_x, row_source_, input_.x);
  input_.counts = expert_counts;
  input_.offsets = offsets;
  tokens_ = tokens;
  dispatched_ = true;
  return input_;
}

void NormalDispatcher::combine(const Tensor& expert_out, Tensor& out) {
  TANDEM_CHECK(dispatched_, "normal combine without a dispatch");
  const int64_t hidden = options_.hidden, pairs = input_.offsets.back();
  TANDEM_CHECK(expert_out.dtype() == DType::kF32 && expert_out.is_contiguous() &&
                   expert_out.shape() == Shape({pairs, hidden}),
               "normal combine: expert_out must be contiguous f32 [{}, {}], got {}", pairs, hidden,
               expert_out.describe());
  TANDEM_CHECK(out.dtype() == DType::kF32 && out.shape() == Shape({tokens_, hidden}),
               "normal combine: out must be f32 [{}, {}], got {}", tokens_, hidden, out.describe());
  const Device dev = group_.device();
  TANDEM_CHECK(expert_out.device() == dev && out.device() == dev,
               "normal combine: expert_out on {} and out on {}, the group runs on {}",
               expert_out.device().name(), out.device().name(), dev.name());
  dispatched_ = false;
  int64_t sent = 0, received = 0;
  for (size_t d = 0; d < send_rows_.size(); ++d) sent += send_rows_[d], received += recv_rows_[d];

  // On the expert rank: each received token's weighted sum over this rank's experts (in local
  // expert order), one row per token.
  Tensor partial = Tensor::zeros({received, hidden}, DType::kF32, dev);
  if (pairs > 0) ops::scatter_add_rows(expert_out, row_source_, row_weight_, partial);
  // Back to the source ranks (the dispatch's transfer reversed), which add the ranks' rows.
  Tensor back = Tensor::empty({sent, hidden}, DType::kF32, dev);
  all_to_all_rows(group_, partial, recv_rows_, back, send_rows_);
  if (sent > 0) {
    ops::scatter_add_rows(back, send_token_, send_ones_, out);
  }
}

}  // namespace

std::unique_ptr<Dispatcher> make_normal_dispatcher(ProcessGroup& group,
                                                   const ExpertPlacement& placement,
                                                   const DispatchOptions& options) {
  return std::make_unique<NormalDispatcher>(group, placement, options);
}

}  // namespace tandem::detail
