// ForwardBatch: everything one forward step needs besides the weights, passed explicitly
// (STYLE.md 10). Built on the host from per-sequence descriptions by the runner; the tensors
// live on the device that runs the step.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace tandem {

enum class ForwardMode {
  kExtend,  // prefill or chunked prefill: any number of new tokens per sequence
  kDecode,  // exactly one new token per sequence, absorbed MLA over the paged cache
};

// One sequence's part of a step, on the host.
struct SequenceStep {
  std::vector<int32_t> new_tokens;  // tokens this step computes
  int64_t cached_len = 0;           // tokens already in the KV cache (their positions come first)
  std::vector<int32_t> pages;       // the sequence's KV pages, covering cached_len + new tokens
  bool need_all_logits = false;     // logits for every new token, not only the last
};

struct ForwardBatch {
  ForwardMode mode = ForwardMode::kExtend;
  int64_t page_size = 0;
  int64_t num_tokens = 0;  // T: new tokens in the step
  int64_t batch = 0;       // B: sequences

  Tensor input_ids;   // i32 [T]
  Tensor positions;   // i32 [T]
  Tensor out_slots;   // i32 [T]: cache slot (page * page_size + offset) of each new token
  Tensor logit_rows;  // i32 [R]: rows of the step whose logits are returned

  // kExtend: keys span each sequence's whole cached + new length.
  Tensor kv_slots;  // i32 [L]: cache slots of positions 0..seq_len-1, sequence after sequence
  Tensor cu_q;      // i32 [B + 1]: prefix sums of new tokens
  Tensor cu_kv;     // i32 [B + 1]: prefix sums of seq_len
  // kDecode:
  Tensor page_table;  // i32 [B, max_pages]
  Tensor seq_lens;    // i32 [B]

  // Host copies for planning.
  std::vector<int32_t> seq_lens_host;
  std::vector<int32_t> logit_rows_host;

  // Builds the tensors on `device`. Checks that the pages cover every position; decode mode
  // needs exactly one new token per sequence.
  static ForwardBatch build(ForwardMode mode, const std::vector<SequenceStep>& seqs,
                            int64_t page_size, Device device = Device::cpu());
};

}  // namespace tandem
