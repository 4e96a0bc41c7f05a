#include <gtest/gtest.h>

#include "core/tensor.h"

namespace tandem {
namespace {

Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i) + 0.5f;
  return t;
}

TEST(Tensor, ViewsShareTheBufferAndKeepItAlive) {
  Tensor s;
  {
    Tensor t = iota({4, 6});
    s = t.slice(1, 2, 5);
  }
  EXPECT_EQ(s.shape(), (Shape{4, 3}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.stride(0), 6);
  EXPECT_EQ(s.data<float>()[0], 2.5f);
  Tensor c = s.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.data<float>()[3], 8.5f);  // row 1, column 2 of the original
}

TEST(Tensor, ViewInfersOneDimensionAndChecks) {
  Tensor t = iota({2, 3, 4});
  EXPECT_EQ(t.view({-1, 4}).shape(), (Shape{6, 4}));
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.slice(1, 0, 2).view({4, 4}), Error);
  EXPECT_THROW(t.slice(0, 1, 3), Error);
}

TEST(Tensor, SelectAndUnsqueezeKeepStrides) {
  Tensor t = iota({3, 5});
  Tensor col = t.slice(1, 1, 3);
  Tensor u = col.unsqueeze(1);
  EXPECT_EQ(u.shape(), (Shape{3, 1, 2}));
  EXPECT_EQ(u.stride(0), 5);
  Tensor r = t.select(0, 2);
  EXPECT_EQ(r.shape(), (Shape{5}));
  EXPECT_EQ(r.data<float>()[0], 10.5f);
}

TEST(Tensor, TypedAccessChecksDtype) {
  Tensor t = Tensor::zeros({2}, DType::kBF16);
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_NO_THROW(t.data<bf16>());
}

TEST(Tensor, CastConvertsFloatTypes) {
  Tensor t = Tensor::from_vector<float>({1.0f, -2.5f, 448.0f, 1000.0f}, {4});
  Tensor f8 = cast(t, DType::kF8E4M3);
  Tensor back = to_f32(f8);
  EXPECT_EQ(back.data<float>()[1], -2.5f);
  EXPECT_EQ(back.data<float>()[3], 448.0f);  // saturated
}

TEST(Tensor, CudaWithoutBackendIsAClearError) {
  try {
    Tensor::empty({2}, DType::kF32, Device::cuda(0));
    SUCCEED() << "a CUDA allocator is registered in this build";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos);
  }
}

}  // namespace
}  // namespace tandem
