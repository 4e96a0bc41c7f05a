// DecodeGraphs: decode steps replayed from CUDA graphs (DESIGN.md, runtime's CUDA graph runner).
// One graph per batch size of a ladder (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, ...,
// up to max_batch), captured at startup, largest first, sharing one graph memory pool. A step
// of b sequences replays the graph of the smallest size >= b: the real rows' inputs (token,
// position, cache slot, length, page-table row) go into the graph's fixed input buffers with
// one host-to-device copy, the padding rows point at a scratch page of the KV pool that no
// request owns, and the first b rows of the graph's logits are the step's. Prefill, mixed
// steps, and decode steps that do not fit (more sequences than max_batch, or a sequence with
// more pages than the page-table width) run eagerly.
// Not thread-safe: the engine thread uses it. Built only with the CUDA backend.
#pragma once

#include <memory>
#include <vector>

#include "model/deepseek_v3.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"

namespace tandem::runtime {

struct DecodeGraphOptions {
  int32_t max_batch = 256;      // the largest captured batch size (0: no graphs)
  int64_t max_pages = 0;        // page-table width: pages of the longest sequence served
  int32_t scratch_page = -1;    // a KV page no request uses, for the padding rows
};

class DecodeGraphs {
 public:
  // Captures every graph now (each after one eager warm-up run of its size).
  DecodeGraphs(DeepseekV3Model& model, KvCache& cache, Device device,
               const DecodeGraphOptions& options);
  ~DecodeGraphs();

  // True when a decode step of `batch` sequences with at most `pages` pages each fits a graph.
  bool fits(int64_t batch, int64_t pages) const;
  // Replays the step; f32 logits [seqs.size(), vocab] on the device, valid until the next run.
  Tensor run(const std::vector<SequenceStep>& seqs);
  // run() in two parts, so that a caller can time the replay alone: copy the step's inputs
  // (synchronous), then queue the graph of the smallest size >= batch.
  void fill_inputs(const std::vector<SequenceStep>& seqs);
  Tensor replay(int64_t batch);

  const std::vector<int32_t>& batch_sizes() const { return sizes_; }
  int64_t replays() const { return replays_; }
  size_t pool_bytes() const;

 private:
  int32_t graph_size(int64_t batch) const;  // the smallest captured size >= batch
  void fill_inputs(const std::vector<SequenceStep>& seqs, int32_t size);
  ForwardBatch batch_view(int32_t size) const;

  DeepseekV3Model& model_;
  KvCache& cache_;
  Device device_;
  DecodeGraphOptions options_;
  std::vector<int32_t> sizes_;
  Tensor inputs_;                // i32 device: [4, max_batch] (ids, positions, slots, lengths),
                                 // then [max_batch, max_pages] (page table)
  std::vector<int32_t> staging_; // the same layout on the host
  Tensor logit_rows_;            // i32 [max_batch] = 0, 1, 2, ...
  int64_t replays_ = 0;
  struct Impl;
  std::unique_ptr<Impl> impl_;   // the graphs and their memory pool (CUDA types)
};

}  // namespace tandem::runtime
