// CUDA kernels of every op: the same signatures as ops/cpu/cpu_ops.h, called by ops/ops.cpp
// after its validation when the tensors live on a CUDA device. Asynchronous: work is queued on
// the device's current stream (ops/cuda/device.h); copies to the host synchronize. Bad
// indices found by a kernel surface as tandem::Error at the next synchronization.
#pragma once

#include "ops/ops.h"

namespace tandem::ops::cuda {

// Registers the device allocator with core (idempotent; done at static initialization too).
void init();
// True when at least one CUDA device can be used (a GPU and a driver are present).
bool available();
// Waits for the device's queued work; throws on a recorded kernel error.
void synchronize(int device);

void embedding(const Tensor& ids, const Tensor& table, Tensor& out);
void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out);
void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out);
void linear(const Tensor& x, const LinearWeight& w, Tensor& out);
void head_matmul(const Tensor& x, const Tensor& w, Tensor& out);
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave);
void silu_and_mul(const Tensor& gate_up, Tensor& out);
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

}  // namespace tandem::ops::cuda
