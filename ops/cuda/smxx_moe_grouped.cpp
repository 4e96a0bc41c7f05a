// Host launchers of smxx_moe_grouped.cu: the expert address table and moe_experts on the
// device (sort by expert, gate/up GEMM with SiLU-and-mul, down GEMM, weighted un-permute).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/cuda/cublaslt_fp8_gemm.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {

constexpr int64_t kMaxGroupedExperts = 1024;  // moe_align's one-block scan

std::atomic<bool> g_fp8_mma{[] {
  const char* env = std::getenv("TANDEM_MOE_FP8_MMA");
  return env && std::strcmp(env, "1") == 0;
}()};

// Whether a GEMM of the experts takes the FP8-activation kernel: the linear's rule for its FP8
// GEMM (and the CPU twin's, ops/cpu/fp8_quant.h), so a reference in FP8-activation mode
// quantizes exactly the same activations.
bool fp8_act_gemm(DType wdt, int64_t n, int64_t k) {
  return g_fp8_mma.load() && linear_fp8_mode() == LinearFp8Mode::kBlockFp8 &&
         wdt == DType::kF8E4M3 && k >= LinearWeight::kFp8GemmMinK && k % LinearWeight::kBlock == 0 &&
         n % LinearWeight::kBlock == 0;
}

// x [m, k] quantized per row and 128 columns: e4m3 [m, k] and f32 scales [m, k / 128].
struct QuantizedRows {
  Tensor q, scale;
};
QuantizedRows quantize_rows(const Tensor& x, const OpContext& ctx) {
  QuantizedRows r{Tensor::empty({x.size(0), x.size(1)}, DType::kF8E4M3, x.device()),
                  Tensor::empty({x.size(0), x.size(1) / LinearWeight::kBlock}, DType::kF32, x.device())};
  quantize_fp8_rows(x.raw_data(), x.dtype(), x.stride(0), x.size(0), x.size(1), r.q.raw_data(),
                    mptr<float>(r.scale), Fp8ActScaleLayout::kKMajor, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_experts (quantize)");
  return r;
}

// The tiled FP8 kernel (64 rows of an expert per CTA, the weights read once per tile) where
// experts get many rows, as in prefill: TANDEM_MOE_FP8_TILED=1 always, =0 never, else when the
// experts that can have rows average at least kTiledMinRows of them.
constexpr int64_t kTiledMinRows = 32;
bool use_tiled(int64_t pairs, int64_t groups) {
  const char* env = std::getenv("TANDEM_MOE_FP8_TILED");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  return pairs >= kTiledMinRows * groups;
}

void set_fp8_act(MoeGroupedGemmParams& g, const QuantizedRows& r) {
  g.fp8_act = true;
  g.a = r.q.raw_data();
  g.a_stride = r.q.stride(0);
  g.a_scale = cptr<float>(r.scale);
  g.a_scale_stride = r.scale.stride(0);
}


int64_t address(const Tensor& t) {
  return t.defined() ? int64_t(reinterpret_cast<uintptr_t>(t.raw_data())) : 0;
}

}  // namespace

constexpr int64_t kMaxSplits = 32;

void plan_fp8_splits(MoeGroupedGemmParams& g, int64_t groups, int64_t rows, int device, Tensor& partial) {
  const int64_t kblocks = g.k / LinearWeight::kBlock;
  const int64_t ctas = std::max<int64_t>(1, groups * ((g.n + 127) / 128));
  const int64_t fill = (2 * sm_count(device) + ctas - 1) / ctas;  // splits for 2 CTAs per SM
  const int64_t want = std::max<int64_t>(1, std::min({fill, kblocks, kMaxSplits}));
  const int64_t per = (kblocks + want - 1) / want;
  g.splits = int((kblocks + per - 1) / per);
  g.partial = nullptr;
  if (g.splits == 1) return;
  partial = Tensor::empty({g.splits, rows, (g.gate_up ? 2 : 1) * g.n}, DType::kF32, Device::cuda(device));
  g.partial = mptr<float>(partial);
  g.partial_rows = rows;
}

void set_moe_fp8_mma(bool on) { g_fp8_mma.store(on); }
bool moe_fp8_mma() { return g_fp8_mma.load(); }

Tensor make_expert_table(const ExpertWeights& ex) {
  const int64_t experts = ex.num_experts();
  std::vector<int64_t> rows(size_t(6 * experts), 0);
  for (int64_t e = 0; e < experts; ++e) {
    const size_t i = size_t(e);
    rows[i] = address(ex.gate[i].weight);
    rows[size_t(experts) + i] = address(ex.up[i].weight);
    rows[size_t(2 * experts) + i] = address(ex.down[i].weight);
    rows[size_t(3 * experts) + i] = address(ex.gate[i].scale_inv);
    rows[size_t(4 * experts) + i] = address(ex.up[i].scale_inv);
    rows[size_t(5 * experts) + i] = address(ex.down[i].scale_inv);
  }
  return Tensor::from_vector(rows, {6, experts}).to(ex.gate[0].weight.device());
}

