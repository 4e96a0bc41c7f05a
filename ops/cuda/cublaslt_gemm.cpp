#include "ops/cuda/cublaslt_gemm.h"

#include <map>
#include <mutex>
#include <tuple>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device.h"

namespace tandem::ops::cuda {

namespace {

int alignment_bytes(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && (a % align) != 0) align /= 2;
  return align;
}

// Column-major view of the row-major problem: out^T[N, M] = W[N, K] (stored as K x N, op T)
// times x^T[K, M] (stored as K x M, op N).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int>;

Plan make_plan(const LtGemm& g, int device, const Key&) {
  Plan p;
  const cudaDataType_t out_type = g.out_dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(g.k), uint64_t(g.n), g.ldw));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, uint64_t(g.k), uint64_t(g.m), g.ldx));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out_type, uint64_t(g.n), uint64_t(g.m), g.ldo));

  cublasLtMatmulPreference_t pref = nullptr;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws_bytes = 0;
  cublaslt_workspace(device, &ws_bytes);
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
  const uint32_t align_a = uint32_t(alignment_bytes(g.w)), align_b = uint32_t(alignment_bytes(g.x)),
                 align_c = uint32_t(alignment_bytes(g.out));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(device), p.desc, p.a, p.b, p.c, p.c,
                                                           pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  TANDEM_CUBLAS_CHECK(st);
  TANDEM_CHECK(found > 0, "cuBLASLt has no bf16 GEMM for M={} N={} K={} (ld {} {} {})", g.m, g.n,
               g.k, g.ldx, g.ldw, g.ldo);
  p.algo = result.algo;
  return p;
}

}  // namespace

void cublaslt_gemm_bf16(const LtGemm& g, int device, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return;
  static std::mutex mu;
  static std::map<Key, Plan> plans;  // descriptors live for the process
  const Key key{device, g.m, g.n, g.k, g.ldx, g.ldw, g.ldo, int(g.out_dtype),
                alignment_bytes(g.x), alignment_bytes(g.w), alignment_bytes(g.out)};
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, make_plan(g, device, key)).first;
    plan = it->second;
  }
  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(device, &ws_bytes);
  const float alpha = 1.0f, beta = 0.0f;
  TANDEM_CUBLAS_CHECK(cublasLtMatmul(cublaslt_handle(device), plan.desc, &alpha, g.w, plan.a, g.x,
                                     plan.b, &beta, g.out, plan.c, g.out, plan.c, &plan.algo, ws,
                                     ws_bytes, stream));
}

}  // namespace tandem::ops::cuda
