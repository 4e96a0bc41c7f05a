// CPU twin of ops::fill_random (ops.h): the element generator of dummy weights.
#include <array>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/random_bits.h"

namespace tandem::ops::cpu {

namespace {

// 65536 entries: 16 random bits -> the e4m3 code of 448 * unit16(bits), the common case of
// fp8 dummy weights (uniform codes, the amplitude in the block scales).
const std::array<uint8_t, 65536>& fp8_full_range_table() {
  static const std::array<uint8_t, 65536> table = [] {
    std::array<uint8_t, 65536> t{};
    for (uint32_t i = 0; i < 65536; ++i) t[i] = f32_to_fp8_e4m3(unit16(i) * kFp8E4M3Max).bits;
    return t;
  }();
  return table;
}

}  // namespace

void fill_random(Tensor& out, uint64_t key, float amplitude, float offset) {
  const int64_t numel = out.numel();
  const DType dtype = out.dtype();
  void* base = out.raw_data();
  const bool fp8_table = dtype == DType::kF8E4M3 && amplitude == kFp8E4M3Max && offset == 0.0f;
  const uint8_t* table = fp8_table ? fp8_full_range_table().data() : nullptr;
  constexpr int64_t kChunk = 1 << 16;  // a multiple of 4: every 4-group lies in one chunk
  parallel_for((numel + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t end = std::min(numel, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < end; i += 4) {
        const uint64_t r = splitmix64(key + uint64_t(i));
        for (int64_t j = 0; j < 4 && i + j < end; ++j) {
          const uint32_t bits = uint32_t(r >> (16 * j)) & 0xffffu;
          if (fp8_table) {
            static_cast<uint8_t*>(base)[i + j] = table[bits];
            continue;
          }
          const float v = offset + amplitude * unit16(bits);
          switch (dtype) {
            case DType::kF32: static_cast<float*>(base)[i + j] = v; break;
            case DType::kBF16: static_cast<bf16*>(base)[i + j] = f32_to_bf16(v); break;
            default: static_cast<fp8_e4m3*>(base)[i + j] = f32_to_fp8_e4m3(v); break;
          }
        }
      }
    }
  });
}

}  // namespace tandem::ops::cpu
