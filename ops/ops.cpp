// Validation and dispatch of every op (see ops.h). The checks live here once for all backends.
#include "ops/ops.h"

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/sampling.h"
#ifdef TANDEM_WITH_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

namespace tandem::ops {

namespace {


void expect(const Tensor& t, const char* op, const char* name, int ndim,
            std::initializer_list<DType> dtypes) {
  TANDEM_CHECK(t.defined(), "{}: {} is undefined", op, name);
  TANDEM_CHECK(t.dim() == ndim, "{}: {} must be {}-d, got {}", op, name, ndim, t.describe());
  bool ok = false;
  for (DType d : dtypes) ok |= t.dtype() == d;
  TANDEM_CHECK(ok, "{}: {} has unsupported dtype, got {}", op, name, t.describe());
  TANDEM_CHECK(t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) == 1,
               "{}: {} must be contiguous in its last dimension, got strides {}", op, name,
               shape_str(t.strides()));
}

void expect_shape(const Tensor& t, const char* op, const char* name, const Shape& shape) {
  TANDEM_CHECK(t.shape() == shape, "{}: {} must be {}, got {}", op, name, shape_str(shape),
               t.describe());
}

// All tensors of one op live on one device; returns it.
Device same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  Device d = (*tensors.begin())->device();
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    TANDEM_CHECK(t->device() == d, "{}: tensors on different devices ({} and {})", op, d.name(),
                 t->device().name());
  }
  return d;
}

[[noreturn, maybe_unused]] void no_backend(const char* op, Device d) {
  TANDEM_FAIL("{}: no kernel for device {} in this build", op, d.name());
}

}  // namespace

#ifdef TANDEM_WITH_CUDA
#define TANDEM_DISPATCH(op, dev, ...)            \
  do {                                           \
    if ((dev).is_cpu()) return cpu::op(__VA_ARGS__);  \
    return cuda::op(__VA_ARGS__);                \
  } while (0)
#else
#define TANDEM_DISPATCH(op, dev, ...)            \
  do {                                           \
    if ((dev).is_cpu()) return cpu::op(__VA_ARGS__);  \
    no_backend(#op, dev);                        \
  } while (0)
#endif

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  expect(ids, "embedding", "ids", 1, {DType::kI32});
  expect(table, "embedding", "table", 2, {DType::kF32, DType::kBF16});
  expect(out, "embedding", "out", 2, {DType::kF32});
  expect_shape(out, "embedding", "out", {ids.size(0), table.size(1)});
  const Device d = same_device("embedding", {&ids, &table, &out});
  TANDEM_DISPATCH(embedding, d, ids, table, out);
}

void rms_norm(const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  expect(x, "rms_norm", "x", 2, {DType::kF32, DType::kBF16});
  expect(weight, "rms_norm", "weight", 1, {DType::kF32, DType::kBF16});
  expect(out, "rms_norm", "out", 2, {DType::kF32, DType::kBF16});
  expect_shape(weight, "rms_norm", "weight", {x.size(1)});
  expect_shape(out, "rms_norm", "out", x.shape());
  const Device d = same_device("rms_norm", {&x, &weight, &out});
  TANDEM_DISPATCH(rms_norm, d, x, weight, eps, out);
}

void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& weight, double eps,
                  Tensor& out) {
  expect(residual, "add_rms_norm", "residual", 2, {DType::kF32});
  expect(x, "add_rms_norm", "x", 2, {DType::kF32, DType::kBF16});
  expect(weight, "add_rms_norm", "weight", 1, {DType::kF32, DType::kBF16});
  expect(out, "add_rms_norm", "out", 2, {DType::kF32, DType::kBF16});
  expect_shape(x, "add_rms_norm", "x", residual.shape());
  expect_shape(weight, "add_rms_norm", "weight", {x.size(1)});
  expect_shape(out, "add_rms_norm", "out", x.shape());
  const Device d = same_device("add_rms_norm", {&residual, &x, &weight, &out});
  TANDEM_DISPATCH(add_rms_norm, d, residual, x, weight, eps, out);
}

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  expect(x, "linear", "x", 2, {DType::kF32, DType::kBF16});
  expect(w.weight, "linear", "weight", 2, {DType::kF32, DType::kBF16, DType::kF8E4M3});
  TANDEM_CHECK(w.weight.is_contiguous(), "linear: weight must be contiguous, got {}",
               w.weight.describe());
  expect(out, "linear", "out", 2, {DType::kF32, DType::kBF16});
  TANDEM_CHECK(x.size(1) == w.in_features(), "linear: x {} does not match weight {}",
               x.describe(), w.weight.describe());
  expect_shape(out, "linear", "out", {x.size(0), w.out_features()});
  if (w.is_fp8()) {
    const int64_t b = LinearWeight::kBlock;
    expect(w.scale_inv, "linear", "scale_inv", 2, {DType::kF32});
    expect_shape(w.scale_inv, "linear", "scale_inv",
                 {(w.out_features() + b - 1) / b, (w.in_features() + b - 1) / b});
  }
  const Device d = same_device("linear", {&x, &w.weight, &w.scale_inv, &out});
  TANDEM_DISPATCH(linear, d, x, w, out);
}

