// Small device helpers for the collective benchmarks: deterministic random fill and result comparison.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "tpcomm/types.h"

namespace tpcomm::bench {

// Fills `count` elements of `dtype` with values uniform in [-1, 1) derived from (seed, index).
void fill_random(void* ptr, std::size_t count, DType dtype, uint64_t seed, cudaStream_t stream);
// Fills bytes with 0xFF (NaN for every float type): outputs are poisoned before a checked run.
void poison(void* ptr, std::size_t bytes, cudaStream_t stream);

struct CompareResult {
  double max_abs_diff;     // |a - b| max over elements (NaN counts as infinite)
  uint64_t mismatches;     // elements whose bits differ
  uint64_t hash;           // order-independent hash of a's bits (for cross-rank equality)
};
// Compares a against b (same dtype/count). Synchronizes the stream.
CompareResult compare(const void* a, const void* b, std::size_t count, DType dtype, cudaStream_t stream);

}  // namespace tpcomm::bench
