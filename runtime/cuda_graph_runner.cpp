#include "runtime/cuda_graph_runner.h"

#include <algorithm>
#include <map>

#include "core/log.h"
#include "core/progress.h"
#ifdef TANDEM_WITH_CUDA
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device.h"
#endif

namespace tandem::runtime {

#ifdef TANDEM_WITH_CUDA

struct DecodeGraphs::Impl {
  explicit Impl(int device) : pool(device) {}
  ops::cuda::GraphPool pool;  // declared first: destroyed after the graphs and their outputs
  std::map<int32_t, std::unique_ptr<ops::cuda::CudaGraph>> graphs;
  std::map<int32_t, Tensor> logits;  // each graph's output, [size, vocab]
};

namespace {

std::vector<int32_t> ladder(int32_t max_batch) {
  std::vector<int32_t> sizes;
  for (int32_t s : {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128}) {
    if (s <= max_batch) sizes.push_back(s);
  }
  for (int32_t s = 160; s <= max_batch; s += 32) sizes.push_back(s);
  if (sizes.empty() || sizes.back() != max_batch) sizes.push_back(max_batch);
  return sizes;
}

}  // namespace

DecodeGraphs::DecodeGraphs(DeepseekV3Model& model, KvCache& cache, Device device,
                           const DecodeGraphOptions& options)
    : model_(model), cache_(cache), device_(device), options_(options) {
  TANDEM_CHECK(device.is_cuda(), "DecodeGraphs: CUDA graphs need a CUDA device, got {}",
               device.name());
  TANDEM_CHECK(options.max_batch >= 1 && options.max_pages >= 1,
               "DecodeGraphs: max_batch {} and max_pages {} must be positive", options.max_batch,
               options.max_pages);
  TANDEM_CHECK(options.scratch_page >= 0 && options.scratch_page < cache.num_pages,
               "DecodeGraphs: scratch page {} outside the pool of {} pages", options.scratch_page,
               cache.num_pages);
  sizes_ = ladder(options.max_batch);
  const int64_t mb = options.max_batch;
  inputs_ = Tensor::zeros({4 * mb + mb * options.max_pages}, DType::kI32, device);
  staging_.assign(size_t(4 * mb + mb * options.max_pages), 0);
  std::vector<int32_t> rows(static_cast<size_t>(mb));
  for (int64_t i = 0; i < mb; ++i) rows[size_t(i)] = int32_t(i);
  logit_rows_ = Tensor::from_vector(rows, {mb}).to(device);
  impl_ = std::make_unique<Impl>(device.index);

  ProgressBar bar("capturing CUDA graphs", sizes_.size(), "graphs");
  ops::cuda::ScopedGraphPool scope(impl_->pool);
  for (auto it = sizes_.rbegin(); it != sizes_.rend(); ++it) {  // largest first: smaller reuse
    const int32_t size = *it;
    fill_inputs({}, size);  // every row padding: the warm-up and capture touch only scratch
    const ForwardBatch batch = batch_view(size);
    { Tensor warm = model_.forward(batch, cache_); }  // lazy setup (GEMM plans) and the pool
    ops::cuda::synchronize(device.index);
    auto graph = std::make_unique<ops::cuda::CudaGraph>();
    graph->begin_capture(device.index);
    Tensor logits;
    try {
      logits = model_.forward(batch, cache_);
    } catch (...) {
      try { graph->end_capture(); } catch (...) {}
      throw;
    }
    graph->end_capture();
    impl_->graphs[size] = std::move(graph);
    impl_->logits[size] = logits;
    bar.advance(1);
  }
  ops::cuda::synchronize(device.index);
  bar.finish();
  TANDEM_LOG_INFO("CUDA graphs: {} decode batch sizes up to {}, {:.1f} MiB graph memory",
                  sizes_.size(), options.max_batch, double(impl_->pool.bytes()) / (1 << 20));
}

DecodeGraphs::~DecodeGraphs() = default;

size_t DecodeGraphs::pool_bytes() const { return impl_->pool.bytes(); }

bool DecodeGraphs::fits(int64_t batch, int64_t pages) const {
  return batch >= 1 && batch <= options_.max_batch && pages <= options_.max_pages;
}

void DecodeGraphs::fill_inputs(const std::vector<SequenceStep>& seqs, int32_t size) {
  const int64_t mb = options_.max_batch, ps = cache_.page_size, width = options_.max_pages;
  int32_t* ids = staging_.data();
  int32_t* pos = ids + mb;
  int32_t* slots = ids + 2 * mb;
  int32_t* lens = ids + 3 * mb;
  int32_t* table = ids + 4 * mb;
  for (int32_t i = 0; i < size; ++i) {
    if (size_t(i) < seqs.size()) {
      const SequenceStep& s = seqs[size_t(i)];
      const int64_t p = s.cached_len;  // the one new token's position
      ids[i] = s.new_tokens[0];
      pos[i] = int32_t(p);
      slots[i] = int32_t(int64_t(s.pages[size_t(p / ps)]) * ps + p % ps);
      lens[i] = int32_t(p + 1);
      std::copy(s.pages.begin(), s.pages.end(), table + int64_t(i) * width);
    } else {  // padding: one token at position 0 of the scratch page
      ids[i] = 0;
      pos[i] = 0;
      slots[i] = int32_t(int64_t(options_.scratch_page) * ps);
      lens[i] = 1;
      table[int64_t(i) * width] = options_.scratch_page;
    }
  }
  // Entries of a page-table row past the sequence's length are never read: no need to clear.
  const auto host = [&](int64_t offset, int64_t n) {
    return Tensor::from_blob(staging_.data() + offset, {n}, DType::kI32, Device::cpu(), nullptr);
  };
  inputs_.slice(0, 0, 4 * mb).copy_from(host(0, 4 * mb));
  inputs_.slice(0, 4 * mb, 4 * mb + size * width).copy_from(host(4 * mb, size * width));
}

ForwardBatch DecodeGraphs::batch_view(int32_t size) const {
  const int64_t mb = options_.max_batch;
  ForwardBatch fb;
  fb.mode = ForwardMode::kDecode;
  fb.page_size = cache_.page_size;
  fb.num_tokens = size;
  fb.batch = size;
  fb.input_ids = inputs_.slice(0, 0, size);
  fb.positions = inputs_.slice(0, mb, mb + size);
  fb.out_slots = inputs_.slice(0, 2 * mb, 2 * mb + size);
  fb.seq_lens = inputs_.slice(0, 3 * mb, 3 * mb + size);
  fb.page_table = inputs_.slice(0, 4 * mb, 4 * mb + int64_t(size) * options_.max_pages)
                      .view({size, options_.max_pages});
  fb.logit_rows = logit_rows_.slice(0, 0, size);
  return fb;
}

int32_t DecodeGraphs::graph_size(int64_t batch) const {
  const auto it = std::lower_bound(sizes_.begin(), sizes_.end(), int32_t(batch));
  TANDEM_CHECK(batch >= 1 && it != sizes_.end(), "DecodeGraphs: batch {} outside 1..{}", batch,
               options_.max_batch);
  return *it;
}

void DecodeGraphs::fill_inputs(const std::vector<SequenceStep>& seqs) {
  for (const SequenceStep& s : seqs) {
    TANDEM_CHECK(s.new_tokens.size() == 1 && int64_t(s.pages.size()) <= options_.max_pages &&
                     int64_t(s.pages.size()) * cache_.page_size > s.cached_len,
                 "DecodeGraphs: a sequence does not fit the graphs (tokens {}, pages {})",
                 s.new_tokens.size(), s.pages.size());
  }
  fill_inputs(seqs, graph_size(int64_t(seqs.size())));
}

Tensor DecodeGraphs::replay(int64_t batch) {
  const int32_t size = graph_size(batch);
  impl_->graphs.at(size)->replay();
  ++replays_;
  return impl_->logits.at(size).slice(0, 0, batch);
}

Tensor DecodeGraphs::run(const std::vector<SequenceStep>& seqs) {
  fill_inputs(seqs);
  return replay(int64_t(seqs.size()));
}

#else  // a build without the CUDA backend: no graphs to make

struct DecodeGraphs::Impl {};

DecodeGraphs::DecodeGraphs(DeepseekV3Model& model, KvCache& cache, Device device,
                           const DecodeGraphOptions& options)
    : model_(model), cache_(cache), device_(device), options_(options) {
  TANDEM_FAIL("CUDA graphs: this build has no CUDA backend");
}
DecodeGraphs::~DecodeGraphs() = default;
size_t DecodeGraphs::pool_bytes() const { return 0; }
bool DecodeGraphs::fits(int64_t, int64_t) const { return false; }
Tensor DecodeGraphs::run(const std::vector<SequenceStep>&) { return {}; }
void DecodeGraphs::fill_inputs(const std::vector<SequenceStep>&) {}
Tensor DecodeGraphs::replay(int64_t) { return {}; }
int32_t DecodeGraphs::graph_size(int64_t) const { return 0; }
void DecodeGraphs::fill_inputs(const std::vector<SequenceStep>&, int32_t) {}
ForwardBatch DecodeGraphs::batch_view(int32_t) const { return {}; }

#endif

}  // namespace tandem::runtime