void head_matmul(const Tensor& x, const HeadWeight& w, Tensor& out) {
  const Tensor& wt = w.weight;
  expect(x, "head_matmul", "x", 3, {DType::kF32, DType::kBF16});
  expect(wt, "head_matmul", "w", 3, {DType::kF32, DType::kBF16, DType::kF8E4M3});
  expect(out, "head_matmul", "out", 3, {DType::kF32});
  TANDEM_CHECK(wt.is_contiguous(), "head_matmul: w must be contiguous");
  TANDEM_CHECK(x.size(1) == wt.size(0) && x.size(2) == wt.size(2),
               "head_matmul: x {} does not match w {}", x.describe(), wt.describe());
  expect_shape(out, "head_matmul", "out", {x.size(0), x.size(1), wt.size(1)});
  if (w.is_fp8()) {
    const int64_t b = LinearWeight::kBlock;
    expect(w.scale_inv, "head_matmul", "scale_inv", 3, {DType::kF32});
    TANDEM_CHECK(w.scale_inv.is_contiguous(), "head_matmul: scale_inv must be contiguous");
    expect_shape(w.scale_inv, "head_matmul", "scale_inv",
                 {wt.size(0), (wt.size(1) + b - 1) / b, (wt.size(2) + b - 1) / b});
  } else {
    TANDEM_CHECK(!w.scale_inv.defined(), "head_matmul: scale_inv is only for fp8 weights, w is {}",
                 dtype_name(wt.dtype()));
  }
  const Device d = same_device("head_matmul", {&x, &wt, &w.scale_inv, &out});
  TANDEM_DISPATCH(head_matmul, d, x, w, out);
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float attention_factor,
          bool interleave) {
  expect(x, "rope", "x", 3, {DType::kF32, DType::kBF16});
  expect(positions, "rope", "positions", 1, {DType::kI32});
  expect(inv_freq, "rope", "inv_freq", 1, {DType::kF32});
  expect_shape(positions, "rope", "positions", {x.size(0)});
  expect_shape(inv_freq, "rope", "inv_freq", {x.size(2) / 2});
  TANDEM_CHECK(x.size(2) % 2 == 0, "rope: rope_dim must be even, got {}", x.describe());
  const Device d = same_device("rope", {&x, &positions, &inv_freq});
  TANDEM_DISPATCH(rope, d, x, positions, inv_freq, attention_factor, interleave);
}

void silu_and_mul(const Tensor& gate_up, Tensor& out) {
  expect(gate_up, "silu_and_mul", "gate_up", 2, {DType::kF32, DType::kBF16});
  expect(out, "silu_and_mul", "out", 2, {DType::kF32, DType::kBF16});
  TANDEM_CHECK(gate_up.size(1) % 2 == 0, "silu_and_mul: gate_up width must be even, got {}",
               gate_up.describe());
  expect_shape(out, "silu_and_mul", "out", {gate_up.size(0), gate_up.size(1) / 2});
  const Device d = same_device("silu_and_mul", {&gate_up, &out});
  TANDEM_DISPATCH(silu_and_mul, d, gate_up, out);
}

void fill_random(Tensor& out, uint64_t key, float amplitude, float offset) {
  expect(out, "fill_random", "out", out.dim(), {DType::kF32, DType::kBF16, DType::kF8E4M3});
  TANDEM_CHECK(out.is_contiguous(), "fill_random: out must be contiguous, got {}", out.describe());
  TANDEM_CHECK(std::isfinite(amplitude) && std::isfinite(offset),
               "fill_random: amplitude {} and offset {} must be finite", amplitude, offset);
  if (out.numel() == 0) return;
  TANDEM_DISPATCH(fill_random, out.device(), out, key, amplitude, offset);
}

