// Host launchers of smxx_linear.cu: linear (one GEMM) and head_matmul (one GEMM per head).
// linear picks the path: bf16 x and weights on cuBLASLt; fp8 weights on cuBLASLt's FP8
// block-scaled GEMM after quantizing x (LinearFp8Mode, cuda_ops.h); the rest on the f32 kernels.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "ops/cuda/cublaslt_fp8_gemm.h"
#include "ops/cuda/cublaslt_gemm.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {

std::atomic<int> g_fp8_mode{[] {
  const char* env = std::getenv("TANDEM_LINEAR_FP8");
  return int(env && std::strcmp(env, "exact") == 0 ? LinearFp8Mode::kExact : LinearFp8Mode::kBlockFp8);
}()};
std::atomic<int64_t> g_fp8_block_calls{0}, g_fp8_exact_calls{0};
std::atomic<bool> g_fp8_skinny{[] {
  const char* env = std::getenv("TANDEM_LINEAR_FP8_SKINNY");
  return env && std::strcmp(env, "1") == 0;
}()};

// Rows up to which linear_fp8_decode replaces cuBLASLt (one 16-row MMA tile).
constexpr int64_t kFp8DecodeRows = 16;

// Decode sizes: the grouped experts' FP8 mma.sync kernel over this one weight (no padding of M,
// K split to fill the machine). The numerics of the cuBLASLt path: x quantized 1x128 by the
// same quantizer, f32 sums per 128-block times activation scale x weight scale.
void linear_fp8_decode(const Tensor& x, const LinearWeight& w, Tensor& out, const OpContext& ctx) {
  const int64_t m = x.size(0), n = w.out_features(), k = w.in_features();
  const int64_t kb = k / LinearWeight::kBlock;
  Tensor q = Tensor::empty({m, k}, DType::kF8E4M3, x.device());
  Tensor s = Tensor::empty({m, kb}, DType::kF32, x.device());
  quantize_fp8_rows(x.raw_data(), x.dtype(), x.stride(0), m, k, q.raw_data(), mptr<float>(s),
                    Fp8ActScaleLayout::kKMajor, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (fp8 quantize)");
  MoeGroupedGemmParams g{};
  g.a = q.raw_data();
  g.a_stride = k;
  g.a_scale = cptr<float>(s);
  g.a_scale_stride = kb;
  g.fp8_act = true;
  g.rows = int32_t(m);
  g.w_dense = w.weight.raw_data();
  g.s_dense = cptr<float>(w.scale_inv);
  g.w_dtype = DType::kF8E4M3;
  g.n = n;
  g.k = k;
  g.experts = 1;
  g.out = out.raw_data();
  g.out_stride = out.stride(0);
  g.out_dtype = out.dtype();
  g.gate_up = false;
  Tensor partial;
  plan_fp8_splits(g, 1, m, ctx.device, partial);
  launch_moe_grouped_gemm(g, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (fp8 skinny)");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// cuBLASLt's 1x128 (VEC128_32F) FP8 GEMM on sm_90 (CUDA 13) offers no algorithm for M = 1,
// 37 or 130 and runs M = 64, 128, 256, 4096 (H200 run of 2026-11-28): M is padded to this.
constexpr int64_t kFp8RowPad = 16;

// cuBLASLt 13.0's block-scaled FP8 GEMM (1x128 x 128x128 scales) gave wrong results for K = 128
// and 256 on the H200 (rel. L2 0.03-0.6 against the same quantized inputs, every M and out
// dtype tried; K = 512 and 1024 at 1.3e-4 / 7e-4: op harness TANDEM_FP8_SWEEP run of
// 2026-11-28), so K < kFp8MinK takes the exact path. Every DeepSeek-V3 projection has K >= 512.
constexpr int64_t kFp8MinK = LinearWeight::kFp8GemmMinK;

// The FP8 tensor-core path for an fp8 weight; false (nothing written) where it does not apply:
// K >= kFp8MinK, K and N multiples of 128 (whole scale blocks, cuBLASLt's FP8 leading-dimension rule),
// contiguous weight rows and scales, an out with contiguous, 16-byte aligned rows, and an
// algorithm offered by cuBLASLt. M not a multiple of kFp8RowPad: the GEMM runs over zero rows
// appended to the quantized x into a scratch out, and the first M rows are copied to out.
bool linear_block_fp8(const Tensor& x, const LinearWeight& w, Tensor& out, const OpContext& ctx) {
  const int64_t m = x.size(0), n = w.out_features(), k = w.in_features();
  const int64_t kb = k / LinearWeight::kBlock;
  const int64_t out_es = int64_t(dtype_size_bytes(out.dtype()));
  const bool shapes = m > 0 && k >= kFp8MinK && k % 128 == 0 && n % 128 == 0 && x.stride(1) == 1 &&
                      w.weight.stride(0) == k && w.weight.stride(1) == 1 &&
                      w.scale_inv.size(0) == n / 128 && w.scale_inv.size(1) == kb &&
                      w.scale_inv.stride(0) == kb && w.scale_inv.stride(1) == 1 &&
                      out.stride(1) == 1 && (m == 1 || (out.stride(0) * out_es) % 16 == 0) &&
                      aligned16(out.raw_data()) && aligned16(w.weight.raw_data()) &&
                      aligned16(w.scale_inv.raw_data());
  if (!shapes) return false;
  if (m <= kFp8DecodeRows && g_fp8_skinny.load()) {
    linear_fp8_decode(x, w, out, ctx);
    return true;
  }
  const int64_t mp = (m + kFp8RowPad - 1) / kFp8RowPad * kFp8RowPad;
  // [Mp, K] e4m3 and [K/128][Mp] scales: the layout cuBLASLt's VEC128_32F reads. Padded rows:
  // q = 0 and scale = 0, so they compute zeros and read nothing undefined.
  Tensor q = Tensor::empty({mp, k}, DType::kF8E4M3, x.device());
  Tensor s = Tensor::empty({kb, mp}, DType::kF32, x.device());
  if (mp != m) {
    TANDEM_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(q.raw_data()) + m * k, 0, size_t((mp - m) * k), ctx.stream));
    TANDEM_CUDA_CHECK(cudaMemsetAsync(s.raw_data(), 0, size_t(kb * mp) * sizeof(float), ctx.stream));
  }
  quantize_fp8_rows(x.raw_data(), x.dtype(), x.stride(0), m, k, q.raw_data(), mptr<float>(s),
                    Fp8ActScaleLayout::kMnMajor, ctx.stream, mp);
  TANDEM_CUDA_LAUNCH_CHECK("linear (fp8 quantize)");
  Tensor scratch = mp != m ? Tensor::empty({mp, n}, out.dtype(), out.device()) : Tensor();
  Tensor& dst = mp != m ? scratch : out;
  LtFp8Gemm g{q.raw_data(), cptr<float>(s), w.weight.raw_data(), cptr<float>(w.scale_inv),
              dst.raw_data(), dst.dtype(), mp, n, k,
              Fp8ActScaleLayout::kMnMajor, Fp8WeightScaleLayout::kAsStored,
              mp != m ? n : out.stride(0)};
  if (!cublaslt_gemm_fp8_block(g, ctx.device, ctx.stream, nullptr)) return false;
  if (mp != m) {
    TANDEM_CUDA_CHECK(cudaMemcpy2DAsync(out.raw_data(), size_t(out.stride(0) * out_es), scratch.raw_data(),
                                        size_t(n * out_es), size_t(n * out_es), size_t(m),
                                        cudaMemcpyDeviceToDevice, ctx.stream));
  }
  return true;
}

Tensor cast_rows(const Tensor& src, DType dtype, const OpContext& ctx) {
  Tensor dst = Tensor::empty(src.shape(), dtype, src.device());
  CastRowsParams p{src.raw_data(), src.dtype(), src.stride(0), dst.raw_data(), dtype,
                   dst.stride(0), src.size(0), src.size(1)};
  launch_cast_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (cast)");
  return dst;
}

void cast_rows_into(const Tensor& src, Tensor& dst, const OpContext& ctx) {
  CastRowsParams p{src.raw_data(), src.dtype(), src.stride(0), dst.raw_data(), dst.dtype(),
                   dst.stride(0), src.size(0), src.size(1)};
  launch_cast_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear (cast)");
}

}  // namespace

