// Hopper (sm_90a) building blocks of the wgmma kernels (sm90_mla_decode.cu,
// sm90_mla_prefill.cu): 128-byte-swizzled shared-memory regions and their wgmma descriptors,
// wgmma fences and waits, mbarriers, TMA tensor-map copies, named barriers.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/mma.cuh"

namespace tandem::ops::cuda {

// ---- wgmma ----
// Operands in shared memory are "regions" of rows x 128 bytes (64 bf16), 1024-byte aligned, in
// the 128-byte swizzle: the 16-byte chunk c of row r lies at chunk c ^ (r % 8).
__device__ __forceinline__ int swizzled(int row, int chunk) {  // bf16 offset in a region
  return row * 64 + ((chunk ^ (row & 7)) << 3);
}
// K-major operand (rows of M or N, 16 K values per instruction in one row): 8-row groups 1024
// bytes apart. `p` points at the first row's first K value (region base + k * 32 bytes).
__device__ __forceinline__ uint64_t desc_k_major(const void* p) {
  return uint64_t((smem_u32(p) & 0x3FFFF) >> 4) | (uint64_t(1) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}
// N-major B (rows of K, N contiguous): 8-row K groups 1024 bytes apart (stride byte offset),
// the next 64 N columns in the next region, region_bytes further (leading byte offset; 8 KB for
// 64-row regions).
__device__ __forceinline__ uint64_t desc_n_major(const void* p, uint32_t region_bytes = 8192) {
  return uint64_t((smem_u32(p) & 0x3FFFF) >> 4) | (uint64_t(region_bytes >> 4) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Waits until at most N committed wgmma groups are in flight (groups retire in order).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// ---- bulk copies (the TMA engine) completing on an mbarrier ----
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of bulk copies completing on the barrier.
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// A 2-D box of the tensor map (coordinates: column, row) -> shared, completing on an mbarrier.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int col, int row,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(smem_u32(bar))
      : "memory");
}
// Waits for phase `parity` of an mbarrier. Bounded (~0.1 s; copies land in microseconds), so a
// copy that never lands (a bug) sets `lost`, which poisons the output with NaN, instead of
// hanging the GPU.
__device__ __forceinline__ void mbar_wait_bounded(uint64_t* bar, uint32_t parity, bool& lost) {
  const long long t0 = clock64();
  while (!lost && !mbar_try_wait(bar, parity))
    if (clock64() - t0 > (1ll << 28)) lost = true;
}

// Pins accumulator registers at this point of the program (the wgmma writes them asynchronously).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The swizzle is a function of the shared-memory address: a kernel's regions start at the first
// 1024-byte boundary of its dynamic shared memory (which is allocated 1024 bytes larger).
template <class T>
__device__ __forceinline__ T& align_1024(unsigned char* raw) {
  return *reinterpret_cast<T*>(raw + ((1024 - (smem_u32(raw) & 1023)) & 1023));
}

// The f32 accumulators of the wgmma forms the kernels use, as operands %0.. of the instruction
// text and their "+f" constraints: 128 (m64n256) and 64 (m64n128).
#define WGMMA_D128_REGS                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                      \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "             \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "             \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "             \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "             \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "             \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "  \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
#define WGMMA_D8_OUTS(d, i)                                                                      \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),      \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define WGMMA_D128_OUTS(d)                                                                       \
  WGMMA_D8_OUTS(d, 0), WGMMA_D8_OUTS(d, 8), WGMMA_D8_OUTS(d, 16), WGMMA_D8_OUTS(d, 24),           \
      WGMMA_D8_OUTS(d, 32), WGMMA_D8_OUTS(d, 40), WGMMA_D8_OUTS(d, 48), WGMMA_D8_OUTS(d, 56),     \
      WGMMA_D8_OUTS(d, 64), WGMMA_D8_OUTS(d, 72), WGMMA_D8_OUTS(d, 80), WGMMA_D8_OUTS(d, 88),     \
      WGMMA_D8_OUTS(d, 96), WGMMA_D8_OUTS(d, 104), WGMMA_D8_OUTS(d, 112), WGMMA_D8_OUTS(d, 120)

#define WGMMA_D64_REGS                                                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                      \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "             \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "             \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
#define WGMMA_D64_OUTS(d)                                                                        \
  WGMMA_D8_OUTS(d, 0), WGMMA_D8_OUTS(d, 8), WGMMA_D8_OUTS(d, 16), WGMMA_D8_OUTS(d, 24),                   \
      WGMMA_D8_OUTS(d, 32), WGMMA_D8_OUTS(d, 40), WGMMA_D8_OUTS(d, 48), WGMMA_D8_OUTS(d, 56)

// A thread of a two-warpgroup kernel: warpgroup wg, warp w4 in it, lane (g, t); its
// accumulator rows are row0 and row0 + 8 (the m64nN layout).
struct WgThread {
  int tid, wg, lane, w4, g, t, row0;
};
__device__ __forceinline__ WgThread wg_thread() {
  const int tid = threadIdx.x, lane = tid & 31, w4 = (tid >> 5) & 3;
  return {tid, tid >> 7, lane, w4, lane >> 2, lane & 3, 16 * w4 + (lane >> 2)};
}

// Named barriers (0 is __syncthreads): `threads` arrive, syncers wait, arrivers do not.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

}  // namespace tandem::ops::cuda
