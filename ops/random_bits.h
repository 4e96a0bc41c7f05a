// The counter-based random bits of ops::fill_random, shared by its CPU and CUDA twins (and
// model/random_weights.cpp's tensor keys), so every device makes the same values.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TANDEM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TANDEM_HOST_DEVICE inline
#endif

namespace tandem::ops {

// SplitMix64's output function of x + golden gamma (Steele, Lea, Flood 2014).
TANDEM_HOST_DEVICE uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) on a 2^-15 grid from 16 random bits (exact in f32).
TANDEM_HOST_DEVICE float unit16(uint32_t bits) {
  return float(int32_t(bits & 0xffffu) - 32768) / 32768.0f;
}

}  // namespace tandem::ops
