// The CPU reference of ops::mla_prefill_attention (ops/cpu/mla_attention.cpp), without a GPU:
// bf16 inputs are the f32 op on the widened values (the contract the CUDA tensor-core kernel is
// tested against), causality, chunked prefill equal to the tail of a full prefill, and the
// validation errors of ops.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace tandem {
namespace {

constexpr int64_t kHeads = 3, kNope = 16, kRope = 8, kV = 12, kLora = 20;

Tensor randn(const Shape& shape, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor t = Tensor::empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(gen);
  return t;
}

Tensor cu(const std::vector<int32_t>& lens) {
  std::vector<int32_t> v{0};
  for (int32_t n : lens) v.push_back(v.back() + n);
  return Tensor::from_vector(v, {int64_t(v.size())});
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()) == 0;
}

// Inputs of B sequences; k_pe is a strided view of a [L, lora + rope] cache as in the model.
struct Inputs {
  Tensor q, kv, cache, cu_q, cu_kv;
  Tensor k_pe() const { return cache.slice(1, kLora, kLora + kRope); }
};

Inputs make(const std::vector<int32_t>& q_lens, const std::vector<int32_t>& kv_lens, uint32_t seed) {
  int64_t t = 0, l = 0;
  for (size_t b = 0; b < q_lens.size(); ++b) t += q_lens[b], l += kv_lens[b];
  return {randn({t, kHeads, kNope + kRope}, seed), randn({l, kHeads, kNope + kV}, seed + 1),
          randn({l, kLora + kRope}, seed + 2), cu(q_lens), cu(kv_lens)};
}

Tensor run(const Inputs& in, DType out_dtype = DType::kF32) {
  Tensor out = Tensor::empty({in.q.size(0), kHeads, kV}, out_dtype);
  ops::mla_prefill_attention(in.q, in.kv, in.k_pe(), in.cu_q, in.cu_kv, 0.25f, out);
  return out;
}

TEST(MlaPrefillCpu, Bf16IsTheF32OpOnWidenedValues) {
  const Inputs f = make({5, 1, 40}, {5, 9, 64}, 7);
  const Inputs b{cast(f.q, DType::kBF16), cast(f.kv, DType::kBF16), cast(f.cache, DType::kBF16),
                 f.cu_q, f.cu_kv};
  const Inputs widened{to_f32(b.q), to_f32(b.kv), to_f32(b.cache), f.cu_q, f.cu_kv};
  const Tensor ref = run(widened);
  EXPECT_TRUE(bitwise_equal(run(b), ref));
  EXPECT_TRUE(bitwise_equal(run(b, DType::kBF16), cast(ref, DType::kBF16)));
  // The bf16 rounding of the inputs does change the result (the test can tell them apart).
  EXPECT_FALSE(bitwise_equal(run(f), ref));
}

TEST(MlaPrefillCpu, QueriesSeeOnlyKeysUpToTheirPosition) {
  const Inputs a = make({6}, {10}, 11);  // queries at positions 4..9
  Inputs changed = make({6}, {10}, 11);
  // Key/value row 7 (a later key for the queries at positions 4, 5 and 6).
  float* row = changed.kv.data<float>() + 7 * kHeads * (kNope + kV);
  for (int64_t i = 0; i < kHeads * (kNope + kV); ++i) row[i] += 1.0f;
  const Tensor x = run(a), y = run(changed);
  const int64_t per_token = kHeads * kV;
  for (int64_t t = 0; t < 6; ++t) {
    const bool same = std::memcmp(x.data<float>() + t * per_token, y.data<float>() + t * per_token,
                                  size_t(per_token) * sizeof(float)) == 0;
    EXPECT_EQ(same, t + 4 < 7) << "query " << t << " at position " << t + 4;
  }
}

TEST(MlaPrefillCpu, ChunkedPrefillIsTheTailOfTheFullPrefill) {
  const Inputs full = make({30}, {30}, 21);
  const Inputs tail{full.q.slice(0, 18, 30).contiguous(), full.kv, full.cache, cu({12}), cu({30})};
  const Tensor all = run(full), part = run(tail);
  EXPECT_TRUE(bitwise_equal(part, all.slice(0, 18, 30).contiguous()));
}

TEST(MlaPrefillCpu, ValidationNamesTheProblem) {
  const Inputs f = make({4}, {4}, 31);
  Tensor out = Tensor::empty({4, kHeads, kV}, DType::kF32);
  auto message = [&](const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& cq,
                     const Tensor& ckv, Tensor& o) -> std::string {
    try {
      ops::mla_prefill_attention(q, kv, k_pe, cq, ckv, 0.25f, o);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const Tensor kv16 = cast(f.kv, DType::kBF16);
  EXPECT_NE(message(f.q, kv16, f.k_pe(), f.cu_q, f.cu_kv, out).find("share one dtype"),
            std::string::npos);
  EXPECT_NE(message(f.q, f.kv, f.k_pe(), cu({2}), cu({4}), out).find("cu_q/cu_kv"),
            std::string::npos);
  EXPECT_NE(message(f.q, f.kv, f.k_pe(), cu({3, 1}), cu({2, 2}), out).find("sequence 0 has 3 queries"),
            std::string::npos);
  Tensor bad_out = Tensor::empty({4, kHeads, kV + 1}, DType::kF32);
  EXPECT_NE(message(f.q, f.kv, f.k_pe(), f.cu_q, f.cu_kv, bad_out).find("out must be"),
            std::string::npos);
  const Tensor kv_heads = randn({4, kHeads + 1, kNope + kV}, 1);
  EXPECT_NE(message(f.q, kv_heads, f.k_pe(), f.cu_q, f.cu_kv, out).find("do not fit together"),
            std::string::npos);
}

}  // namespace
}  // namespace tandem
