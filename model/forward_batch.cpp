#include "model/forward_batch.h"

#include <algorithm>

namespace tandem {

ForwardBatch ForwardBatch::build(ForwardMode mode, const std::vector<SequenceStep>& seqs,
                                 int64_t page_size, Device device) {
  TANDEM_CHECK(page_size >= 1, "ForwardBatch: page_size must be positive, got {}", page_size);
  TANDEM_CHECK(!seqs.empty(), "ForwardBatch: empty batch");
  ForwardBatch fb;
  fb.mode = mode;
  fb.page_size = page_size;
  fb.batch = int64_t(seqs.size());
  std::vector<int32_t> ids, positions, out_slots, kv_slots, cu_q{0}, cu_kv{0};
  size_t max_pages = 1;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const SequenceStep& s = seqs[b];
    const int64_t n_new = int64_t(s.new_tokens.size());
    const int64_t seq_len = s.cached_len + n_new;
    TANDEM_CHECK(n_new >= 1, "ForwardBatch: sequence {} has no new tokens", b);
    TANDEM_CHECK(mode != ForwardMode::kDecode || n_new == 1,
                 "ForwardBatch: decode step of sequence {} has {} new tokens, expected 1", b, n_new);
    TANDEM_CHECK(int64_t(s.pages.size()) * page_size >= seq_len,
                 "ForwardBatch: sequence {} needs {} slots but has {} pages of {}", b, seq_len,
                 s.pages.size(), page_size);
    auto slot_of = [&](int64_t pos) {
      return int32_t(int64_t(s.pages[pos / page_size]) * page_size + pos % page_size);
    };
    for (int64_t i = 0; i < n_new; ++i) {
      const int64_t pos = s.cached_len + i;
      ids.push_back(s.new_tokens[i]);
      positions.push_back(int32_t(pos));
      out_slots.push_back(slot_of(pos));
      if (s.need_all_logits || i == n_new - 1) fb.logit_rows_host.push_back(int32_t(ids.size() - 1));
    }
    if (mode == ForwardMode::kExtend) {
      for (int64_t pos = 0; pos < seq_len; ++pos) kv_slots.push_back(slot_of(pos));
    }
    cu_q.push_back(cu_q.back() + int32_t(n_new));
    cu_kv.push_back(cu_kv.back() + int32_t(seq_len));
    fb.seq_lens_host.push_back(int32_t(seq_len));
    max_pages = std::max(max_pages, s.pages.size());
  }
  fb.num_tokens = int64_t(ids.size());
  const int64_t t = fb.num_tokens, bsz = fb.batch;
  fb.input_ids = Tensor::from_vector(ids, {t}).to(device);
  fb.positions = Tensor::from_vector(positions, {t}).to(device);
  fb.out_slots = Tensor::from_vector(out_slots, {t}).to(device);
  fb.logit_rows = Tensor::from_vector(fb.logit_rows_host, {int64_t(fb.logit_rows_host.size())})
                      .to(device);
  fb.cu_q = Tensor::from_vector(cu_q, {bsz + 1}).to(device);
  fb.cu_kv = Tensor::from_vector(cu_kv, {bsz + 1}).to(device);
  fb.seq_lens = Tensor::from_vector(fb.seq_lens_host, {bsz}).to(device);
  if (mode == ForwardMode::kExtend) {
    fb.kv_slots = Tensor::from_vector(kv_slots, {int64_t(kv_slots.size())}).to(device);
  } else {
    std::vector<int32_t> table(bsz * max_pages, 0);
    for (int64_t b = 0; b < bsz; ++b) {
      std::copy(seqs[b].pages.begin(), seqs[b].pages.end(), table.begin() + b * max_pages);
    }
    fb.page_table = Tensor::from_vector(table, {bsz, int64_t(max_pages)}).to(device);
  }
  return fb;
}

}  // namespace tandem
