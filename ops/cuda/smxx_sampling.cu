// ops::sample_tokens on CUDA: one block per row, the row read from global memory (L2) a few
// times, no sort. Per row (the definition is in ops/ops.h):
//  - one pass: the raw max and its lowest index (greedy), and log-sum-exp (logprobs);
//  - top-k: a radix select of the k-th largest x over its order-preserving 32-bit key (8-bit
//    digits; the top digit's elements then usually fit in shared memory, so the lower digits
//    read no more of the row), then the id cut among ties at that key;
//  - top-p: the same radix select, by probability mass instead of count, over the top-k set;
//  - the draw: the kept tokens' weights summed in id order in three levels (16 parts of the
//    row, 16 parts of the chosen part, then a warp scan), finding the first token whose
//    running sum exceeds u * total.
// Weights are exp(double(x - max x)) and sums are double, as in the CPU reference, so host and
// device choose the same token unless u lands within double rounding of a boundary.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/common.cuh"
#include "ops/cuda/smxx_sampling.h"
#include "ops/sampling_rng.h"

namespace tandem::ops::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int32_t kNoIndex = 0x7fffffff;

// Radix select candidates (the elements of the chosen top digit) kept in shared memory when
// they fit, so the lower digits need no pass over the row.
constexpr int kCandidates = 8192;

struct Shared {
  double part[kWarps];        // per-warp sums
  int32_t part_last[kWarps];  // per-warp last index with a positive weight
  union {
    uint32_t count[256];
    double mass[256];
  } hist;
  uint32_t cand_key[kCandidates];  // a weight is recomputed from its key
  int32_t cand_n;
  double d[4];  // values broadcast by one thread
  int32_t i[4];
  float f[4];
};

__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ int32_t warp_max_i(int32_t v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Larger x, larger key; -0 and +0 share one key, as they compare equal on the host.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The x of a key (order_key's inverse).
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Calls f(i, logits[i]) for i = lo + start, lo + start + step, ... < hi, in increasing order,
// with kUnroll loads in flight per thread: one load at a time left each pass waiting on
// memory latency (9 GB/s for a single row).
constexpr int kUnroll = 8;
template <class F>
__device__ __forceinline__ void for_row(const float* lg, int32_t lo, int32_t hi, int32_t start,
                                        int32_t step, const F& f) {
  int32_t i = lo + start;
  for (; i + (kUnroll - 1) * step < hi; i += kUnroll * step) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = __ldg(lg + i + u * step);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) f(i + u * step, v[u]);
  }
  for (; i < hi; i += step) f(i, __ldg(lg + i));
}

