// The op interface the model is written against (DESIGN.md "ops/"). Each function validates
// shapes, dtypes and devices on the host (STYLE.md 8) and runs on the backend where its tensors
// live: ops/cpu/ (the reference, fp32 accumulation) or ops/cuda/. Outputs are preallocated by
// the caller. All ops are synchronous on CPU; thread-safe for distinct outputs.
#pragma once

#include <cstdint>

#include <vector>

#include "core/tensor.h"

namespace tandem {

// A linear layer's weight, [out, in] like torch: out = x @ W^T.
// f8_e4m3 weights carry one fp32 scale per 128x128 block (DeepSeek-V3's `weight_scale_inv`):
// W[n][k] = fp8(W[n][k]) * scale_inv[n / 128][k / 128].
struct LinearWeight {
  Tensor weight;     // [out, in] f32 | bf16 | f8_e4m3
  Tensor scale_inv;  // f32 [ceil(out/128), ceil(in/128)] for f8_e4m3, else undefined
  static constexpr int64_t kBlock = 128;
  // The smallest K whose fp8 weights take the CUDA FP8 GEMM (ops/cuda/smxx_linear.cpp says
  // why); ops::cpu's FP8-activation mode (ops/cpu/fp8_quant.h) follows the same rule.
  static constexpr int64_t kFp8GemmMinK = 512;

  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
  bool is_fp8() const { return weight.dtype() == DType::kF8E4M3; }
};

// Per-head weights of head_matmul: [heads, N, K] f32 | bf16 | f8_e4m3; an fp8 one has its
// 128x128 block scales per head, f32 [heads, ceil(N/128), ceil(K/128)].
struct HeadWeight {
  Tensor weight;
  Tensor scale_inv;
  bool is_fp8() const { return weight.dtype() == DType::kF8E4M3; }
};

// Parameters of MoE routing (DeepSeek-V2/V3 gates).
struct RouteParams {
  int64_t top_k = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool sigmoid = true;     // sigmoid scores (V3) or softmax (V2)
  bool group_by_top2 = true;  // group score: sum of top-2 (V3 noaux_tc) or max (V2)
  bool grouped = true;     // false: plain greedy top-k over all experts
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
};

namespace ops {

// ids: i32 [T]; table: [V, H] (f32 | bf16); out: f32 [T, H]. Ids outside [0, V) are an error.
void embedding(const Tensor& ids, const Tensor& table, Tensor& out);

// out = x / rms(x) * weight over the last dim. x, out: f32 | bf16 [T, H] (any mix; out may
// alias x); weight: [H] f32 | bf16. Computed in f32; a bf16 out is rounded once.
void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out);

// residual += x; out = rms_norm(residual). The pre-norm residual step of every block.
// residual: f32 [T, H] (the residual stream stays f32); x, out: f32 | bf16 [T, H].
void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out);

// out = x @ W^T. x: f32 | bf16 [T, K] (rows may be strided); out: f32 | bf16 [T, N].
// Accumulation is f32 in every case; a bf16 out is the f32 result rounded once. On CUDA, bf16 x
// with bf16 weights runs on cuBLASLt's tensor-core GEMM.
void linear(const Tensor& x, const LinearWeight& w, Tensor& out);

// Per-head matmul: out[t, h, n] = sum_k x[t, h, k] * w[h, n, k].
// x: f32 | bf16 [T, H, K] (last dim contiguous); w: see HeadWeight; out: f32 [T, H, N].
// Accumulation is f32; bf16 x and weights are widened exactly, fp8 weights times their block
// scale (one f32 product, as linear). MLA's absorbed decode uses it for W_UK (q -> latent) and W_UV
// (latent -> v).
void head_matmul(const Tensor& x, const HeadWeight& w, Tensor& out);

// Rotary embedding in place on x: f32 | bf16 [T, heads, rope_dim] (last dim contiguous; bf16
// is computed in f32 and rounded once).
// inv_freq: f32 [rope_dim / 2]; positions: i32 [T]. Interleaved pairs (x0, x1), (x2, x3), ...
// are rotated by one frequency each (DeepSeek's layout); otherwise halves (x_i, x_{i+d/2}).
// cos and sin are multiplied by attention_factor (YaRN's mscale ratio).
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave);