void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& p, Tensor& topk_ids,
               Tensor& topk_weights) {
  expect(logits, "moe_route", "logits", 2, {DType::kF32});
  const int64_t experts = logits.size(1);
  if (bias.defined()) {
    expect(bias, "moe_route", "bias", 1, {DType::kF32});
    expect_shape(bias, "moe_route", "bias", {experts});
  }
  expect(topk_ids, "moe_route", "topk_ids", 2, {DType::kI32});
  expect(topk_weights, "moe_route", "topk_weights", 2, {DType::kF32});
  expect_shape(topk_ids, "moe_route", "topk_ids", {logits.size(0), p.top_k});
  expect_shape(topk_weights, "moe_route", "topk_weights", {logits.size(0), p.top_k});
  TANDEM_CHECK(p.top_k >= 1 && p.top_k <= experts, "moe_route: top_k {} for {} experts", p.top_k,
               experts);
  if (p.grouped) {
    TANDEM_CHECK(p.n_group >= 1 && experts % p.n_group == 0 && p.topk_group >= 1 &&
                     p.topk_group <= p.n_group &&
                     p.top_k <= p.topk_group * (experts / p.n_group),
                 "moe_route: inconsistent groups (experts {}, n_group {}, topk_group {}, top_k {})",
                 experts, p.n_group, p.topk_group, p.top_k);
  }
  const Device d = same_device("moe_route", {&logits, &bias, &topk_ids, &topk_weights});
  TANDEM_DISPATCH(moe_route, d, logits, bias, p, topk_ids, topk_weights);
}

void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache) {
  expect(latent, "kv_store", "latent", 2, {DType::kF32, DType::kBF16});
  expect(k_pe, "kv_store", "k_pe", 2, {DType::kF32, DType::kBF16});
  expect(slots, "kv_store", "slots", 1, {DType::kI32});
  expect(cache, "kv_store", "cache", 2, {DType::kF32, DType::kBF16});
  TANDEM_CHECK(cache.is_contiguous(), "kv_store: cache must be contiguous");
  expect_shape(k_pe, "kv_store", "k_pe", {latent.size(0), k_pe.size(1)});
  expect_shape(slots, "kv_store", "slots", {latent.size(0)});
  TANDEM_CHECK(cache.size(1) == latent.size(1) + k_pe.size(1),
               "kv_store: cache width {} != kv_lora {} + rope {}", cache.size(1), latent.size(1),
               k_pe.size(1));
  const Device d = same_device("kv_store", {&latent, &k_pe, &slots, &cache});
  TANDEM_DISPATCH(kv_store, d, latent, k_pe, slots, cache);
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  expect(src, "gather_rows", "src", 2, {DType::kF32, DType::kBF16});
  expect(index, "gather_rows", "index", 1, {DType::kI32});
  expect(out, "gather_rows", "out", 2, {DType::kF32, DType::kBF16});
  TANDEM_CHECK(src.is_contiguous(), "gather_rows: src must be contiguous");
  expect_shape(out, "gather_rows", "out", {index.size(0), src.size(1)});
  const Device d = same_device("gather_rows", {&src, &index, &out});
  TANDEM_DISPATCH(gather_rows, d, src, index, out);
}

void convert(const Tensor& src, Tensor& out) {
  expect(src, "convert", "src", 2, {DType::kF32, DType::kBF16});
  expect(out, "convert", "out", 2, {DType::kF32, DType::kBF16});
  expect_shape(out, "convert", "out", src.shape());
  const Device d = same_device("convert", {&src, &out});
  TANDEM_DISPATCH(convert, d, src, out);
}

void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out) {
  expect(src, "scatter_add_rows", "src", 2, {DType::kF32, DType::kBF16});
  expect(index, "scatter_add_rows", "index", 1, {DType::kI32});
  expect(weight, "scatter_add_rows", "weight", 1, {DType::kF32});
  expect(out, "scatter_add_rows", "out", 2, {DType::kF32});
  expect_shape(index, "scatter_add_rows", "index", {src.size(0)});
  expect_shape(weight, "scatter_add_rows", "weight", {src.size(0)});
  TANDEM_CHECK(out.size(1) == src.size(1), "scatter_add_rows: src {} and out {} differ in width",
               src.describe(), out.describe());
  const Device d = same_device("scatter_add_rows", {&src, &index, &weight, &out});
  TANDEM_DISPATCH(scatter_add_rows, d, src, index, weight, out);
}

