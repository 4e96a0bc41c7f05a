// The counter-based uniform draws of token sampling, shared by runtime::Sampler on the host and
// ops::sample_tokens on both backends: draw n of a request with seed s is a pure function of
// (s, n), so a seeded request samples the same tokens on the host and on the GPU, in any batch.
// Thread-safe (pure functions).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TANDEM_SAMPLING_HD __host__ __device__ __forceinline__
#else
#define TANDEM_SAMPLING_HD inline
#endif

namespace tandem::ops {

// SplitMix64's mixing function (Steele, Lea, Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014).
TANDEM_SAMPLING_HD uint64_t sampling_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Draw `n` of the stream `seed`: uniform in [0, 1) from 53 bits, exact in a double on every
// platform. The stream is SplitMix64's sequence started at a state derived from the seed.
TANDEM_SAMPLING_HD double sampling_uniform(uint64_t seed, uint64_t n) {
  const uint64_t state = sampling_mix64(seed + 0x9e3779b97f4a7c15ull);
  const uint64_t bits = sampling_mix64(state + (n + 1) * 0x9e3779b97f4a7c15ull);
  return double(bits >> 11) * 0x1.0p-53;
}

}  // namespace tandem::ops
