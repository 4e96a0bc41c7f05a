// Shared by the golden tests (CPU: golden_test.cpp, GPU: golden_cuda_test.cpp): the reference
// data of tests/data/golden (made by tools/golden/make_golden.py) and its comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "model/loader.h"

namespace tandem::golden {

inline const std::string kGoldenDir = std::string(TANDEM_SOURCE_DIR) + "/tests/data/golden/";

// A golden variant: the model loaded from its checkpoint, and transformers' outputs for it.
struct Golden {
  LoadedModel model;
  std::shared_ptr<Checkpoint> ref;  // golden.safetensors
  std::vector<int32_t> ids(int i) const {
    Tensor t = ref->get("input_ids_" + std::to_string(i));
    return {t.data<int32_t>(), t.data<int32_t>() + t.numel()};
  }
  Tensor logits(int i) const { return ref->get("logits_" + std::to_string(i)); }
};

inline Golden load_golden(const std::string& variant, Device device = Device::cpu()) {
  Golden g{load_model(kGoldenDir + variant, device), nullptr};
  g.ref = std::make_shared<Checkpoint>(
      Checkpoint::open(kGoldenDir + variant + "/golden.safetensors"));
  return g;
}

// Max |a[r] - ref[ref_row0 + r]| over the rows of a (a on any device, any layout); infinity
// when either side holds a NaN.
inline float max_abs_diff(const Tensor& a_any, const Tensor& ref, int64_t ref_row0) {
  const Tensor a = a_any.to(Device::cpu()).contiguous();
  float worst = 0.0f;
  const int64_t cols = a.size(1);
  for (int64_t r = 0; r < a.size(0); ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      const float x = a.data<float>()[r * cols + j];
      const float y = ref.data<float>()[(ref_row0 + r) * cols + j];
      if (std::isnan(x) || std::isnan(y)) return INFINITY;
      worst = std::max(worst, std::fabs(x - y));
    }
  }
  return worst;
}

// Every other page from first_page, so the sequences of a batch interleave in the pool.
inline std::vector<int32_t> pages_for(int64_t tokens, int64_t page_size, int32_t first_page) {
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < (tokens + page_size - 1) / page_size; ++p) {
    pages.push_back(first_page + 2 * int32_t(p));
  }
  return pages;
}

}  // namespace tandem::golden