// out = silu(gate) * up, gate_up: f32 | bf16 [T, 2I] (gate first); out: f32 | bf16 [T, I].
// Computed in f32; a bf16 out is rounded once.
void silu_and_mul(const Tensor& gate_up, Tensor& out);

// MoE gate. logits: f32 [T, E]; bias: f32 [E] or undefined (selection only, V3);
// topk_ids: i32 [T, k]; topk_weights: f32 [T, k].
void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
               Tensor& topk_ids, Tensor& topk_weights);

// Writes the new tokens' latent KV into the cache. latent: f32 | bf16 [T, kv_lora];
// k_pe: f32 | bf16 [T, rope]
// (rows may be strided); slots: i32 [T] (page * page_size + offset);
// cache: [num_slots, kv_lora + rope] (f32 | bf16).
void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache);

// out[i] = src[index[i]] row-wise, converted to out's dtype. src: f32 | bf16 [S, D];
// index: i32 [N]; out: f32 | bf16 [N, D] (bf16 to bf16 and f32 to f32 copy bits exactly).
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);

// out = src converted to out's dtype (round to nearest even into bf16; exact into f32).
// src: f32 | bf16 [R, C]; out: f32 | bf16 [R, C]; rows of either may be strided. The model's
// boundary between f32 stages (attention) and bf16 activations.
void convert(const Tensor& src, Tensor& out);

// out[index[i]] += weight[i] * src[i], row-wise (the weighted un-permute after the experts).
// src: f32 | bf16 [N, H]; index: i32 [N]; weight: f32 [N]; out: f32 [T, H] (f32 sums).
void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out);

// The routed experts of one MoE layer: gate/up [I, H] and down [H, I] per expert, all of one
// dtype (f32 | bf16 | f8_e4m3 with 128x128 block scales) on one device. prepare_experts checks
// them and, on CUDA, builds `table`: the device addresses the grouped kernels index by expert.
struct ExpertWeights {
  std::vector<LinearWeight> gate, up, down;
  Tensor table;  // CUDA: u64 [6, E] (gate, up, down weights, then their scales); else undefined
  int64_t num_experts() const { return int64_t(gate.size()); }
};
void prepare_experts(ExpertWeights& experts);

// The routed experts, grouped: out[t] += sum_j weights[t, j] * down(silu(gate(x[t])) * up(x[t]))
// with the expert ids[t, j]. x: f32 | bf16 [T, H]; ids: i32 [T, k]; weights: f32 [T, k];
// out: f32 [T, H]. Ids outside [0, E) are an error (that pair is skipped).
// CPU (and CUDA where the grouped kernels do not apply): per expert, gather its rows, the MLP in
// x's dtype, weighted scatter-add. CUDA with bf16 x: on the device only (no host sync, so a
// decode step can be captured in a CUDA graph): sort the pairs by expert, one grouped GEMM for
// gate and up with SiLU-and-mul fused, one for down (f32 out), a weighted un-permute.
void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                 const ExpertWeights& experts, Tensor& out);

// Deterministic random fill, the generator of dummy weights (model/random_weights.h): for
// element i, u = unit16 of 16 bits (word i % 4) of splitmix64(key + i - i % 4) (random_bits.h),
// uniform in [-1, 1); out[i] = offset + amplitude * u, rounded to out's dtype (bf16, f32 or
// f8_e4m3, RNE, saturating). Every device gives the same bits. out: contiguous.
void fill_random(Tensor& out, uint64_t key, float amplitude, float offset);

// MLA prefill attention over expanded keys/values, causal, variable length.
// q: [T, H, nope + rope]; kv: [L, H, nope + v] (k_nope then v per head); k_pe: [L, rope]
// shared by all heads (rows may be strided); q, kv and k_pe all f32 or all bf16; out: f32 | bf16
// [T, H, v]. cu_q: i32 [B + 1] and cu_kv: i32 [B + 1] are the prefix sums of the query and key
// lengths per sequence (kv_len >= q_len; the queries are the last q_len positions).
// Softmax statistics and accumulation are f32 in every case. On CUDA, bf16 inputs with
// nope = v = 128 and rope = 64 (DeepSeek-V2/V3) run a tensor-core flash-attention kernel that
// rounds the probabilities to bf16; other bf16 shapes and f32 run the SIMT kernel.
void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out);

