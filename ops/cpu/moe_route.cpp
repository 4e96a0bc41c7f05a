// MoE gate of DeepSeek-V2/V3 (DeepSeek-V3 technical report, section 2.1.2; the reference
// modeling code). V3: s = sigmoid(logits); experts are *chosen* on s + bias, restricted to the
// topk_group groups whose top-2 chosen-scores sum highest; the weights are the unbiased s of the
// chosen experts, normalized to sum 1 (norm_topk_prob), times routed_scaling_factor.
// V2: s = softmax(logits); greedy top-k, or group-limited by each group's max score; weights are
// normalized when norm_topk_prob, otherwise scaled by routed_scaling_factor (as V2's code does).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

namespace {

// Indices of the k largest values, ties broken by the lower index (deterministic).
std::vector<int> top_k_indices(const std::vector<float>& v, int64_t k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

}  // namespace

void moe_route(const Tensor& logits, const Tensor& bias, const RouteParams& p, Tensor& topk_ids,
               Tensor& topk_weights) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  const int64_t per_group = experts / std::max<int64_t>(p.n_group, 1);
  const float* bias_d = bias.defined() ? bias.data<float>() : nullptr;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  parallel_for(tokens, 16, [&](int64_t b, int64_t e) {
    std::vector<float> scores(experts), choice(experts), group_score(p.n_group);
    for (int64_t t = b; t < e; ++t) {
      const float* l = logits.data<float>() + t * logits.stride(0);
      if (p.sigmoid) {
        for (int64_t i = 0; i < experts; ++i) scores[i] = 1.0f / (1.0f + std::exp(-l[i]));
      } else {
        const float mx = *std::max_element(l, l + experts);
        float sum = 0.0f;
        for (int64_t i = 0; i < experts; ++i) sum += scores[i] = std::exp(l[i] - mx);
        for (int64_t i = 0; i < experts; ++i) scores[i] /= sum;
      }
      for (int64_t i = 0; i < experts; ++i) choice[i] = scores[i] + (bias_d ? bias_d[i] : 0.0f);

      if (p.grouped && p.topk_group < p.n_group) {
        for (int64_t g = 0; g < p.n_group; ++g) {
          const float* c = choice.data() + g * per_group;
          if (p.group_by_top2) {
            std::vector<float> grp(c, c + per_group);
            const auto top2 = top_k_indices(grp, 2);
            group_score[g] = grp[top2[0]] + grp[top2[1]];
          } else {
            group_score[g] = *std::max_element(c, c + per_group);
          }
        }
        std::vector<bool> keep(p.n_group, false);
        for (int g : top_k_indices(group_score, p.topk_group)) keep[g] = true;
        // Masked experts can never be chosen: -inf for V3 (biased choice may be negative),
        // 0 for V2's softmax scores as its reference does.
        for (int64_t i = 0; i < experts; ++i) {
          if (!keep[i / per_group]) choice[i] = p.group_by_top2 ? neg_inf : 0.0f;
        }
      }
      const auto chosen = top_k_indices(choice, p.top_k);
      int32_t* ids = topk_ids.data<int32_t>() + t * topk_ids.stride(0);
      float* w = topk_weights.data<float>() + t * topk_weights.stride(0);
      float sum = 0.0f;
      for (int64_t j = 0; j < p.top_k; ++j) {
        ids[j] = chosen[j];
        w[j] = scores[chosen[j]];
        sum += w[j];
      }
      const bool v3_style = p.sigmoid;
      for (int64_t j = 0; j < p.top_k; ++j) {
        if (p.norm_topk_prob) w[j] /= (sum + 1e-20f);
        if (v3_style || !p.norm_topk_prob) w[j] *= float(p.routed_scaling_factor);
      }
    }
  });
}

}  // namespace tandem::ops::cpu
