// MoE gate (DeepSeek-V2/V3), one block of one warp per token: scores, group-limited selection,
// top-k by repeated warp arg-max, weights. Ties break toward the lower expert index, as the CPU
// reference's sort does, so the chosen ids agree exactly.
#include "ops/cuda/common.cuh"

namespace tandem::ops::cuda {

namespace {

// Larger value first; on equal values the lower index. NaN never wins (taken experts are NaN).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

__global__ void moe_route_kernel(MoeRouteParams p) {
  extern __shared__ float smem[];
  const int experts = int(p.experts), n_group = int(p.n_group), lane = threadIdx.x;
  float* scores = smem;                                       // [E]
  float* choice = scores + experts;                           // [E]
  float* group_score = choice + experts;                      // [n_group]
  int* keep = reinterpret_cast<int*>(group_score + n_group);  // [n_group]
  const int64_t t = blockIdx.x;
  const float* l = p.logits + t * p.logits_stride;

  if (p.sigmoid) {
    for (int i = lane; i < experts; i += 32) scores[i] = __fdiv_rn(1.0f, 1.0f + expf(-l[i]));
  } else {
    float mx = -INFINITY;
    for (int i = lane; i < experts; i += 32) mx = fmaxf(mx, l[i]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int i = lane; i < experts; i += 32) sum += scores[i] = expf(l[i] - mx);
    sum = warp_sum(sum);
    for (int i = lane; i < experts; i += 32) scores[i] = __fdiv_rn(scores[i], sum);
  }
  for (int i = lane; i < experts; i += 32) choice[i] = scores[i] + (p.bias ? p.bias[i] : 0.0f);
  __syncwarp();

  if (p.grouped && p.topk_group < p.n_group) {
    const int per_group = experts / n_group;
    for (int g = lane; g < n_group; g += 32) {
      const float* c = choice + g * per_group;
      float first = -INFINITY, second = -INFINITY;
      for (int i = 0; i < per_group; ++i) {
        if (c[i] > first) {
          second = first;
          first = c[i];
        } else if (c[i] > second) {
          second = c[i];
        }
      }
      group_score[g] = p.group_by_top2 ? first + second : first;
      keep[g] = 0;
    }
    __syncwarp();
    if (lane == 0) {
      for (int64_t j = 0; j < p.topk_group; ++j) {
        int best = -1;
        for (int g = 0; g < n_group; ++g) {
          if (!keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
        }
        keep[best] = 1;
      }
    }
    __syncwarp();
    // Masked experts are never chosen: -inf for V3 (biased choices may be negative), 0 for
    // V2's softmax scores as its reference does.
    const float masked = p.group_by_top2 ? -INFINITY : 0.0f;
    for (int i = lane; i < experts; i += 32) {
      if (!keep[i / per_group]) choice[i] = masked;
    }
    __syncwarp();
  }

  int32_t* ids = p.topk_ids + t * p.ids_stride;
  float* w = p.topk_weights + t * p.weights_stride;
  for (int64_t j = 0; j < p.top_k; ++j) {
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = lane; i < experts; i += 32) {
      if (better(choice[i], i, bv, bi)) {
        bv = choice[i];
        bi = i;
      }
    }
    warp_argmax(bv, bi);
    if (lane == 0) {
      ids[j] = bi;
      w[j] = scores[bi];
      choice[bi] = __int_as_float(0x7fc00000);  // taken
    }
    __syncwarp();
  }
  if (lane == 0) {
    float sum = 0.0f;
    for (int64_t j = 0; j < p.top_k; ++j) sum += w[j];
    for (int64_t j = 0; j < p.top_k; ++j) {
      float v = w[j];
      if (p.norm_topk_prob) v = __fdiv_rn(v, sum + 1e-20f);
      if (p.sigmoid || !p.norm_topk_prob) v = __fmul_rn(v, p.routed_scaling_factor);
      w[j] = v;
    }
  }
}

}  // namespace

void launch_moe_route(const MoeRouteParams& p, cudaStream_t stream) {
  if (p.tokens == 0) return;
  const size_t smem = size_t(2 * p.experts + 2 * p.n_group) * sizeof(float);
  moe_route_kernel<<<unsigned(p.tokens), 32, smem, stream>>>(p);
}

}  // namespace tandem::ops::cuda
