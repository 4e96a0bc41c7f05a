// Kernel parameter structs and launchers: the boundary between the host launchers
// (smxx_*.cpp, which validate Tensors and fill these structs) and the kernels (smxx_*.cu,
// compiled by nvcc without core's tensor/fmt headers, which keeps CUDA compile time down).
// Strides are in elements. Pointers are device pointers. All launches go on `stream`.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace tandem::ops::cuda {

// A kernel that finds a bad index (token id, row index, cache slot, sequence length) records
// the first one here and skips the element; the host throws at its next synchronization.
enum KernelErrorCode : int32_t {
  kErrNone = 0,
  kErrEmbeddingId,
  kErrGatherIndex,
  kErrScatterIndex,
  kErrKvSlot,
  kErrDecodeSeqLen,
  kErrDecodeSlot,
  kErrPrefillLengths,
  kErrExpertId,
  kErrPenaltyToken,
};
struct KernelErrorWord {
  int32_t code;      // KernelErrorCode of the first error, 0 when none
  int32_t unused;
  int64_t value;     // the bad value
  int64_t bound;     // the valid range was [0, bound) (or [1, bound] for lengths)
  int64_t position;  // where in the index tensor
};
const char* kernel_error_name(int32_t code);

// out[i, :] = f32(src[index[i], :]) (embedding and gather_rows).
struct GatherRowsParams {
  const void* src; DType src_dtype;  // [src_rows, width], contiguous rows of src_stride
  int64_t src_rows, src_stride;
  const int32_t* index;              // [n]
  int64_t n, width;
  void* out; DType out_dtype; int64_t out_stride;  // [n, width], f32 | bf16
  int32_t error_code;                // kErrEmbeddingId or kErrGatherIndex
  KernelErrorWord* error;
};
void launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream);

// out[index[i], :] += weight[i] * src[i, :].
struct ScatterAddRowsParams {
  const void* src; DType src_dtype; int64_t src_stride;  // [n, width], f32 | bf16
  const int32_t* index;                  // [n]
  const float* weight;                   // [n]
  int64_t n, width;
  float* out; int64_t out_stride, out_rows;  // [out_rows, width]
  KernelErrorWord* error;
};
void launch_scatter_add_rows(const ScatterAddRowsParams& p, cudaStream_t stream);

// cache[slot[t], :] = concat(latent[t, :], k_pe[t, :]) converted to the cache dtype.
struct KvStoreParams {
  const void* latent; DType latent_dtype; int64_t latent_stride;  // [T, lora], f32 | bf16
  const void* k_pe; DType k_pe_dtype; int64_t k_pe_stride;        // [T, rope], f32 | bf16
  const int32_t* slots;                        // [T]
  int64_t tokens, lora, rope;
  void* cache; DType cache_dtype; int64_t num_slots;  // [num_slots, lora + rope], contiguous
  KernelErrorWord* error;
};
void launch_kv_store(const KvStoreParams& p, cudaStream_t stream);

// out = x / rms(x) * weight; with residual: residual += x first and normalize the sum.
struct RmsNormParams {
  const void* x; DType x_dtype; int64_t x_stride;  // [rows, n], f32 | bf16
  float* residual; int64_t residual_stride;  // [rows, n] or nullptr
  const void* weight; DType weight_dtype;  // [n]
  void* out; DType out_dtype; int64_t out_stride;  // [rows, n], f32 | bf16; may alias x
  int64_t rows, n;
  float eps;
};
void launch_rms_norm(const RmsNormParams& p, cudaStream_t stream);

// Rotary embedding in place.
struct RopeParams {
  void* x; DType x_dtype; int64_t stride_t, stride_h;  // [T, heads, dim] f32 | bf16, last dim contiguous
  const int32_t* positions;              // [T]
  const float* inv_freq;                 // [dim / 2]
  int64_t tokens, heads, dim;
  float attention_factor;
  bool interleave;
};
void launch_rope(const RopeParams& p, cudaStream_t stream);

// out = silu(gate) * up; gate_up rows are [gate | up].
struct SiluAndMulParams {
  const void* gate_up; DType in_dtype; int64_t in_stride;  // [rows, 2n], f32 | bf16
  void* out; DType out_dtype; int64_t out_stride;          // [rows, n], f32 | bf16
  int64_t rows, n;
};
void launch_silu_and_mul(const SiluAndMulParams& p, cudaStream_t stream);

// ops::fill_random: 4 elements (one splitmix64 draw) per thread.
struct FillRandomParams {
  void* out; DType dtype; int64_t numel;
  uint64_t key; float amplitude, offset;
};
void launch_fill_random(const FillRandomParams& p, cudaStream_t stream);

