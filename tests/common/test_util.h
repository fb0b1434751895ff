// Test helpers shared by all test binaries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tpcomm::test {

// Number of CUDA devices, 0 when none or when the driver is missing (never throws).
int cuda_device_count();

// Exit code CTest treats as "skipped" (SKIP_RETURN_CODE 77).
constexpr int kSkipExitCode = 77;

// Deterministic 64-bit RNG (splitmix64) so CPU and GPU tests draw the same "random" data from a seed.
struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * (next() >> 11) * (1.0 / 9007199254740992.0); }
};

// Host -> device copy that has landed when it returns. cudaMemcpy from pageable memory may return before its
// DMA completes, and work on a cudaStreamNonBlocking stream does not wait for it (a race that showed up as
// a graph replay reading half-old input).
int copy_to_device(void* dst, const void* src, std::size_t bytes);

// A fresh seed per call (time + counter), printed by tests on failure so a failure can be replayed.
uint64_t fresh_seed();

}  // namespace tpcomm::test