void set_linear_fp8_mode(LinearFp8Mode mode) { g_fp8_mode.store(int(mode)); }
LinearFp8Mode linear_fp8_mode() { return LinearFp8Mode(g_fp8_mode.load()); }
void set_linear_fp8_skinny(bool on) { g_fp8_skinny.store(on); }
bool linear_fp8_skinny() { return g_fp8_skinny.load(); }
LinearFp8Counts linear_fp8_counts() { return {g_fp8_block_calls.load(), g_fp8_exact_calls.load()}; }

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  OpContext ctx(out);
  if (w.is_fp8()) {
    if (linear_fp8_mode() == LinearFp8Mode::kBlockFp8 && linear_block_fp8(x, w, out, ctx)) {
      ++g_fp8_block_calls;
      return;
    }
    ++g_fp8_exact_calls;
  }
  if (x.dtype() == DType::kBF16 && w.weight.dtype() == DType::kBF16 && x.size(1) > 0) {
    // Tensor cores through cuBLASLt, f32 accumulation, one rounding into a bf16 out.
    LtGemm g{x.raw_data(), x.stride(0), w.weight.raw_data(), w.weight.stride(0),
             out.raw_data(), x.size(0) == 1 ? out.size(1) : out.stride(0), out.dtype(),
             x.size(0), w.out_features(), w.in_features()};
    if (x.size(0) == 1) g.ldx = x.size(1);  // a single row: any stride is valid
    cublaslt_gemm_bf16(g, ctx.device, ctx.stream);
    return;
  }
  // Everything else on the f32 kernels: bf16 activations widened, a bf16 out rounded once.
  const Tensor xf = x.dtype() == DType::kF32 ? x : cast_rows(x, DType::kF32, ctx);
  Tensor of = out.dtype() == DType::kF32 ? out : Tensor::empty(out.shape(), DType::kF32, out.device());
  GemmParams p{};
  p.x = cptr<float>(xf);
  p.x_stride = xf.stride(0);
  p.w = w.weight.raw_data();
  p.w_dtype = w.weight.dtype();
  p.w_stride = w.weight.stride(0);
  if (w.is_fp8()) {
    TANDEM_CHECK(w.scale_inv.stride(1) == 1, "linear: scale_inv rows must be contiguous");
    p.scale_inv = cptr<float>(w.scale_inv);
    p.scale_stride = w.scale_inv.stride(0);
  }
  p.out = mptr<float>(of);
  p.out_stride = of.stride(0);
  p.m = x.size(0);
  p.n = w.out_features();
  p.k = w.in_features();
  p.batch = 1;
  launch_gemm_f32(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("linear");
  if (out.dtype() != DType::kF32) cast_rows_into(of, out, ctx);
}

