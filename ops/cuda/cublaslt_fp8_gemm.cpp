// cuBLASLt FP8 block-scaled GEMM (see cublaslt_fp8_gemm.h). The column-major view is the one of
// cublaslt_gemm.cpp: out^T[N, M] = W (stored K x N, op T) times x^T (stored K x M, op N), the
// "TN" layout FP8 requires; A = W carries the 128 x 128 block scales, B = x the 1 x 128 ones
// (the assignment torch's scaled_mm makes for the same row-major problem).
#include "ops/cuda/cublaslt_fp8_gemm.h"

#include <map>
#include <mutex>
#include <tuple>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device.h"

namespace tandem::ops::cuda {

namespace {

struct Plan {
  bool ok = false;
  std::string why;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int, int64_t>;

Plan make_plan(const LtFp8Gemm& g, int device) {
  Plan p;
  const cudaDataType_t out_type = g.out_dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
  // The scale pointers are set per call (they change); a placeholder lets the heuristic run.
  const void* placeholder = g.w_scale;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &placeholder, sizeof(placeholder)));
  placeholder = g.x_scale;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &placeholder, sizeof(placeholder)));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, uint64_t(g.k), uint64_t(g.n), g.k));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, uint64_t(g.k), uint64_t(g.m), g.k));
  TANDEM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out_type, uint64_t(g.n), uint64_t(g.m), g.ldo > 0 ? g.ldo : g.n));
  cublasLtMatmulPreference_t pref = nullptr;
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws_bytes = 0;
  cublaslt_workspace(device, &ws_bytes);
  TANDEM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(device), p.desc, p.a, p.b,
                                                           p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    p.why = st != CUBLAS_STATUS_SUCCESS ? std::string("heuristic: ") + cublasLtGetStatusName(st)
                                        : "no algorithm";
    return p;
  }
  p.algo = result.algo;
  p.ok = true;
  return p;
}

}  // namespace

bool cublaslt_gemm_fp8_block(const LtFp8Gemm& g, int device, cudaStream_t stream, std::string* why) {
  TANDEM_CHECK(g.k % 128 == 0, "fp8 block GEMM: K {} is not a multiple of 128", g.k);
  if (g.m == 0 || g.n == 0) return true;
  static std::mutex mu;
  static std::map<Key, Plan> plans;  // descriptors live for the process
  const Key key{device, g.m, g.n, g.k, int(g.out_dtype), g.ldo > 0 ? g.ldo : g.n};
  // One lock for the whole call: the scale pointers are set on the cached descriptor.
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(g, device)).first;
  const Plan& plan = it->second;
  if (!plan.ok) {
    if (why) *why = plan.why;
    return false;
  }
  // The layout enums only say how the caller stored the scales; cuBLASLt reads one layout
  // (kMnMajor + kAsStored, see the header). The probe passes the others to show they differ.
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &g.w_scale, sizeof(g.w_scale)));
  TANDEM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &g.x_scale, sizeof(g.x_scale)));
  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(device, &ws_bytes);
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(cublaslt_handle(device), plan.desc, &alpha, g.w, plan.a,
                                           g.x, plan.b, &beta, g.out, plan.c, g.out, plan.c,
                                           &plan.algo, ws, ws_bytes, stream);
  if (st != CUBLAS_STATUS_SUCCESS) {
    if (why) *why = std::string("matmul: ") + cublasLtGetStatusName(st);
    return false;
  }
  return true;
}

}  // namespace tandem::ops::cuda