// Adds v to bin b of a shared histogram where `active`. At the top digit most of a row shares
// a few exponents, and same-address shared atomics serialize (f64 ones especially): counts add
// once per bin per warp; masses once per distinct bin (a warp-wide sum each) for the warp's
// first four bins, then per lane.
__device__ __forceinline__ void hist_add(uint32_t* hist, uint32_t b, uint32_t v, bool active) {
  // Counts (v is 1): the lanes of one bin add their number at once.
  const unsigned lanes = __ballot_sync(kFull, active);
  if (active) {
    const unsigned peers = __match_any_sync(lanes, b);
    if (int(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(hist + b, v * __popc(peers));
  }
}
__device__ __forceinline__ void hist_add(double* hist, uint32_t b, double v, bool active) {
  unsigned pending = __ballot_sync(kFull, active);
  const int lane = threadIdx.x & 31;
  for (int round = 0; round < 4 && pending != 0; ++round) {
    const int leader = __ffs(pending) - 1;
    const uint32_t bl = __shfl_sync(kFull, b, leader);
    const bool mine = active && b == bl;
    const unsigned group = __ballot_sync(kFull, mine);
    double sum = mine ? v : 0.0;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
    if (lane == leader) atomicAdd(hist + bl, sum);
    pending &= ~group;
  }
  if ((pending >> lane) & 1u) atomicAdd(hist + b, v);
}

// Warp 0: the bin holding the `want`-th unit from the top (bins 255 down to 0): the first bin b
// with above + hist[b] >= want. Writes b and want - above (the rank left inside b) to sh.
template <class T>
__device__ void pick_digit(const T* hist, T want, bool fraction, int32_t* digit, T* rest) {
  const int lane = threadIdx.x & 31;
  T mine = 0;
  for (int j = 0; j < 8; ++j) mine += hist[255 - lane * 8 - j];
  T incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const T v = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += v;
  }
  if (fraction) want = want * __shfl_sync(kFull, incl, 31);  // a fraction of the total
  const unsigned hit = __ballot_sync(kFull, incl >= want);
  if (hit == 0) {  // rounding (mass): not reached; the caller keeps everything
    if (lane == 0) *digit = -1;
    return;
  }
  const int first = __ffs(hit) - 1;
  if (lane == first) {
    T above = incl - mine;
    int32_t d = 255 - lane * 8 - 7;
    for (int j = 0; j < 8; ++j) {
      const int b = 255 - lane * 8 - j;
      if (above + hist[b] >= want || j == 7) {
        d = b;
        break;
      }
      above += hist[b];
    }
    *digit = d;
    *rest = want - above;
  }
}

// Radix select over keys from the top: the key of the `want`-th unit (count or mass) among the
// elements with in(i), and the rank left among the elements with exactly that key. weight(i)
// is the unit (1 for counts). Returns false when `want` is never reached (rounding).
template <class T, class In, class Key, class Weight, class KeyWeight>
__device__ bool radix_select(const float* lg, int32_t n, T want, bool fraction, const In& in,
                             const Key& key, const Weight& weight,
                             const KeyWeight& weight_of_key, Shared& sh, uint32_t* sel_key, T* rest,
                             T* at_key) {
  T* hist = reinterpret_cast<T*>(&sh.hist);
  uint32_t prefix = 0, mask = 0;
  bool compact = false;  // the candidates are in sh.cand_* (nc of them)
  int32_t nc = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    // Every lane runs the same number of iterations so the warp-wide adds stay converged.
    if (compact) {
      for (int32_t base = 0; base < nc; base += kThreads) {
        const int32_t j = base + int32_t(threadIdx.x);
        bool act = false;
        uint32_t k = 0;
        T v = 0;
        if (j < nc) {
          k = sh.cand_key[j];
          act = (k & mask) == prefix;
          if (act) v = weight_of_key(k);
        }
        hist_add(hist, (k >> shift) & 255u, v, act);
      }
    } else {
      for (int32_t base = 0; base < n; base += kThreads * kUnroll) {
        float l[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int32_t i = base + u * kThreads + int32_t(threadIdx.x);
          l[u] = i < n ? __ldg(lg + i) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int32_t i = base + u * kThreads + int32_t(threadIdx.x);
          bool act = false;
          uint32_t k = 0;
          T v = 0;
          if (i < n && in(i, l[u])) {
            k = key(l[u]);
            act = (k & mask) == prefix;
            if (act) v = weight(l[u]);
          }
          hist_add(hist, (k >> shift) & 255u, v, act);
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      int32_t* digit = &sh.i[0];
      pick_digit(hist, want, fraction && shift == 24, digit, reinterpret_cast<T*>(&sh.d[0]));
    }
    __syncthreads();
    const int32_t d = sh.i[0];
    if (d < 0) return false;
    want = *reinterpret_cast<T*>(&sh.d[0]);
    const T in_bin = hist[d];
    __syncthreads();
    prefix |= uint32_t(d) << shift;
    mask |= 0xffu << shift;
    // Counts: when the whole bin is wanted, every key from its lowest value up is selected
    // (the caller's "key == selected" ties then include all of the bin): stop early.
    if (shift == 0 || (!fraction && want == in_bin)) {
      *at_key = in_bin;
      break;
    }
    // After the top digit: gather its elements (key and weight) when they fit.
    if (shift == 24 && (fraction || in_bin <= T(kCandidates))) {
      if (threadIdx.x == 0) sh.cand_n = 0;
      __syncthreads();
      for_row(lg, 0, n, int32_t(threadIdx.x), kThreads, [&](int32_t i, float l) {
        if (!in(i, l)) return;
        const uint32_t k = key(l);
        if ((k & mask) != prefix) return;
        const int32_t slot = atomicAdd(&sh.cand_n, 1);
        if (slot < kCandidates) sh.cand_key[slot] = k;
      });
      __syncthreads();
      nc = sh.cand_n;
      compact = nc <= kCandidates;
      __syncthreads();
    }
  }
  *sel_key = prefix;
  *rest = want;
  return true;
}

// Splits [lo, hi) into kWarps parts and finds the part where the running weight sum first
// exceeds `target` (or, with fraction, exceeds fraction * the total of [lo, hi)). Returns the
// part's index (-1 when the target is past the total) and the target left inside it; `last`
// gets the last index with a positive weight in the range (-1 when none).
template <class Weight>
__device__ int32_t split_find(const float* lg, int32_t lo, int32_t hi, double target, bool fraction,
                              const Weight& weight, Shared& sh, double* left, int32_t* last,
                              int32_t* part_lo, int32_t* part_hi) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t chunk = (hi - lo + kWarps - 1) / kWarps;
  const int32_t a = min(hi, lo + warp * chunk), b = min(hi, a + chunk);
  double s = 0.0;
  int32_t l = -1;
  for_row(lg, a, b, lane, 32, [&](int32_t i, float x) {
    const double v = weight(i, x);
    s += v;
    if (v > 0.0) l = i;
  });
  s = warp_sum_d(s);
  l = warp_max_i(l);
  if (lane == 0) {
    sh.part[warp] = s;
    sh.part_last[warp] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    int32_t lst = -1;
    for (int w = 0; w < kWarps; ++w) {
      total += sh.part[w];
      lst = max(lst, sh.part_last[w]);
    }
    const double t = fraction ? target * total : target;
    double cum = 0.0;
    int32_t sel = -1;
    for (int w = 0; w < kWarps; ++w) {
      if (t < cum + sh.part[w]) {
        sel = w;
        break;
      }
      cum += sh.part[w];
    }
    sh.i[1] = sel;
    sh.i[2] = lst;
    sh.d[1] = t - cum;
  }
  __syncthreads();
  const int32_t sel = sh.i[1];
  *last = sh.i[2];
  *left = sh.d[1];
  *part_lo = min(hi, lo + sel * chunk);
  *part_hi = min(hi, *part_lo + chunk);
  __syncthreads();
  return sel;
}

// The first index whose running weight sum (in index order) exceeds the target; the last
// index with a positive weight when rounding leaves the target past the total; -1 when every
// weight is 0.
template <class Weight>
__device__ int32_t find_prefix(const float* lg, int32_t n, double target, bool fraction, const Weight& weight,
                               Shared& sh) {
  double left = 0.0;
  int32_t last = -1, a = 0, b = 0;
  if (split_find(lg, 0, n, target, fraction, weight, sh, &left, &last, &a, &b) < 0) return last;
  int32_t last2 = -1, a2 = 0, b2 = 0;
  double left2 = 0.0;
  if (split_find(lg, a, b, left, false, weight, sh, &left2, &last2, &a2, &b2) < 0) return last2;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int32_t found = -1;
    for (int32_t base = a2; base < b2; base += 32) {
      const int32_t i = base + lane;
      const double v = i < b2 ? weight(i, __ldg(lg + i)) : 0.0;
      double incl = v;
      for (int o = 1; o < 32; o <<= 1) {
        const double u = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += u;
      }
      const double total = __shfl_sync(kFull, incl, 31);
      if (left2 < total) {
        found = base + __ffs(__ballot_sync(kFull, left2 < incl)) - 1;
        break;
      }
      left2 -= total;
    }
    if (lane == 0) sh.i[3] = found >= 0 ? found : last2;
  }
  __syncthreads();
  const int32_t r = sh.i[3];
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kThreads) sample_tokens_kernel(SampleTokensParams p) {
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  const float* lg = p.logits + row * p.stride;
  const int32_t n = p.vocab;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Pass 1: max with its lowest index, and the log-sum-exp of the raw logits (online).
  float best = -INFINITY, m = -INFINITY, s = 0.0f;
  int32_t best_i = kNoIndex;
  for_row(lg, 0, n, int32_t(threadIdx.x), kThreads, [&](int32_t i, float l) {
    if (l > best) {  // increasing i: the first maximum
      best = l;
      best_i = i;
    }
    if (l > m) {
      s = s * expf(m - l) + 1.0f;
      m = l;
    } else if (l != -INFINITY) {
      s += expf(l - m);
    }
  });
  for (int o = 16; o > 0; o >>= 1) {
    const float b2 = __shfl_xor_sync(kFull, best, o);
    const int32_t i2 = __shfl_xor_sync(kFull, best_i, o);
    if (b2 > best || (b2 == best && i2 < best_i)) {
      best = b2;
      best_i = i2;
    }
    const float m2 = __shfl_xor_sync(kFull, m, o), s2 = __shfl_xor_sync(kFull, s, o);
    const float mm = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.0f : s * expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
    m = mm;
  }
  __shared__ float w_best[kWarps], w_m[kWarps], w_s[kWarps];
  __shared__ int32_t w_best_i[kWarps];
  if (lane == 0) {
    w_best[warp] = best;
    w_best_i[warp] = best_i;
    w_m[warp] = m;
    w_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float b = -INFINITY, mm = -INFINITY, ss = 0.0f;
    int32_t bi = kNoIndex;
    for (int w = 0; w < kWarps; ++w) {
      if (w_best[w] > b || (w_best[w] == b && w_best_i[w] < bi)) {
        b = w_best[w];
        bi = w_best_i[w];
      }
      const float m2 = fmaxf(mm, w_m[w]);
      ss = (mm == -INFINITY ? 0.0f : ss * expf(mm - m2)) +
           (w_m[w] == -INFINITY ? 0.0f : w_s[w] * expf(w_m[w] - m2));
      mm = m2;
    }
    sh.f[0] = b;
    sh.f[1] = mm + logf(ss);
    sh.i[0] = bi == kNoIndex ? 0 : bi;  // an all -inf row: token 0, as the host's max_element
  }
  __syncthreads();
  const float lmax = sh.f[0], lse = sh.f[1];
  int32_t token = sh.i[0];
  __syncthreads();

  const float temperature = p.temperature[row];
  if (temperature > 0.0f) {
    const float inv_t = 1.0f / temperature;
    const float mx = __fmul_rn(lmax, inv_t);  // rounding is monotonic: the max of x
    const int32_t top_k = p.top_k[row];
    const float top_p = p.top_p[row], min_p = p.min_p[row];
    auto key_of = [=](float l) { return order_key(__fmul_rn(l, inv_t)); };
    auto w_of = [=](float l) { return exp(double(__fsub_rn(__fmul_rn(l, inv_t), mx))); };
    auto w_of_key = [=](uint32_t k) { return exp(double(__fsub_rn(key_value(k), mx))); };
    auto all = [](int32_t, float) { return true; };
    auto one = [](float) { return 1u; };
    auto one_of_key = [](uint32_t) { return 1u; };

    // Top-k: keys above k_key, and ties at k_key up to index k_tie.
    const bool use_k = top_k > 0 && top_k < n;
    uint32_t k_key = 0;
    int32_t k_tie = kNoIndex;
    if (use_k) {
      uint32_t rest = 0, at = 0;
      radix_select<uint32_t>(lg, n, uint32_t(top_k), false, all, key_of, one, one_of_key, sh,
                             &k_key, &rest, &at);
      if (rest < at) {
        const uint32_t kk = k_key;
        k_tie = find_prefix(
            lg, n, double(rest) - 0.5, false,
            [&](int32_t, float l) { return key_of(l) == kk ? 1.0 : 0.0; }, sh);
      }
    }
    auto in_k = [&](int32_t i, float l) {
      if (!use_k) return true;
      const uint32_t k = key_of(l);
      return k > k_key || (k == k_key && i <= k_tie);
    };

    // Top-p: the same select by mass over the top-k set.
    bool use_p = top_p < 1.0f;
    uint32_t p_key = 0;
    int32_t p_tie = kNoIndex;
    if (use_p) {
      // top_p of the top-k set's mass: the fraction is taken of the first digit's total.
      double rest = 0.0, at = 0.0;
      use_p = radix_select<double>(lg, n, double(top_p), true, in_k, key_of, w_of, w_of_key, sh,
                                   &p_key, &rest, &at);
      if (use_p) {
        // Tied tokens at p_key (equal weights) join in id order until the mass is reached.
        const uint32_t pk = p_key;
        const double wt = w_of_key(pk);  // one tied token's weight: all of them share x
        const double cnt = wt > 0.0 ? rint(at / wt) : 0.0;
        double r = rest, m_take = 0.0;
        while (r > 0.0 && m_take < cnt) {
          r -= wt;
          m_take += 1.0;
        }
        if (m_take < cnt) {
          p_tie = find_prefix(
              lg, n, m_take - 0.5, false,
              [&](int32_t i, float l) { return in_k(i, l) && key_of(l) == pk ? 1.0 : 0.0; }, sh);
        }
      }
    }
    auto in_p = [&](int32_t i, float l) {
      if (!use_p) return true;
      const uint32_t k = key_of(l);
      return k > p_key || (k == p_key && i <= p_tie);
    };

    const double min_w = double(min_p);
    const double u = sampling_uniform(uint64_t(p.seed[row]), uint64_t(p.draw[row]));
    const int32_t t = find_prefix(
        lg, n, u, true,
        [&](int32_t i, float l) {
          if (!in_k(i, l) || !in_p(i, l)) return 0.0;
          const double w = w_of(l);
          return w < min_w ? 0.0 : w;
        },
        sh);
    token = t >= 0 ? t : token;
  }
  if (threadIdx.x == 0) {
    p.tokens[row] = token;
    p.logprobs[row] = lg[token] - lse;
  }
}

}  // namespace

