// CPU twin of the CUDA activation quantizer (ops/cuda/smxx_fp8_quant.cu) that feeds the FP8
// block-scaled GEMM of linear: per token, per 128 columns (arXiv:2412.19437 section 3.3),
// scale = amax / 448 (1 for an all-zero block), q = round_to_e4m3(x / scale), f32 division,
// round to nearest even, saturating. The same steps as the kernel, so q and scales agree
// bitwise; the op harness checks that and uses this to build an FP8 reference for linear.
#pragma once

#include "core/tensor.h"

namespace tandem::ops::cpu {

// x: f32 | bf16 [M, K] (rows may be strided), K % 128 == 0, CPU.
// q: f8_e4m3 [M, K] contiguous; scale: f32 [K / 128, M] contiguous (the layout cuBLASLt reads).
void quantize_fp8_rows(const Tensor& x, Tensor& q, Tensor& scale);

// x with every element replaced by its quantized value q * scale (f32 [M, K]): the
// activations the FP8 GEMM effectively multiplies.
Tensor fp8_quantized_activations(const Tensor& x);

// The CUDA FP8 GEMM's numerics in the CPU linear, for references (golden_cuda_test): while on,
// linear with fp8 weights whose K and N are multiples of 128 and K >= kFp8GemmMinK (where the
// CUDA op takes the FP8 GEMM) multiplies fp8_quantized_activations(x) instead of x. Off by
// default; process-wide.
void set_linear_fp8_activations(bool on);
bool linear_fp8_activations();
class ScopedLinearFp8Activations {
 public:
  explicit ScopedLinearFp8Activations(bool on) : saved_(linear_fp8_activations()) {
    set_linear_fp8_activations(on);
  }
  ~ScopedLinearFp8Activations() { set_linear_fp8_activations(saved_); }
  ScopedLinearFp8Activations(const ScopedLinearFp8Activations&) = delete;
  ScopedLinearFp8Activations& operator=(const ScopedLinearFp8Activations&) = delete;

 private:
  bool saved_;
};

}  // namespace tandem::ops::cpu
