// Host launchers of smxx_rows.cu: embedding, gather_rows, scatter_add_rows, kv_store.
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/host_common.h"

namespace tandem::ops::cuda {

namespace {

void gather(const Tensor& src, const Tensor& index, Tensor& out, int32_t error_code,
            const char* op) {
  TANDEM_CHECK(src.stride(1) == 1 && out.stride(1) == 1, "{}: rows must be contiguous", op);
  OpContext ctx(out);
  GatherRowsParams p{};
  p.src = src.raw_data();
  p.src_dtype = src.dtype();
  p.src_rows = src.size(0);
  p.src_stride = src.stride(0);
  p.index = cptr<int32_t>(index);
  p.n = index.size(0);
  p.width = src.size(1);
  p.out = out.raw_data();
  p.out_dtype = out.dtype();
  p.out_stride = out.stride(0);
  p.error_code = error_code;
  p.error = ctx.error;
  launch_gather_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK(op);
}

}  // namespace

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  gather(table, ids, out, kErrEmbeddingId, "embedding");
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  gather(src, index, out, kErrGatherIndex, "gather_rows");
}

void convert(const Tensor& src, Tensor& out) {
  TANDEM_CHECK(src.stride(1) == 1 && out.stride(1) == 1, "convert: rows must be contiguous");
  OpContext ctx(out);
  CastRowsParams p{};
  p.src = src.raw_data();
  p.src_dtype = src.dtype();
  p.src_stride = src.stride(0);
  p.dst = out.raw_data();
  p.dst_dtype = out.dtype();
  p.dst_stride = out.stride(0);
  p.rows = src.size(0);
  p.cols = src.size(1);
  launch_cast_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("convert");
}

void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, Tensor& out) {
  OpContext ctx(out);
  ScatterAddRowsParams p{};
  p.src = src.raw_data();
  p.src_dtype = src.dtype();
  p.src_stride = src.stride(0);
  p.index = cptr<int32_t>(index);
  p.weight = cptr<float>(weight);
  p.n = src.size(0);
  p.width = src.size(1);
  p.out = mptr<float>(out);
  p.out_stride = out.stride(0);
  p.out_rows = out.size(0);
  p.error = ctx.error;
  launch_scatter_add_rows(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("scatter_add_rows");
}

void kv_store(const Tensor& latent, const Tensor& k_pe, const Tensor& slots, Tensor& cache) {
  OpContext ctx(cache);
  KvStoreParams p{};
  p.latent = latent.raw_data();
  p.latent_dtype = latent.dtype();
  p.latent_stride = latent.stride(0);
  p.k_pe = k_pe.raw_data();
  p.k_pe_dtype = k_pe.dtype();
  p.k_pe_stride = k_pe.stride(0);
  p.slots = cptr<int32_t>(slots);
  p.tokens = latent.size(0);
  p.lora = latent.size(1);
  p.rope = k_pe.size(1);
  p.cache = cache.raw_data();
  p.cache_dtype = cache.dtype();
  p.num_slots = cache.size(0);
  p.error = ctx.error;
  launch_kv_store(p, ctx.stream);
  TANDEM_CUDA_LAUNCH_CHECK("kv_store");
}

}  // namespace tandem::ops::cuda