void prepare_experts(ExpertWeights& ex) {
  const char* op = "prepare_experts";
  const int64_t experts = ex.num_experts();
  TANDEM_CHECK(experts >= 1 && int64_t(ex.up.size()) == experts &&
                   int64_t(ex.down.size()) == experts,
               "{}: {} gate, {} up and {} down weights", op, ex.gate.size(), ex.up.size(),
               ex.down.size());
  const Tensor& first = ex.gate[0].weight;
  TANDEM_CHECK(first.defined() && first.dim() == 2, "{}: expert 0 gate weight is undefined", op);
  const int64_t inter = first.size(0), hidden = first.size(1);
  const DType dtype = first.dtype();
  const Device dev = first.device();
  const auto check = [&](const LinearWeight& w, const char* which, int64_t e, int64_t out_f,
                         int64_t in_f) {
    TANDEM_CHECK(w.weight.defined() && w.weight.dim() == 2 && w.weight.size(0) == out_f &&
                     w.weight.size(1) == in_f && w.weight.dtype() == dtype &&
                     w.weight.device() == dev && w.weight.is_contiguous(),
                 "{}: expert {} {} weight is {}, expected contiguous {} [{}, {}] on {}", op, e,
                 which, w.weight.defined() ? w.weight.describe() : "undefined", dtype_name(dtype),
                 out_f, in_f, dev.name());
    if (w.is_fp8()) {
      const int64_t b = LinearWeight::kBlock;
      TANDEM_CHECK(w.scale_inv.defined() && w.scale_inv.dtype() == DType::kF32 &&
                       (w.scale_inv.shape() == Shape({(out_f + b - 1) / b, (in_f + b - 1) / b})) &&
                       w.scale_inv.is_contiguous() && w.scale_inv.device() == dev,
                   "{}: expert {} {} scale_inv is {}", op, e, which,
                   w.scale_inv.defined() ? w.scale_inv.describe() : "undefined");
    }
  };
  for (int64_t e = 0; e < experts; ++e) {
    check(ex.gate[e], "gate", e, inter, hidden);
    check(ex.up[e], "up", e, inter, hidden);
    check(ex.down[e], "down", e, hidden, inter);
  }
#ifdef TANDEM_WITH_CUDA
  if (!dev.is_cpu()) ex.table = cuda::make_expert_table(ex);
#endif
}

void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                 const ExpertWeights& ex, Tensor& out) {
  const char* op = "moe_experts";
  expect(x, op, "x", 2, {DType::kF32, DType::kBF16});
  expect(ids, op, "ids", 2, {DType::kI32});
  expect(weights, op, "weights", 2, {DType::kF32});
  expect(out, op, "out", 2, {DType::kF32});
  const int64_t tokens = x.size(0), top_k = ids.size(1), experts = ex.num_experts();
  TANDEM_CHECK(experts >= 1, "{}: no experts", op);
  const int64_t inter = ex.gate[0].out_features();
  TANDEM_CHECK(ex.gate[0].in_features() == x.size(1), "{}: x {} for experts of width {}", op,
               x.describe(), ex.gate[0].in_features());
  expect_shape(ids, op, "ids", {tokens, top_k});
  expect_shape(weights, op, "weights", {tokens, top_k});
  expect_shape(out, op, "out", x.shape());
  const Device d = same_device(op, {&x, &ids, &weights, &out, &ex.gate[0].weight});
  if (tokens == 0) return;
#ifdef TANDEM_WITH_CUDA
  if (!d.is_cpu() && cuda::moe_experts_grouped(x, ids, weights, ex, out)) return;
#endif
  // Per expert on the host's view of the routing: gather its rows, run the MLP, scatter back.
  const Tensor ids_host = ids.to(Device::cpu()), weights_host = weights.to(Device::cpu());
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(experts));
  std::vector<std::vector<float>> row_weights(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t e = ids_host.data<int32_t>()[t * ids_host.stride(0) + j];
      TANDEM_CHECK(e >= 0 && e < experts, "{}: expert id {} at [{}, {}] outside [0, {})", op, e,
                   t, j, experts);
      rows[size_t(e)].push_back(int32_t(t));
      row_weights[size_t(e)].push_back(weights_host.data<float>()[t * weights_host.stride(0) + j]);
    }
  }
  const DType act = x.dtype();
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t n = int64_t(rows[size_t(e)].size());
    if (n == 0) continue;
    Tensor index = Tensor::from_vector(rows[size_t(e)], {n}).to(d);
    Tensor xe = Tensor::empty({n, x.size(1)}, act, d);
    gather_rows(x, index, xe);
    Tensor gate_up = Tensor::empty({n, 2 * inter}, act, d);
    Tensor gate = gate_up.slice(1, 0, inter), up = gate_up.slice(1, inter, 2 * inter);
    linear(xe, ex.gate[size_t(e)], gate);
    linear(xe, ex.up[size_t(e)], up);
    Tensor h = Tensor::empty({n, inter}, act, d);
    silu_and_mul(gate_up, h);
    Tensor ye = Tensor::empty({n, x.size(1)}, DType::kF32, d);
    linear(h, ex.down[size_t(e)], ye);
    scatter_add_rows(ye, index, Tensor::from_vector(row_weights[size_t(e)], {n}).to(d), out);
  }
}