void launch_sample_tokens(const SampleTokensParams& p, cudaStream_t stream) {
  sample_tokens_kernel<<<unsigned(p.rows), kThreads, 0, stream>>>(p);
}

namespace {

constexpr int kTopThreads = 256, kTopMax = 20;

// (a, ia) ranks before (b, ib): larger logit, then lower id (the CPU op's order).
__device__ __forceinline__ bool ranks_before(float a, int32_t ia, float b, int32_t ib) {
  return a > b || (a == b && ia < ib);
}

// One block per row: max and log-sum-exp (double sums, as the CPU), then every thread keeps
// the k best of its strided elements (sorted), and warp 0 merges the 256 sorted lists by their
// heads, k rounds of a warp-wide best-of-heads.
__global__ void __launch_bounds__(kTopThreads) top_logprobs_kernel(TopLogprobsParams p) {
  __shared__ float cand_v[kTopThreads * kTopMax];
  __shared__ int32_t cand_i[kTopThreads * kTopMax];
  __shared__ int32_t head[kTopThreads];
  __shared__ float red_f[kTopThreads / 32];
  __shared__ double red_d[kTopThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* row = p.logits + int64_t(blockIdx.x) * p.stride;
  const int k = p.k;

  float mx = -INFINITY;
  for (int32_t i = tid; i < p.vocab; i += kTopThreads) mx = fmaxf(mx, row[i]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red_f[warp] = mx;
  __syncthreads();
  mx = red_f[0];
  for (int w = 1; w < kTopThreads / 32; ++w) mx = fmaxf(mx, red_f[w]);
  double sum = 0.0;
  for (int32_t i = tid; i < p.vocab; i += kTopThreads) sum += exp(double(row[i] - mx));
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) red_d[warp] = sum;
  __syncthreads();
  sum = 0.0;
  for (int w = 0; w < kTopThreads / 32; ++w) sum += red_d[w];
  const float lse = mx + float(log(sum));

  // This thread's k best, sorted, straight into its slice of the candidates.
  float* v = cand_v + tid * kTopMax;
  int32_t* id = cand_i + tid * kTopMax;
  int n = 0;
  for (int32_t i = tid; i < p.vocab; i += kTopThreads) {
    const float x = row[i];
    if (n == k && !ranks_before(x, i, v[k - 1], id[k - 1])) continue;
    int j = n < k ? n++ : k - 1;  // the slot it enters from
    while (j > 0 && ranks_before(x, i, v[j - 1], id[j - 1])) {
      v[j] = v[j - 1];
      id[j] = id[j - 1];
      --j;
    }
    v[j] = x;
    id[j] = i;
  }
  for (int j = n; j < kTopMax; ++j) {
    v[j] = -INFINITY;
    id[j] = INT32_MAX;
  }
  head[tid] = 0;
  __syncthreads();
  if (warp != 0) return;
  for (int out = 0; out < k; ++out) {
    float best = -INFINITY;
    int32_t best_id = INT32_MAX, best_t = -1;
    for (int t = lane; t < kTopThreads; t += 32) {
      const int h = head[t];
      if (h >= kTopMax) continue;
      const float x = cand_v[t * kTopMax + h];
      const int32_t xi = cand_i[t * kTopMax + h];
      if (best_t < 0 || ranks_before(x, xi, best, best_id)) {
        best = x;
        best_id = xi;
        best_t = t;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int32_t oi = __shfl_xor_sync(0xffffffffu, best_id, o);
      const int ot = __shfl_xor_sync(0xffffffffu, best_t, o);
      if (ot >= 0 && (best_t < 0 || ranks_before(ob, oi, best, best_id))) {
        best = ob;
        best_id = oi;
        best_t = ot;
      }
    }
    if (lane == 0) {
      p.ids[int64_t(blockIdx.x) * k + out] = best_id;
      p.values[int64_t(blockIdx.x) * k + out] = best - lse;
      ++head[best_t];
    }
    __syncwarp();
  }
}

// One block per row, a thread per entry (a row's tokens are distinct, so no two threads touch
// one logit). The arithmetic is ops::cpu::penalize_row's: IEEE division and multiplication, one
// fused multiply-add.
__global__ void __launch_bounds__(256) apply_penalties_kernel(ApplyPenaltiesParams p) {
  const int64_t r = blockIdx.x;
  float* row = p.logits + r * p.stride;
  const float rep = p.repetition[r], freq = p.frequency[r], pres = p.presence[r];
  for (int32_t e = p.offsets[r] + int32_t(threadIdx.x); e < p.offsets[r + 1]; e += blockDim.x) {
    const int32_t t = p.tokens[e];
    if (t < 0 || t >= p.vocab) {
      report_error(p.error, kErrPenaltyToken, t, p.vocab, e);
      continue;
    }
    float x = row[t];
    if (rep != 1.0f) x = x > 0.0f ? __fdiv_rn(x, rep) : __fmul_rn(x, rep);
    const int32_t c = p.counts[e];
    if (c > 0) x = __fsub_rn(x, __fmaf_rn(freq, float(c), pres));
    row[t] = x;
  }
}

}  // namespace

void launch_top_logprobs(const TopLogprobsParams& p, cudaStream_t stream) {
  top_logprobs_kernel<<<unsigned(p.rows), kTopThreads, 0, stream>>>(p);
}

void launch_apply_penalties(const ApplyPenaltiesParams& p, cudaStream_t stream) {
  apply_penalties_kernel<<<unsigned(p.rows), 256, 0, stream>>>(p);
}

}  // namespace tandem::ops::cuda
