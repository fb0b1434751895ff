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

// in (count elements of dtype) converted to float64 (exactly), e.g. for a float64 NCCL sum: the exact reduction that
// lossy wire formats are measured against.
void to_f64(const void* in, std::size_t count, DType dtype, double* out, cudaStream_t stream);

struct ExactError {
  double max_abs;   // max |a - exact| (NaN counts as infinite)
  double max_rel;   // max_abs / max |exact|
  double rms_rel;   // sqrt(sum (a - exact)^2 / sum exact^2)
  uint64_t hash;    // order-independent hash of a's bits (as CompareResult::hash)
};
// a (count elements of dtype) against float64 values. Synchronizes the stream.
ExactError error_vs_exact(const void* a, const double* exact, std::size_t count, DType dtype, cudaStream_t stream);

}  // namespace tpcomm::bench
