#include "ops/cpu/cpu_ops.h"

namespace tandem::ops::cpu {

namespace {
// c + a * b, rounded once where the target has FMA and twice where it has not, the same in every
// function that uses it. Left to itself the compiler contracts `acc += a * b` into an FMA in
// some loops and not in others (seen with -march=native on an AVX-512 machine), and then
// dot_f32 and dot_f32_bf16 differ in the last bit.
inline float madd(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
}  // namespace

float dot_f32(const float* a, const float* b, int64_t n) {
  // Eight independent partial sums let the compiler vectorize without -ffast-math.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] = madd(a[i + j], b[i + j], acc[j]);
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s = madd(a[i], b[i], s);
  return s;
}

float dot_f32_bf16(const float* a, const bf16* b, int64_t n) {
  // The same summation order as dot_f32, and bf16 -> f32 is exact: results are bitwise equal
  // to dot_f32 over a converted row, without writing that row.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] = madd(a[i + j], bf16_to_f32(b[i + j]), acc[j]);
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s = madd(a[i], bf16_to_f32(b[i]), s);
  return s;
}

void load_row_f32(const void* base, DType dtype, int64_t index, int64_t n, float* out) {
  switch (dtype) {
    case DType::kF32: {
      const float* p = static_cast<const float*>(base) + index;
      std::copy(p, p + n, out);
      return;
    }
    case DType::kBF16: {
      const bf16* p = static_cast<const bf16*>(base) + index;
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
      return;
    }
    case DType::kF8E4M3: {
      const fp8_e4m3* p = static_cast<const fp8_e4m3*>(base) + index;
      for (int64_t i = 0; i < n; ++i) out[i] = fp8_e4m3_to_f32(p[i]);
      return;
    }
    default:
      TANDEM_FAIL("load_row_f32: {} is not a float dtype", dtype_name(dtype));
  }
}

void store_row_f32(const float* src, int64_t n, void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32:
      std::copy(src, src + n, static_cast<float*>(base) + index);
      return;
    case DType::kBF16: {
      bf16* p = static_cast<bf16*>(base) + index;
      for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(src[i]);
      return;
    }
    default:
      TANDEM_FAIL("store_row_f32: {} is not f32 or bf16", dtype_name(dtype));
  }
}

}  // namespace tandem::ops::cpu