void mla_prefill_attention(const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                           const Tensor& cu_q, const Tensor& cu_kv, float scale, Tensor& out) {
  const char* op = "mla_prefill_attention";
  expect(q, op, "q", 3, {DType::kF32, DType::kBF16});
  expect(kv, op, "kv", 3, {DType::kF32, DType::kBF16});
  expect(k_pe, op, "k_pe", 2, {DType::kF32, DType::kBF16});
  expect(cu_q, op, "cu_q", 1, {DType::kI32});
  expect(cu_kv, op, "cu_kv", 1, {DType::kI32});
  expect(out, op, "out", 3, {DType::kF32, DType::kBF16});
  TANDEM_CHECK(kv.dtype() == q.dtype() && k_pe.dtype() == q.dtype(),
               "{}: q, kv and k_pe must share one dtype (all f32 or all bf16), got q {}, kv {}, "
               "k_pe {}", op, dtype_name(q.dtype()), dtype_name(kv.dtype()),
               dtype_name(k_pe.dtype()));
  TANDEM_CHECK(q.is_contiguous() && kv.is_contiguous() && out.is_contiguous(),
               "{}: q, kv and out must be contiguous", op);
  const int64_t heads = q.size(1), rope_dim = k_pe.size(1);
  const int64_t nope = q.size(2) - rope_dim, v = kv.size(2) - nope;
  TANDEM_CHECK(nope > 0 && v > 0 && kv.size(1) == heads && k_pe.size(0) == kv.size(0),
               "{}: q {}, kv {}, k_pe {} do not fit together", op, q.describe(), kv.describe(),
               k_pe.describe());
  expect_shape(cu_kv, op, "cu_kv", cu_q.shape());
  expect_shape(out, op, "out", {q.size(0), heads, v});
  const Device d = same_device(op, {&q, &kv, &k_pe, &cu_q, &cu_kv, &out});
  TANDEM_DISPATCH(mla_prefill_attention, d, q, kv, k_pe, cu_q, cu_kv, scale, out);
}

void mla_decode_attention(const Tensor& q_latent, const Tensor& q_pe, const Tensor& cache,
                          const Tensor& page_table, const Tensor& seq_lens, int64_t page_size,
                          float scale, Tensor& out_latent) {
  const char* op = "mla_decode_attention";
  expect(q_latent, op, "q_latent", 3, {DType::kF32});
  expect(q_pe, op, "q_pe", 3, {DType::kF32});
  expect(cache, op, "cache", 2, {DType::kF32, DType::kBF16});
  expect(page_table, op, "page_table", 2, {DType::kI32});
  expect(seq_lens, op, "seq_lens", 1, {DType::kI32});
  expect(out_latent, op, "out_latent", 3, {DType::kF32});
  const int64_t batch = q_latent.size(0), heads = q_latent.size(1);
  expect_shape(q_pe, op, "q_pe", {batch, heads, q_pe.size(2)});
  TANDEM_CHECK(cache.size(1) == q_latent.size(2) + q_pe.size(2),
               "{}: cache width {} != kv_lora {} + rope {}", op, cache.size(1), q_latent.size(2),
               q_pe.size(2));
  expect_shape(seq_lens, op, "seq_lens", {batch});
  TANDEM_CHECK(page_table.size(0) == batch, "{}: page_table {} for batch {}", op,
               page_table.describe(), batch);
  TANDEM_CHECK(page_size >= 1, "{}: page_size must be positive", op);
  expect_shape(out_latent, op, "out_latent", q_latent.shape());
  const Device d = same_device(op, {&q_latent, &q_pe, &cache, &page_table, &seq_lens, &out_latent});
  TANDEM_DISPATCH(mla_decode_attention, d, q_latent, q_pe, cache, page_table, seq_lens, page_size,
                  scale, out_latent);
}

