// Multi-head latent attention (DeepSeek-V2 paper, section 2.1), CPU reference.
// Prefill: keys/values expanded per head from the latent (k = [k_nope_h, k_pe], v_h), causal.
// bf16 inputs are widened to f32 exactly and a bf16 out is the f32 result rounded once, so the
// bf16 op is the f32 op on the bf16 values (the reference for the CUDA tensor-core kernel).
// Decode: the absorbed form over the latent cache: scores = q_nope W_UK . c + q_pe . k_pe, and
// the output stays in latent space (W_UV is applied by the caller).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

namespace {

// In place: p = softmax(p[0..n)).
void softmax_inplace(float* p, int64_t n) {
  const float mx = *std::max_element(p, p + n);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += p[j] = std::exp(p[j] - mx);
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) p[j] *= inv;
}

}  // namespace

void mla_prefill_attention(const Tensor& q_in, const Tensor& kv_in, const Tensor& k_pe_in,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out_in) {
  // bf16: f32 copies (exact), the f32 computation, one rounding into out.
  const bool wide = q_in.dtype() == DType::kF32;
  const Tensor q = wide ? q_in : to_f32(q_in);
  const Tensor kv = wide ? kv_in : to_f32(kv_in);
  const Tensor k_pe = wide ? k_pe_in : to_f32(k_pe_in);
  Tensor out = out_in.dtype() == DType::kF32 ? out_in : Tensor::empty(out_in.shape(), DType::kF32);
  const int64_t heads = q.size(1), rope_dim = k_pe.size(1);
  const int64_t nope = q.size(2) - rope_dim, v_dim = kv.size(2) - nope;
  const int64_t batch = cu_q.size(0) - 1;
  const int32_t* cq = cu_q.data<int32_t>();
  const int32_t* ckv = cu_kv.data<int32_t>();
  TANDEM_CHECK(cq[0] == 0 && ckv[0] == 0 && cq[batch] == q.size(0) && ckv[batch] == kv.size(0),
               "mla_prefill_attention: cu_q/cu_kv must run from 0 to {} and {}", q.size(0),
               kv.size(0));
  std::vector<int64_t> seq_of(q.size(0));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t q_len = cq[b + 1] - cq[b], kv_len = ckv[b + 1] - ckv[b];
    TANDEM_CHECK(q_len >= 0 && kv_len >= q_len,
                 "mla_prefill_attention: sequence {} has {} queries and {} keys", b, q_len, kv_len);
    for (int64_t t = cq[b]; t < cq[b + 1]; ++t) seq_of[t] = b;
  }
  const float* qd = q.data<float>();
  const float* kvd = kv.data<float>();
  const float* ped = k_pe.data<float>();
  float* od = out.data<float>();
  const int64_t q_row = heads * (nope + rope_dim), kv_row = heads * (nope + v_dim);
  parallel_for(q.size(0) * heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / heads, h = th % heads, b = seq_of[t];
      const int64_t q_len = cq[b + 1] - cq[b], kv_len = ckv[b + 1] - ckv[b];
      const int64_t visible = kv_len - q_len + (t - cq[b]) + 1;  // causal: keys 0..own position
      const float* qn = qd + t * q_row + h * (nope + rope_dim);
      const float* qp = qn + nope;
      p.resize(visible);
      for (int64_t j = 0; j < visible; ++j) {
        const int64_t row = ckv[b] + j;
        const float* kn = kvd + row * kv_row + h * (nope + v_dim);
        p[j] = (dot_f32(qn, kn, nope) + dot_f32(qp, ped + row * k_pe.stride(0), rope_dim)) * scale;
      }
      softmax_inplace(p.data(), visible);
      float* o = od + (t * heads + h) * v_dim;
      std::fill(o, o + v_dim, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        const float* v = kvd + (ckv[b] + j) * kv_row + h * (nope + v_dim) + nope;
        for (int64_t d = 0; d < v_dim; ++d) o[d] += p[j] * v[d];
      }
    }
  });
  if (out_in.dtype() != DType::kF32) {
    const Shape rows = {out.size(0) * heads, v_dim};
    Tensor dst = out_in.view(rows);
    convert(out.view(rows), dst);
  }
}

void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent) {
  const int64_t batch = q_latent.size(0), heads = q_latent.size(1), lora = q_latent.size(2);
  const int64_t rope_dim = q_pe.size(2), width = lora + rope_dim;
  const int64_t max_pages = page_table.size(1), num_slots = cache.size(0);
  const int32_t* lens = seq_lens.data<int32_t>();

  // Gather each sequence's cache rows once (f32), shared by all heads.
  std::vector<std::vector<float>> rows(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = lens[b];
    TANDEM_CHECK(len >= 1 && len <= max_pages * page_size,
                 "mla_decode_attention: seq_len {} of sequence {} outside [1, {}]", len, b,
                 max_pages * page_size);
    rows[b].resize(len * width);
  }
  parallel_for(batch, 1, [&](int64_t bb, int64_t be) {
    for (int64_t b = bb; b < be; ++b) {
      const int32_t* pages = page_table.data<int32_t>() + b * page_table.stride(0);
      for (int64_t j = 0; j < lens[b]; ++j) {
        const int64_t slot = int64_t(pages[j / page_size]) * page_size + j % page_size;
        TANDEM_CHECK(slot >= 0 && slot < num_slots,
                     "mla_decode_attention: slot {} outside the cache [0, {})", slot, num_slots);
        load_row_f32(cache.raw_data(), cache.dtype(), slot * width, width, &rows[b][j * width]);
      }
    }
  });
  parallel_for(batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads, len = lens[b];
      const float* ql = q_latent.data<float>() + b * q_latent.stride(0) + h * q_latent.stride(1);
      const float* qp = q_pe.data<float>() + b * q_pe.stride(0) + h * q_pe.stride(1);
      p.resize(len);
      for (int64_t j = 0; j < len; ++j) {
        const float* r = &rows[b][j * width];
        p[j] = (dot_f32(ql, r, lora) + dot_f32(qp, r + lora, rope_dim)) * scale;
      }
      softmax_inplace(p.data(), len);
      float* o = out_latent.data<float>() + b * out_latent.stride(0) + h * out_latent.stride(1);
      std::fill(o, o + lora, 0.0f);
      for (int64_t j = 0; j < len; ++j) {
        const float* r = &rows[b][j * width];
        for (int64_t d = 0; d < lora; ++d) o[d] += p[j] * r[d];
      }
    }
  });
}

}  // namespace tandem::ops::cpu