// MoE gate, one block per token.
struct MoeRouteParams {
  const float* logits; int64_t logits_stride;  // [T, E]
  const float* bias;                           // [E] or nullptr
  int32_t* topk_ids; int64_t ids_stride;       // [T, k]
  float* topk_weights; int64_t weights_stride; // [T, k]
  int64_t tokens, experts, top_k, n_group, topk_group;
  bool sigmoid, group_by_top2, grouped, norm_topk_prob;
  float routed_scaling_factor;
};
void launch_moe_route(const MoeRouteParams& p, cudaStream_t stream);

// dst[r, c] = src[r, c] converted between f32 and bf16 (round to nearest even).
struct CastRowsParams {
  const void* src; DType src_dtype; int64_t src_stride;  // [rows, cols]
  void* dst; DType dst_dtype; int64_t dst_stride;        // [rows, cols]
  int64_t rows, cols;
};
void launch_cast_rows(const CastRowsParams& p, cudaStream_t stream);

// Grouped MoE experts (smxx_moe_grouped.cu). Pairs (token t, slot j) sorted by expert:
// counts and offsets per expert, the token of every sorted position, the sorted position of
// every pair (-1 for a bad id, reported as kErrExpertId).
struct MoeAlignParams {
  const int32_t* ids; int64_t ids_stride;  // [T, k]
  int64_t tokens, top_k, experts;
  int32_t* offsets;      // [E + 1]
  int32_t* sorted_rows;  // [T * k]
  int32_t* slot_of;      // [T * k]
  KernelErrorWord* error;
};
void launch_moe_align(const MoeAlignParams& p, cudaStream_t stream);

// out[r, :] over the sorted rows r of each expert e (offsets[e] <= r < offsets[e + 1]):
//  gate_up: out = bf16(silu(A[r] W0[e]^T) * (A[r] W1[e]^T))   (W0 gate, W1 up)
//  else:    out = f32(A[r] W0[e]^T)
// A[r] is a[row_index[r]] (or a[r] without row_index), bf16 rows. W: bf16 or e4m3 [n, k]
// with f32 scales [ceil(n/128), ceil(k/128)]; k a multiple of 64.
// fp8_act: A rows are e4m3 with f32 scales a_scale[row * a_scale_stride + k / 128] (the FP8
// linear's 1x128 quantization), W e4m3, k and n multiples of 128. Only there: no offsets means
// one group of rows [0, rows) and the weight w_dense / s_dense (w0 = s0 = nullptr; linear at
// decode sizes); splits > 1 splits K into that many ranges of whole 128-blocks, whose sums go to
// partial (f32 [splits][partial_rows][(gate_up ? 2 : 1) * n]) and are added up by a second
// kernel in split order.
struct MoeGroupedGemmParams {
  const void* a; int64_t a_stride;     // bf16, or e4m3 with fp8_act
  const float* a_scale; int64_t a_scale_stride;  // fp8_act only
  bool fp8_act;
  const int32_t* row_index;            // [rows] or nullptr
  const int32_t* offsets;              // [E + 1], or nullptr (fp8_act: one group of `rows`)
  int32_t rows;
  const uint64_t* w0; const uint64_t* w1;  // [E] weight addresses (w1 nullptr unless gate_up)
  const uint64_t* s0; const uint64_t* s1;  // [E] scale addresses (fp8 only)
  const void* w_dense; const float* s_dense;  // without w0 / s0
  // Batched dense (no w0 / offsets, bf16 rows: head_matmul): group e reads rows [0, rows) at
  // a + e * a_group_stride, weights and scales e * w_group_stride / s_group_stride further, and
  // writes out + e * out_group_stride (elements).
  int64_t a_group_stride, w_group_stride, s_group_stride, out_group_stride;
  DType w_dtype;
  int64_t n, k, experts;
  void* out; int64_t out_stride;       // bf16 (gate_up), else out_dtype
  DType out_dtype;                     // f32 | bf16 (not gate_up)
  bool gate_up;
  int splits;                          // >= 1
  float* partial; int64_t partial_rows;  // splits > 1
  // fp8_act with offsets: the tiled kernel (64 rows of one expert per CTA) over the tile list
  // of launch_moe_tiles (tiles[i] for i < *tile_count <= max_tiles), else nullptr.
  const int32_t* tiles; const int32_t* tile_count; int64_t max_tiles;
};
void launch_moe_grouped_gemm(const MoeGroupedGemmParams& p, cudaStream_t stream);
// The tile list of the tiled FP8 kernel: for every 64 rows of every expert (offsets [E + 1]),
// tiles[i] = expert << 16 | tile within the expert; *tile_count of them, at most
// ceil(rows / 64) + E. Experts <= 1024, tiles per expert < 65536.
void launch_moe_tiles(const int32_t* offsets, int64_t experts, int32_t* tiles, int32_t* tile_count,
                      cudaStream_t stream);