// head_matmul with bf16 x on tensor cores: the grouped experts' streaming kernel (bf16 rows,
// mma.sync; fp8 weights widened exactly, per-block scale promotion) with one group per head.
void head_matmul_bf16(const Tensor& x, const HeadWeight& hw, Tensor& out, const OpContext& ctx) {
  const Tensor& w = hw.weight;
  MoeGroupedGemmParams g{};
  g.a = x.raw_data();
  g.a_stride = x.stride(0);
  g.a_group_stride = x.stride(1);
  g.rows = int32_t(x.size(0));
  g.w_dense = w.raw_data();
  g.w_group_stride = w.stride(0);
  if (hw.is_fp8()) {
    g.s_dense = cptr<float>(hw.scale_inv);
    g.s_group_stride = hw.scale_inv.stride(0);
  }
  g.w_dtype = w.dtype();
  g.n = w.size(1);
  g.k = w.size(2);
  g.experts = x.size(1);
  g.out = out.raw_data();
  g.out_stride = out.stride(0);
  g.out_group_stride = out.stride(1);
  g.out_dtype = DType::kF32;
  g.splits = 1;
  launch_moe_grouped_gemm(g, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("head_matmul (tensor cores)");
}

void head_matmul(const Tensor& x, const HeadWeight& hw, Tensor& out) {
  TANDEM_CHECK(out.stride(2) == 1, "head_matmul: out must be contiguous in its last dimension");
  OpContext ctx(out);
  const Tensor& w = hw.weight;
  if (x.dtype() == DType::kBF16) {
    // The kernel reads rows with 16-byte loads 64 values at a time and writes column pairs.
    // TANDEM_HEAD_MATMUL_TC=0 keeps the widened f32 path (a way around the kernel, comparisons).
    const char* env = std::getenv("TANDEM_HEAD_MATMUL_TC");
    const bool tc = !(env && env[0] == '0') && w.dtype() != DType::kF32 && w.size(2) % 64 == 0 &&
                    w.size(1) % 2 == 0 &&
                    x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0 &&
                    aligned16(x.raw_data()) && x.size(0) < (int64_t(1) << 31) &&
                    out.stride(0) % 2 == 0 && out.stride(1) % 2 == 0 &&
                    reinterpret_cast<uintptr_t>(out.raw_data()) % 8 == 0 && x.size(1) <= 65535;
    if (tc) {
      head_matmul_bf16(x, hw, out, ctx);
      return;
    }
    // Otherwise widened to f32 (exact) for the f32 kernels: [T * H, K] rows when the views allow.
    TANDEM_CHECK(x.stride(0) == x.size(1) * x.stride(1),
                 "head_matmul: bf16 x {} needs rows of heads one stride apart", x.describe());
    Tensor xf = Tensor::empty(x.shape(), DType::kF32, x.device());
    CastRowsParams c{x.raw_data(), DType::kBF16, x.stride(1), xf.raw_data(), DType::kF32, x.size(2),
                     x.size(0) * x.size(1), x.size(2)};
    launch_cast_rows(c, ctx.stream);
    TANDEM_CUDA_LAUNCH_CHECK("head_matmul (widen)");
    head_matmul(xf, hw, out);
    return;
  }
  GemmParams p{};
  p.x = cptr<float>(x);
  p.x_stride = x.stride(0);
  p.x_batch_stride = x.stride(1);
  p.w = w.raw_data();
  p.w_dtype = w.dtype();
  p.w_stride = w.stride(1);
  p.w_batch_stride = w.stride(0);
  if (hw.is_fp8()) {  // contiguous [heads, ceil(N/128), ceil(K/128)] (ops::head_matmul checked)
    p.scale_inv = cptr<float>(hw.scale_inv);
    p.scale_stride = hw.scale_inv.stride(1);
    p.scale_batch_stride = hw.scale_inv.stride(0);
  }
  p.out = mptr<float>(out);
  p.out_stride = out.stride(0);
  p.out_batch_stride = out.stride(1);
  p.m = x.size(0);
  p.n = w.size(1);
  p.k = w.size(2);
  p.batch = x.size(1);
  TANDEM_CHECK(p.batch <= 65535, "head_matmul: {} heads exceed the grid", p.batch);
  launch_gemm_f32(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("head_matmul");
}

}  // namespace tandem::ops::cuda
