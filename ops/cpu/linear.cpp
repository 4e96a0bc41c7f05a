#include <atomic>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/fp8_quant.h"

namespace tandem::ops::cpu {

namespace {

constexpr int64_t kRowsPerTask = 8;
std::atomic<bool> g_fp8_activations{false};

// Converts weight row n to f32, applying the fp8 block scales when present.
void weight_row_f32(const LinearWeight& w, int64_t n, float* out) {
  const int64_t k = w.in_features();
  load_row_f32(w.weight.raw_data(), w.weight.dtype(), n * k, k, out);
  if (!w.is_fp8()) return;
  const int64_t b = LinearWeight::kBlock;
  const float* scale = w.scale_inv.data<float>() + (n / b) * w.scale_inv.stride(0);
  for (int64_t j = 0; j < k; ++j) out[j] *= scale[j / b];
}

}  // namespace

void set_linear_fp8_activations(bool on) { g_fp8_activations = on; }
bool linear_fp8_activations() { return g_fp8_activations; }

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  const int64_t tokens = x.size(0), n_out = w.out_features(), k = w.in_features();
  // f32 activations are read in place; bf16 ones are widened once (exact). In FP8-activation
  // mode they are the e4m3-rounded values the CUDA FP8 GEMM multiplies.
  const bool fp8_act = g_fp8_activations && w.is_fp8() && k >= LinearWeight::kFp8GemmMinK &&
                       k % LinearWeight::kBlock == 0 && n_out % LinearWeight::kBlock == 0 &&
                       tokens > 0;
  const Tensor xf = fp8_act ? fp8_quantized_activations(x)
                            : (x.dtype() == DType::kF32 ? x : to_f32(x));
  const float* xd = xf.data<float>();
  const int64_t xs = xf.stride(0);
  const bool out_f32 = out.dtype() == DType::kF32;
  const int64_t os = out.stride(0);
  const int64_t tasks = (n_out + kRowsPerTask - 1) / kRowsPerTask;
  auto store = [&](int64_t t, int64_t n, float v) {
    if (out_f32) {
      out.data<float>()[t * os + n] = v;
    } else {
      out.data<bf16>()[t * os + n] = f32_to_bf16(v);
    }
  };
  // Decode-sized steps read bf16 weights directly: converting a row to f32 first would cost a
  // write and a re-read of every weight for only one or two dot products.
  if (tokens <= 2 && w.weight.dtype() == DType::kBF16) {
    const bf16* wd = w.weight.data<bf16>();
    parallel_for(n_out, 64, [&](int64_t nb, int64_t ne) {
      for (int64_t n = nb; n < ne; ++n) {
        for (int64_t t = 0; t < tokens; ++t) store(t, n, dot_f32_bf16(xd + t * xs, wd + n * k, k));
      }
    });
    return;
  }
  parallel_for(tasks, 1, [&](int64_t tb, int64_t te) {
    std::vector<float> rows(kRowsPerTask * k);
    for (int64_t task = tb; task < te; ++task) {
      const int64_t n0 = task * kRowsPerTask, n1 = std::min(n_out, n0 + kRowsPerTask);
      for (int64_t n = n0; n < n1; ++n) weight_row_f32(w, n, rows.data() + (n - n0) * k);
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xr = xd + t * xs;
        for (int64_t n = n0; n < n1; ++n) store(t, n, dot_f32(xr, rows.data() + (n - n0) * k, k));
      }
    }
  });
}

void head_matmul(const Tensor& x, const HeadWeight& hw, Tensor& out) {
  const Tensor& w = hw.weight;
  const int64_t tokens = x.size(0), heads = x.size(1), n_out = w.size(1), k = w.size(2);
  const int64_t b = LinearWeight::kBlock;
  // bf16 x: each (token, head) row widened once (exact), then the f32 path's dot products.
  Tensor xf;
  if (x.dtype() == DType::kBF16) {
    xf = Tensor::empty({tokens, heads, k}, DType::kF32);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < heads; ++h)
        load_row_f32(x.raw_data(), DType::kBF16, t * x.stride(0) + h * x.stride(1), k,
                     xf.data<float>() + (t * heads + h) * k);
  }
  const Tensor& xs = x.dtype() == DType::kBF16 ? xf : x;
  parallel_for(heads * n_out, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(w.dtype() == DType::kF8E4M3 ? k : 0);
    for (int64_t hn = begin; hn < end; ++hn) {
      const int64_t h = hn / n_out, n = hn % n_out, offset = (h * n_out + n) * k;
      if (!row.empty()) {  // fp8: the row times its block scales, one f32 product each, as linear
        load_row_f32(w.raw_data(), w.dtype(), offset, k, row.data());
        const float* scale = hw.scale_inv.data<float>() +
                             (h * hw.scale_inv.size(1) + n / b) * hw.scale_inv.size(2);
        for (int64_t j = 0; j < k; ++j) row[j] *= scale[j / b];
      }
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xr = xs.data<float>() + t * xs.stride(0) + h * xs.stride(1);
        float& o = out.data<float>()[t * out.stride(0) + h * out.stride(1) + n];
        switch (w.dtype()) {
          case DType::kBF16: o = dot_f32_bf16(xr, w.data<bf16>() + offset, k); break;
          case DType::kF32: o = dot_f32(xr, w.data<float>() + offset, k); break;
          default: o = dot_f32(xr, row.data(), k); break;
        }
      }
    }
  });
}

}  // namespace tandem::ops::cpu