constexpr int64_t kMoeTileRows = 64;

// out[t, :] += sum_j weights[t, j] * y[slot_of[t * k + j], :] (j in order; slot -1 skipped).
struct MoeUnpermuteParams {
  const float* y; int64_t y_stride;       // [T * k, H]
  const int32_t* slot_of;                 // [T * k]
  const float* weights; int64_t weights_stride;  // [T, k]
  float* out; int64_t out_stride;         // [T, H]
  int64_t tokens, top_k, width;
};
void launch_moe_unpermute(const MoeUnpermuteParams& p, cudaStream_t stream);

// Batched out[z] = x[z] @ W[z]^T with f32 activations and accumulation. W is f32, bf16 or
// fp8 e4m3 with one f32 scale per 128x128 block (scale_inv[n / 128][k / 128]).
struct GemmParams {
  const float* x; int64_t x_stride, x_batch_stride;  // [batch][M, K], rows strided
  const void* w; DType w_dtype;                      // [batch][N, K], contiguous rows
  int64_t w_stride, w_batch_stride;
  const float* scale_inv; int64_t scale_stride;      // fp8 only: [batch][ceil(N/128), ceil(K/128)]
  int64_t scale_batch_stride;
  float* out; int64_t out_stride, out_batch_stride;  // [batch][M, N]
  int64_t m, n, k, batch;
};
void launch_gemm_f32(const GemmParams& p, cudaStream_t stream);

// Causal variable-length attention over per-head expanded keys (MLA prefill).
struct MlaPrefillParams {
  const void* q;      // [T, H, nope + rope], contiguous
  const void* kv;     // [L, H, nope + v], contiguous
  const void* k_pe; int64_t k_pe_stride;  // [L, rope]
  DType in_dtype;     // of q, kv and k_pe: f32 | bf16
  const int32_t* cu_q; const int32_t* cu_kv;  // [B + 1]
  void* out; DType out_dtype;  // [T, H, v], contiguous, f32 | bf16
  int64_t tokens, kv_rows, batch, heads, nope, rope, v;
  float scale;
  KernelErrorWord* error;
};
void launch_mla_prefill(const MlaPrefillParams& p, cudaStream_t stream);  // SIMT, any dims
// The tensor-core path (smxx_mla_prefill.cu): bf16 inputs, nope = v = 128, rope = 64,
// 16-byte aligned rows.
bool mla_prefill_mma_supported(const MlaPrefillParams& p);
void launch_mla_prefill_mma(const MlaPrefillParams& p, cudaStream_t stream);
// The wgmma + TMA path (sm90_mla_prefill.cu), opt-in with TANDEM_MLA_PREFILL_WGMMA=1 where the
// tensor-core path applies and the driver encodes tensor maps; launch returns false (nothing
// queued) if the driver refuses a map.
bool mla_prefill_wgmma_enabled(const MlaPrefillParams& p);
bool launch_mla_prefill_wgmma(const MlaPrefillParams& p, cudaStream_t stream);

// Absorbed MLA decode over the paged latent cache, split over the KV length; partial results
// go to `workspace` and a second kernel combines them.
struct MlaDecodeParams {
  const float* q_latent; int64_t ql_stride_b, ql_stride_h;  // [B, H, lora]
  const float* q_pe; int64_t qp_stride_b, qp_stride_h;      // [B, H, rope]
  const void* cache; DType cache_dtype; int64_t num_slots;  // [num_slots, lora + rope]
  const int32_t* page_table; int64_t max_pages;             // [B, max_pages], contiguous rows
  const int32_t* seq_lens;                                  // [B]
  float* out; int64_t out_stride_b, out_stride_h;           // [B, H, lora]
  int64_t batch, heads, lora, rope, page_size;
  float scale;
  int num_splits;         // key ranges per (b, h)
  float* workspace;       // [B, H, num_splits, lora + 2] (partial out, max, sum)
  KernelErrorWord* error;
};
// Splits for a batch whose longest possible sequence is `max_len` keys.
int mla_decode_num_splits(int64_t max_len);
void launch_mla_decode(const MlaDecodeParams& p, cudaStream_t stream);
// The tensor-core path (sm90_mla_decode.cu): bf16 cache, lora 512, rope 64, aligned pointers.
// One CTA per (group of mla_decode_mma_heads_per_cta heads, split, sequence); the workspace is
// needed only when num_splits > 1.
bool mla_decode_mma_supported(const MlaDecodeParams& p);
int mla_decode_mma_heads_per_cta(const MlaDecodeParams& p);
void launch_mla_decode_mma(const MlaDecodeParams& p, cudaStream_t stream);

}  // namespace tandem::ops::cuda
