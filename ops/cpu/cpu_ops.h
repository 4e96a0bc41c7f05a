// CPU reference kernels: the same signatures as ops/ops.h, called after validation.
// fp32 accumulation throughout; parallel over rows with core/thread_pool.
#pragma once

#include "ops/ops.h"

namespace tandem::ops::cpu {

void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out);
void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out);
void linear(const Tensor& x, const LinearWeight& w, Tensor& out);
void head_matmul(const Tensor& x, const HeadWeight& w, Tensor& out);
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave);
void silu_and_mul(const Tensor& gate_up, Tensor& out);
void fill_random(Tensor& out, uint64_t key, float amplitude, float offset);
void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
               Tensor& topk_ids, Tensor& topk_weights);
void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache);
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);
void convert(const Tensor& src, Tensor& out);
void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out);
void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out);
void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent);

// Row helpers shared by the CPU kernels.
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f32_bf16(const float* a, const bf16* b, int64_t n);  // bitwise equal to dot_f32
// Converts n elements of a float tensor's storage (f32/bf16/fp8) starting at `index` to f32.
void load_row_f32(const void* base, DType dtype, int64_t index, int64_t n, float* out);
// Writes n f32 values into a f32 or bf16 tensor's storage at `index` (bf16: round to nearest
// even).
void store_row_f32(const float* src, int64_t n, void* base, DType dtype, int64_t index);

}  // namespace tandem::ops::cpu
