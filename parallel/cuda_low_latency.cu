// GPU low_latency dispatch/combine kernels (cuda_low_latency.h has the protocol). Rows move
// in 16-byte vectors where the row width allows (4- or 2-byte words otherwise); peers' memory is
// written with plain stores, published with __threadfence_system and a st.release.sys flag,
// and read after ld.acquire.sys of that flag.
#include "parallel/cuda_low_latency.h"

namespace tandem::parallel_cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kMaxTopK = 32;

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// First error wins; the host reads the word (mapped memory) at the next dispatch.
__device__ void report(LlErrorWord* word, int32_t code, int32_t rank, int64_t value,
                       int64_t where) {
  volatile LlErrorWord* w = word;
  if (w->code != 0) return;
  w->rank = rank;
  w->value = value;
  w->where = where;
  __threadfence_system();
  w->code = code;
}

// Thread r < ranks waits until flags[r] reaches seq (acquire), then the whole block goes on.
__device__ void wait_flags(const LlParams& p, const uint64_t* flags, uint64_t seq) {
  if (int(threadIdx.x) < p.ranks) {
    const uint64_t start = globaltimer_ns();
    while (ld_acquire_sys(flags + threadIdx.x) < seq) {
      if (globaltimer_ns() - start > uint64_t(p.timeout_ns)) {
        report(p.error, kLlTimeout, int32_t(threadIdx.x), int64_t(seq), 0);
        break;
      }
    }
  }
  __syncthreads();
}

// After a block's stores to peers: the last block of the step (over `counter`, which counts
// blocks over all steps) sets flag[me] = seq on every rank.
__device__ void signal_when_last(const LlParams& p, unsigned long long* counter, uint64_t seq,
                                 bool dispatch) {
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x != 0) return;
  const unsigned long long done = atomicAdd(counter, 1ull) + 1;
  if (done != seq * gridDim.x) return;
  __threadfence_system();
  for (int r = 0; r < p.ranks; ++r) {
    st_release_sys((dispatch ? p.peers[r].dispatch_flag : p.peers[r].combine_flag) + p.me, seq);
  }
}