void sample_tokens(const Tensor& logits, const SamplingRows& rows, Tensor& tokens,
                   Tensor& logprobs) {
  const char* op = "sample_tokens";
  expect(logits, op, "logits", 2, {DType::kF32});
  const int64_t n = logits.size(0);
  TANDEM_CHECK(logits.size(1) >= 1 && logits.size(1) <= INT32_MAX, "{}: logits {} needs a vocab in [1, 2^31)",
               op, logits.describe());
  expect(rows.temperature, op, "temperature", 1, {DType::kF32});
  expect(rows.top_k, op, "top_k", 1, {DType::kI32});
  expect(rows.top_p, op, "top_p", 1, {DType::kF32});
  expect(rows.min_p, op, "min_p", 1, {DType::kF32});
  expect(rows.seed, op, "seed", 1, {DType::kI64});
  expect(rows.draw, op, "draw", 1, {DType::kI64});
  expect(tokens, op, "tokens", 1, {DType::kI32});
  expect(logprobs, op, "logprobs", 1, {DType::kF32});
  const std::pair<const Tensor*, const char*> per_row[] = {
      {&rows.temperature, "temperature"}, {&rows.top_k, "top_k"}, {&rows.top_p, "top_p"},
      {&rows.min_p, "min_p"}, {&rows.seed, "seed"}, {&rows.draw, "draw"},
      {&tokens, "tokens"}, {&logprobs, "logprobs"}};
  for (const auto& [t, name] : per_row) expect_shape(*t, op, name, {n});
  const Device d = same_device(op, {&logits, &rows.temperature, &rows.top_k, &rows.top_p,
                                    &rows.min_p, &rows.seed, &rows.draw, &tokens, &logprobs});
  if (n == 0) return;
  TANDEM_DISPATCH(sample_tokens, d, logits, rows, tokens, logprobs);
}

void top_logprobs(const Tensor& logits, Tensor& ids, Tensor& values) {
  const char* op = "top_logprobs";
  expect(logits, op, "logits", 2, {DType::kF32});
  TANDEM_CHECK(logits.stride(1) == 1, "{}: logits rows must be contiguous, got {}", op, logits.describe());
  expect(ids, op, "ids", 2, {DType::kI32});
  expect(values, op, "values", 2, {DType::kF32});
  const int64_t k = ids.size(1);
  TANDEM_CHECK(k >= 1 && k <= std::min<int64_t>(logits.size(1), kMaxTopLogprobs),
               "{}: k = {} must be in [1, min(vocab {}, {})]", op, k, logits.size(1), kMaxTopLogprobs);
  expect_shape(ids, op, "ids", {logits.size(0), k});
  expect_shape(values, op, "values", {logits.size(0), k});
  TANDEM_CHECK(ids.is_contiguous() && values.is_contiguous(), "{}: ids and values must be contiguous", op);
  const Device d = same_device(op, {&logits, &ids, &values});
  if (logits.size(0) == 0) return;
  TANDEM_DISPATCH(top_logprobs, d, logits, ids, values);
}

void apply_penalties(Tensor& logits, const PenaltyRows& rows) {
  const char* op = "apply_penalties";
  expect(logits, op, "logits", 2, {DType::kF32});
  TANDEM_CHECK(logits.stride(1) == 1, "{}: logits rows must be contiguous, got {}", op, logits.describe());
  const int64_t n = logits.size(0);
  expect(rows.offsets, op, "offsets", 1, {DType::kI32});
  expect(rows.tokens, op, "tokens", 1, {DType::kI32});
  expect(rows.counts, op, "counts", 1, {DType::kI32});
  expect(rows.repetition, op, "repetition", 1, {DType::kF32});
  expect(rows.frequency, op, "frequency", 1, {DType::kF32});
  expect(rows.presence, op, "presence", 1, {DType::kF32});
  expect_shape(rows.offsets, op, "offsets", {n + 1});
  expect_shape(rows.counts, op, "counts", rows.tokens.shape());
  for (const auto& [t, name] : {std::pair{&rows.repetition, "repetition"},
                                std::pair{&rows.frequency, "frequency"},
                                std::pair{&rows.presence, "presence"}})
    expect_shape(*t, op, name, {n});
  const Device d = same_device(op, {&logits, &rows.offsets, &rows.tokens, &rows.counts,
                                    &rows.repetition, &rows.frequency, &rows.presence});
  if (n == 0) return;
  TANDEM_DISPATCH(apply_penalties, d, logits, rows);
}

}  // namespace tandem::ops