bool moe_experts_grouped(const Tensor& x, const Tensor& ids, const Tensor& weights,
                         const ExpertWeights& ex, Tensor& out) {
  const DType wdt = ex.gate[0].weight.dtype();
  const int64_t tokens = x.size(0), hidden = x.size(1), top_k = ids.size(1);
  const int64_t inter = ex.gate[0].out_features(), experts = ex.num_experts();
  // Where the kernels do not apply, moe_experts takes the per-expert path.
  if (x.dtype() != DType::kBF16 || wdt == DType::kF32 || !ex.table.defined()) return false;
  if (hidden % 64 != 0 || inter % 64 != 0 || experts > kMaxGroupedExperts) return false;
  if (x.stride(0) % 8 != 0 || reinterpret_cast<uintptr_t>(x.raw_data()) % 16 != 0) return false;
  if (ids.stride(0) != top_k) return false;

  OpContext ctx(out);
  const Device dev = x.device();
  const int64_t pairs = tokens * top_k;
  Tensor offsets = Tensor::empty({experts + 1}, DType::kI32, dev);
  Tensor sorted_rows = Tensor::empty({pairs}, DType::kI32, dev);
  Tensor slot_of = Tensor::empty({pairs}, DType::kI32, dev);
  MoeAlignParams al{};
  al.ids = cptr<int32_t>(ids);
  al.ids_stride = ids.stride(0);
  al.tokens = tokens;
  al.top_k = top_k;
  al.experts = experts;
  al.offsets = mptr<int32_t>(offsets);
  al.sorted_rows = mptr<int32_t>(sorted_rows);
  al.slot_of = mptr<int32_t>(slot_of);
  al.error = ctx.error;
  launch_moe_align(al, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_experts (align)");

  const uint64_t* table = cptr<uint64_t>(ex.table);
  Tensor h = Tensor::empty({pairs, inter}, DType::kBF16, dev);
  MoeGroupedGemmParams g1{};
  g1.a = x.raw_data();
  g1.a_stride = x.stride(0);
  g1.row_index = cptr<int32_t>(sorted_rows);
  g1.offsets = cptr<int32_t>(offsets);
  g1.w0 = table;
  g1.w1 = table + experts;
  g1.s0 = table + 3 * experts;
  g1.s1 = table + 4 * experts;
  g1.w_dtype = wdt;
  g1.n = inter;
  g1.k = hidden;
  g1.experts = experts;
  g1.out = h.raw_data();
  g1.out_stride = h.stride(0);
  g1.gate_up = true;
  g1.splits = 1;
  // At most this many experts have rows: the K splits fill the machine at small batches.
  const int64_t groups = std::min(experts, pairs);
  QuantizedRows xq;
  Tensor partial1, partial2, tiles, tile_count;
  const bool fp8_gate_up = fp8_act_gemm(wdt, inter, hidden), fp8_down = fp8_act_gemm(wdt, hidden, inter);
  if ((fp8_gate_up || fp8_down) && use_tiled(pairs, groups)) {
    const int64_t max_tiles = (pairs + kMoeTileRows - 1) / kMoeTileRows + experts;
    tiles = Tensor::empty({max_tiles}, DType::kI32, dev);
    tile_count = Tensor::empty({1}, DType::kI32, dev);
    launch_moe_tiles(cptr<int32_t>(offsets), experts, mptr<int32_t>(tiles), mptr<int32_t>(tile_count),
                     ctx.stream);
    TANDEM_CUDA_LAUNCH_CHECK("moe_experts (tiles)");
  }
  // The tiled kernel where the tile list exists, else K splits for the streaming one.
  auto plan = [&](MoeGroupedGemmParams& g, Tensor& partial) {
    if (tiles.defined()) {
      g.tiles = cptr<int32_t>(tiles);
      g.tile_count = cptr<int32_t>(tile_count);
      g.max_tiles = tiles.size(0);
    } else {
      plan_fp8_splits(g, groups, pairs, ctx.device, partial);
    }
  };
  if (fp8_gate_up) {
    xq = quantize_rows(x, ctx);  // once per token; the kernel gathers rows and scales
    set_fp8_act(g1, xq);
    plan(g1, partial1);
  }
  launch_moe_grouped_gemm(g1, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_experts (gate/up)");

  Tensor y = Tensor::empty({pairs, hidden}, DType::kF32, dev);
  MoeGroupedGemmParams g2 = g1;
  g2.fp8_act = false;
  g2.a = h.raw_data();
  g2.a_stride = h.stride(0);
  g2.a_scale = nullptr;
  g2.row_index = nullptr;
  g2.w0 = table + 2 * experts;
  g2.w1 = nullptr;
  g2.s0 = table + 5 * experts;
  g2.s1 = nullptr;
  g2.n = hidden;
  g2.k = inter;
  g2.out = y.raw_data();
  g2.out_stride = y.stride(0);
  g2.gate_up = false;
  g2.out_dtype = DType::kF32;
  g2.splits = 1;
  g2.partial = nullptr;
  g2.tiles = nullptr;
  QuantizedRows hq;
  if (fp8_down) {
    hq = quantize_rows(h, ctx);
    set_fp8_act(g2, hq);
    plan(g2, partial2);
  }
  launch_moe_grouped_gemm(g2, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_experts (down)");

  MoeUnpermuteParams un{};
  un.y = cptr<float>(y);
  un.y_stride = y.stride(0);
  un.slot_of = cptr<int32_t>(slot_of);
  un.weights = cptr<float>(weights);
  un.weights_stride = weights.stride(0);
  un.out = mptr<float>(out);
  un.out_stride = out.stride(0);
  un.tokens = tokens;
  un.top_k = top_k;
  un.width = hidden;
  launch_moe_unpermute(un, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("moe_experts (un-permute)");
  return true;
}

}  // namespace tandem::ops::cuda