// MLA decode attention, absorbed form over the paged latent cache, one query per sequence.
// q_latent: f32 [B, H, kv_lora] (q_nope @ W_UK); q_pe: f32 [B, H, rope];
// cache: [num_slots, kv_lora + rope]; page_table: i32 [B, max_pages]; seq_lens: i32 [B];
// out_latent: f32 [B, H, kv_lora] = softmax(scale * (q_latent.c + q_pe.k_pe)) @ c.
void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent);

// Per-row parameters of sample_tokens, each [R] on the logits' device.
struct SamplingRows {
  Tensor temperature;  // f32, >= 0; 0: greedy
  Tensor top_k;        // i32, >= 0; 0 (or >= V): off
  Tensor top_p;        // f32, (0, 1]; 1: off
  Tensor min_p;        // f32, [0, 1]; 0: off
  Tensor seed;         // i64: the row's random stream (ops/sampling_rng.h)
  Tensor draw;         // i64: which draw of that stream this token uses
};

// Samples one token per row of logits: f32 [R, V] (rows contiguous) into tokens: i32 [R], and
// logprobs: f32 [R], the log-softmax of the raw logits at the chosen token. Per row:
//  1. temperature 0: the argmax (lowest id on ties); else x = logits * (1 / T) in f32;
//  2. candidates: the top_k largest x (ties: lower id first), or all;
//  3. p_i = exp(double(x_i - max x)) over the candidates;
//  4. top_p < 1: in order of x descending (ties: lower id first), the shortest prefix of the
//     candidates whose p sum is >= top_p * their total;
//  5. min_p > 0: drops p_i < min_p (min-p relative to the most likely token);
//  6. u = sampling_uniform(seed, draw); among the kept tokens in id order, the first whose
//     running p sum exceeds u * their total (the last kept one if rounding runs past the end).
// runtime::Sampler follows the same steps (after its penalties), so a seeded request samples
// the same tokens on either side. The CPU op checks the parameter values; the CUDA op trusts
// them (they come from validated SamplingParams).
void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs);

// The k most likely tokens of each row of logits f32 [R, V] (rows contiguous): ids i32 [R, k],
// by logit descending with ties to the lower id, and values f32 [R, k], their log-softmax
// logit - lse, lse = max + log(sum(exp(double(logit - max)))) (sums in double; on the GPU in
// another order, so values agree to float rounding). 1 <= k <= min(V, kMaxTopLogprobs).
constexpr int64_t kMaxTopLogprobs = 20;
void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values);

// Per-row token penalties of the OpenAI/vLLM kind, on the logits' device. Row r's entries
// e in [offsets[r], offsets[r + 1]) name distinct tokens t = tokens[e] seen by the request,
// c = counts[e] of them in its output (0: prompt only).
struct PenaltyRows {
  Tensor offsets;     // i32 [R + 1], offsets[0] = 0, non-decreasing
  Tensor tokens;      // i32 [E], in [0, V)
  Tensor counts;      // i32 [E], >= 0
  Tensor repetition;  // f32 [R], > 0; 1: off
  Tensor frequency;   // f32 [R]
  Tensor presence;    // f32 [R]
};

// Applies the penalties in place to logits f32 [R, V] (rows contiguous), entry by entry:
//   repetition != 1: x = x > 0 ? x / repetition : x * repetition;
//   c > 0: x -= fma(frequency, c, presence)   (one rounding, on both backends).
// runtime::Sampler applies the same to its host rows (ops::cpu::penalize_row), so a penalized
// request samples the same tokens on either side. The CPU op checks token ids and counts; the
// CUDA op skips and reports a token outside [0, V) at the next synchronization.
void apply_penalties(Tensor& logits, const PenaltyRows& rows);

}  // namespace ops
}  // namespace tandem