// Copies n rows of `vecs` V-vectors each, row r from src_row(r) to dst_row(r), spread over the
// block with 32-bit indices and four loads in flight per thread before their stores (remote
// stores are fire-and-forget, so the loads set the pace).
template <class V, class Src, class Dst>
__device__ __forceinline__ void copy_rows(uint32_t n, uint32_t vecs, Src src_row, Dst dst_row) {
  constexpr int kUnroll = 4;
  const uint32_t total = n * vecs;
  for (uint32_t base = threadIdx.x; base < total; base += kUnroll * blockDim.x) {
    V tmp[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t i = base + u * blockDim.x;
      if (i < total) {
        const uint32_t r = i / vecs;
        tmp[u] = src_row(r)[i - r * vecs];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t i = base + u * blockDim.x;
      if (i < total) {
        const uint32_t r = i / vecs;
        dst_row(r)[i - r * vecs] = tmp[u];
      }
    }
  }
}

// One block per global expert g: the tokens routed to g, in token order, into slot block
// (local expert, me) of g's owner.
template <class V>
__global__ void __launch_bounds__(kThreads) ll_dispatch_send(const LlParams p) {
  extern __shared__ int32_t toks[];  // [max_tokens]
  __shared__ int32_t warp_hits[kThreads / 32];
  __shared__ int32_t total;
  const int64_t g = blockIdx.x;
  const uint64_t seq = p.state->step + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  for (int64_t t0 = 0; t0 < p.tokens; t0 += blockDim.x) {
    const int64_t t = t0 + threadIdx.x;
    bool hit = false;
    if (t < p.tokens) {
      for (int64_t j = 0; j < p.top_k; ++j) {
        const int32_t id = p.topk_ids[t * p.top_k + j];
        hit |= id == g;
        if (g == 0 && (id < 0 || id >= p.num_experts)) report(p.error, kLlBadExpert, p.me, id, t);
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(ballot);
    __syncthreads();
    int before = total;
    for (int w = 0; w < warp; ++w) before += warp_hits[w];
    if (hit) toks[before + __popc(ballot & ((1u << lane) - 1u))] = int32_t(t);
    __syncthreads();
    if (threadIdx.x == 0) {
      int sum = 0;
      for (int w = 0; w < int(blockDim.x / 32); ++w) sum += warp_hits[w];
      total += sum;
    }
    __syncthreads();
  }
  const int64_t n = total;
  const RankBuffers dst = p.peers[p.expert_rank[g]];
  const int64_t block = int64_t(p.expert_local[g]) * p.ranks + p.me;
  const int64_t vecs = p.row_bytes / int64_t(sizeof(V));
  V* dst_x = reinterpret_cast<V*>(dst.recv_x + block * p.max_tokens * p.row_bytes);
  const V* src_x = static_cast<const V*>(p.x);
  copy_rows<V>(uint32_t(n), uint32_t(vecs), [&](uint32_t r) { return src_x + int64_t(toks[r]) * vecs; },
               [&](uint32_t r) { return dst_x + int64_t(r) * vecs; });
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    dst.recv_src[block * p.max_tokens + i] = toks[i];
  }
  if (threadIdx.x == 0) dst.recv_count[block] = int32_t(n);
  signal_when_last(p, reinterpret_cast<unsigned long long*>(&p.state->dispatch_done), seq, true);
}

// One block per local expert e: wait for every source, then pack its slot blocks (source rank
// order) to the front of x[e] and record where each row came from.
template <class V>
__global__ void __launch_bounds__(kThreads) ll_dispatch_recv(const LlParams p) {
  __shared__ int32_t counts[kMaxRanks];
  const uint64_t seq = p.state->step + 1;
  const RankBuffers mine = p.peers[p.me];
  wait_flags(p, mine.dispatch_flag, seq);
  const int64_t e = blockIdx.x, m = p.max_tokens;
  if (int(threadIdx.x) < p.ranks) {
    int32_t c = *reinterpret_cast<volatile int32_t*>(mine.recv_count + e * p.ranks + threadIdx.x);
    counts[threadIdx.x] = c < 0 ? 0 : (c > m ? int32_t(m) : c);
  }
  __syncthreads();
  const int64_t vecs = p.row_bytes / int64_t(sizeof(V));
  V* out = static_cast<V*>(p.out_x) + e * p.ranks * m * vecs;
  int32_t* packed = p.packed_src + e * p.ranks * m;
  int64_t n = 0;
  for (int s = 0; s < p.ranks; ++s) {
    const int64_t c = counts[s], block = e * p.ranks + s;
    const V* src = reinterpret_cast<const V*>(mine.recv_x + block * m * p.row_bytes);
    V* dst = out + n * vecs;
    copy_rows<V>(uint32_t(c), uint32_t(vecs), [&](uint32_t r) { return src + int64_t(r) * vecs; },
                 [&](uint32_t r) { return dst + int64_t(r) * vecs; });
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      packed[n + i] = int32_t(s * m + mine.recv_src[block * m + i]);
    }
    n += c;
  }
  if (threadIdx.x == 0) p.out_counts[e] = int32_t(n);
}

// One block per local expert e: each valid output row to slot (me, e, token) of its source rank.
template <class V>
__global__ void __launch_bounds__(kThreads) ll_combine_send(const LlParams p) {
  const int64_t e = blockIdx.x, m = p.max_tokens;
  const uint64_t seq = p.state->step + 1;
  const int64_t n = p.out_counts[e];
  const int64_t vecs = p.hidden * int64_t(sizeof(float)) / int64_t(sizeof(V));
  const V* src = reinterpret_cast<const V*>(p.expert_out) + e * p.ranks * m * vecs;
  const int32_t* packed = p.packed_src + e * p.ranks * m;
  V* dst_base[kMaxRanks];  // this expert's slot block on each rank
  for (int r = 0; r < kMaxRanks; ++r) {
    dst_base[r] = r < p.ranks ? reinterpret_cast<V*>(p.peers[r].recv_y) +
                                    (int64_t(p.me) * p.locals + e) * m * vecs
                              : nullptr;
  }
  copy_rows<V>(uint32_t(n), uint32_t(vecs), [&](uint32_t r) { return src + int64_t(r) * vecs; },
               [&](uint32_t r) {
                 const int32_t from = packed[r];
                 const int32_t s = from / int32_t(m);
                 return dst_base[s] + int64_t(from - s * int32_t(m)) * vecs;
               });
  signal_when_last(p, reinterpret_cast<unsigned long long*>(&p.state->combine_done), seq, false);
}

// One block per token (at least one block, so a rank without tokens still waits for its peers'
// combine flags before its next dispatch may overwrite their slots): out[t] += w * y over the
// token's experts in ascending expert id order, unfused multiply and add (the CPU's rounding).
__global__ void __launch_bounds__(kThreads) ll_combine_recv(const LlParams p) {
  __shared__ int64_t rows[kMaxTopK];
  __shared__ float weights[kMaxTopK];
  __shared__ int valid;
  const uint64_t seq = p.state->step + 1;
  const RankBuffers mine = p.peers[p.me];
  wait_flags(p, mine.combine_flag, seq);
  const int64_t t = blockIdx.x;
  if (t >= p.tokens) return;
  if (threadIdx.x == 0) {
    int n = 0;
    int32_t last = -1;
    for (int64_t pick = 0; pick < p.top_k; ++pick) {  // selection by ascending id
      int64_t best = -1;
      for (int64_t j = 0; j < p.top_k; ++j) {
        const int32_t id = p.topk_ids[t * p.top_k + j];
        if (id > last && id < p.num_experts && (best < 0 || id < p.topk_ids[t * p.top_k + best])) best = j;
      }
      if (best < 0) break;
      const int32_t g = p.topk_ids[t * p.top_k + best];
      rows[n] = ((int64_t(p.expert_rank[g]) * p.locals + p.expert_local[g]) * p.max_tokens + t) * p.hidden;
      weights[n] = p.topk_weights[t * p.top_k + best];
      ++n;
      last = g;
    }
    valid = n;
  }
  __syncthreads();
  const float* y = mine.recv_y;
  float* out = p.out + t * p.hidden;
  for (int64_t h = threadIdx.x; h < p.hidden; h += blockDim.x) {
    float acc = out[h];
    for (int j = 0; j < valid; ++j) acc = __fadd_rn(acc, __fmul_rn(weights[j], y[rows[j] + h]));
    out[h] = acc;
  }
}

__global__ void ll_step_advance(LocalState* state) { state->step += 1; }

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

template <class V>
void dispatch_with(const LlParams& p, cudaStream_t stream) {
  const size_t smem = size_t(p.max_tokens) * sizeof(int32_t);
  if (smem > 48 * 1024) {
    cudaFuncSetAttribute(ll_dispatch_send<V>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  }
  ll_dispatch_send<V><<<unsigned(p.num_experts), kThreads, smem, stream>>>(p);
  ll_dispatch_recv<V><<<unsigned(p.locals), kThreads, 0, stream>>>(p);
}

template <class V>
void combine_with(const LlParams& p, cudaStream_t stream) {
  ll_combine_send<V><<<unsigned(p.locals), kThreads, 0, stream>>>(p);
  ll_combine_recv<<<unsigned(p.tokens > 0 ? p.tokens : 1), kThreads, 0, stream>>>(p);
  ll_step_advance<<<1, 1, 0, stream>>>(p.state);
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace

RankLayout rank_layout(int ranks, int64_t locals, int64_t max_tokens, int64_t hidden,
                       int64_t row_bytes) {
  RankLayout l{};
  const size_t slots = size_t(locals) * size_t(ranks) * size_t(max_tokens);
  size_t at = 0;
  l.recv_x = at, at += align_up(slots * size_t(row_bytes));
  l.recv_src = at, at += align_up(slots * sizeof(int32_t));
  l.recv_count = at, at += align_up(size_t(locals) * size_t(ranks) * sizeof(int32_t));
  l.dispatch_flag = at, at += align_up(size_t(ranks) * sizeof(uint64_t));
  l.recv_y = at, at += align_up(slots * size_t(hidden) * sizeof(float));
  l.combine_flag = at, at += align_up(size_t(ranks) * sizeof(uint64_t));
  l.total = at;
  return l;
}

RankBuffers rank_buffers(void* base, const RankLayout& l) {
  char* b = static_cast<char*>(base);
  RankBuffers r;
  r.recv_x = b + l.recv_x;
  r.recv_src = reinterpret_cast<int32_t*>(b + l.recv_src);
  r.recv_count = reinterpret_cast<int32_t*>(b + l.recv_count);
  r.dispatch_flag = reinterpret_cast<uint64_t*>(b + l.dispatch_flag);
  r.recv_y = reinterpret_cast<float*>(b + l.recv_y);
  r.combine_flag = reinterpret_cast<uint64_t*>(b + l.combine_flag);
  return r;
}

void launch_ll_dispatch(const LlParams& p, cudaStream_t stream) {
  bool vec16 = p.row_bytes % 16 == 0 && aligned(p.x, 16) && aligned(p.out_x, 16);
  for (int r = 0; r < p.ranks; ++r) vec16 = vec16 && aligned(p.peers[r].recv_x, 16);
  if (vec16) {
    dispatch_with<int4>(p, stream);
  } else if (p.row_bytes % 4 == 0 && aligned(p.x, 4)) {
    dispatch_with<int32_t>(p, stream);
  } else {
    dispatch_with<int16_t>(p, stream);
  }
}

void launch_ll_combine(const LlParams& p, cudaStream_t stream) {
  if (p.hidden % 4 == 0 && aligned(p.expert_out, 16)) {
    combine_with<int4>(p, stream);
  } else {
    combine_with<int32_t>(p, stream);
  }
}

}  // namespace tandem::parallel_cuda
