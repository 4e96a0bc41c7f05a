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

// How linear treats f8_e4m3 weights on CUDA.
//  - kBlockFp8 (the default): where the shapes allow (K and N multiples of 128, weight rows and
//    scales contiguous, out rows 16-byte aligned), x is quantized per token per 128 columns to
//    e4m3 (1x128 f32 scales) and multiplied on FP8 tensor cores (cuBLASLt, f32 accumulation),
//    like DeepSeek-V3's inference. Error against the exact op: the e4m3 rounding of x, at most
//    2^-4 relative per element (about 2.6e-2 relative L2 on Gaussian rows).
//  - kExact: the weights are dequantized into the f32 GEMM (the CPU op's result to f32
//    rounding); also where kBlockFp8 does not apply.
// Process-wide; the initial value comes from TANDEM_LINEAR_FP8 ("exact" or "block").
enum class LinearFp8Mode { kBlockFp8, kExact };
void set_linear_fp8_mode(LinearFp8Mode mode);
LinearFp8Mode linear_fp8_mode();
// Sets the mode for a scope, then restores the previous one (tests).
class ScopedLinearFp8Mode {
 public:
  explicit ScopedLinearFp8Mode(LinearFp8Mode mode) : prev_(linear_fp8_mode()) { set_linear_fp8_mode(mode); }
  ~ScopedLinearFp8Mode() { set_linear_fp8_mode(prev_); }
  ScopedLinearFp8Mode(const ScopedLinearFp8Mode&) = delete;
  ScopedLinearFp8Mode& operator=(const ScopedLinearFp8Mode&) = delete;

 private:
  LinearFp8Mode prev_;
};
// kBlockFp8 at decode sizes (M <= 16): while on, the FP8 GEMM is the grouped experts' FP8
// mma.sync kernel over the one weight with K split to fill the machine, instead of cuBLASLt's
// block-scaled GEMM (6-44% of the copy ceiling at M = 1 and 64 on the H200, bench/RESULTS.md).
// The same numerics (quantized x, f32 sums per 128-block times both scales). Off by default
// until measured on a GPU; the initial value comes from TANDEM_LINEAR_FP8_SKINNY ("1": on).
void set_linear_fp8_skinny(bool on);
bool linear_fp8_skinny();
class ScopedLinearFp8Skinny {
 public:
  explicit ScopedLinearFp8Skinny(bool on) : prev_(linear_fp8_skinny()) { set_linear_fp8_skinny(on); }
  ~ScopedLinearFp8Skinny() { set_linear_fp8_skinny(prev_); }
  ScopedLinearFp8Skinny(const ScopedLinearFp8Skinny&) = delete;
  ScopedLinearFp8Skinny& operator=(const ScopedLinearFp8Skinny&) = delete;

 private:
  bool prev_;
};
// Counts of fp8-weight linear calls by the path they took, since the process started (tests
// and benchmarks say which layers ran on FP8 tensor cores).
struct LinearFp8Counts {
  int64_t block_fp8 = 0;  // quantized x, cuBLASLt FP8 GEMM
  int64_t exact = 0;      // dequantizing f32 GEMM
};
LinearFp8Counts linear_fp8_counts();

void head_matmul(const Tensor& x, const HeadWeight& w, Tensor& out);
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave);
void silu_and_mul(const Tensor& gate_up, Tensor& out);
void fill_random(Tensor& out, uint64_t key, float amplitude, float offset);
void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& params,
               Tensor& topk_ids, Tensor& topk_weights);
// Grouped experts on FP8 tensor cores: while on and linear_fp8_mode() is kBlockFp8, each expert
// GEMM that the FP8 linear's rule admits (fp8 weights, K >= 512, K and N multiples of 128)
// quantizes its activations per token and 128 columns as that linear does and multiplies e4m3 x
// e4m3 (mma.sync m16n8k32); the CPU op in FP8-activation mode is its twin. Off by default until
// measured on a GPU; the initial value comes from TANDEM_MOE_FP8_MMA ("1": on).
void set_moe_fp8_mma(bool on);
bool moe_fp8_mma();
class ScopedMoeFp8Mma {
 public:
  explicit ScopedMoeFp8Mma(bool on) : prev_(moe_fp8_mma()) { set_moe_fp8_mma(on); }
  ~ScopedMoeFp8Mma() { set_moe_fp8_mma(prev_); }
  ScopedMoeFp8Mma(const ScopedMoeFp8Mma&) = delete;
  ScopedMoeFp8Mma& operator=(const ScopedMoeFp8Mma&) = delete;

 private:
  bool prev_;
};
// The device address table of prepare_experts (u64 [6, E]).
Tensor make_expert_table(const ExpertWeights& experts);
// moe_experts on the device (no host sync); false, doing nothing, where the grouped kernels do
// not apply (x not bf16, f32 weights, H or I not a multiple of 64, more than 1024 experts).
bool moe_experts_grouped(const Tensor& x, const Tensor& ids, const Tensor& weights,
                         const ExpertWeights& experts, Tensor& out);
void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache);
void gather_rows(const Tensor& src, const Tensor& index, Tensor& out);
void convert(const Tensor& src, Tensor& out);
void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out);
void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out);
void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent);
void apply_penalties(Tensor& logits, const PenaltyRows& rows);
void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values);
void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs);

}  // namespace tandem::ops::cuda
