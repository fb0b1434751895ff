// Device helpers of the async-TP suites: the error metric every cell is checked with, the fixed-order fp32 rank sum
// of the reduce-scatter reference, and a direct (float64, CUDA cores) dot product on sampled outputs that checks the
// reference GEMM itself.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "async_tp/lt_gemm.h"
#include "tpcomm/types.h"

namespace tpcomm::bench::atp {

// out vs ref, both bf16, (rows, cols) row-major.
struct ErrStats {
  double worst_row = 0;     // max over rows of ||out_row - ref_row|| / ||ref_row|| (infinite when a row has NaN/Inf)
  double sum_sq_diff = 0;   // sum (out - ref)^2 over finite pairs
  double sum_sq_ref = 0;    // sum ref^2
  uint64_t nonfinite = 0;   // elements of out that are NaN/Inf (a poisoned element that was never written is NaN)
  uint64_t mismatches = 0;  // elements whose bits differ
  uint64_t hash = 0;        // order-independent hash of out's bits (cross-rank and run-to-run equality)
  double rel() const;       // ||out - ref|| / ||ref|| (infinite when nonfinite > 0)
};
// Synchronizes `stream`. `scratch` is 64 bytes of device memory.
ErrStats compare_bf16(const void* out, const void* ref, int64_t rows, int64_t cols, void* scratch, cudaStream_t stream);

// out[i] = bf16(sum_{r = 0..world-1} in[r * count + i]), summed in fp32 in rank order and rounded once (the library's
// documented reduction); `in` is f32 or bf16 (in_dtype).
void reduce_ranks(const void* in, DType in_dtype, int world, std::size_t count, void* out, cudaStream_t stream);

// Multiplies each element of the bf16 (rows, cols) matrix by 2^e, e in [-4, 4] drawn per (row, 128-column block)
// from `seed`: rowwise and blockwise scales then differ by up to 2^8 between neighbours, so a scale applied to the
// wrong row or block moves the result far past the tolerance (uniform data would give nearly equal scales).
void vary_magnitude(void* bf16, int64_t rows, int64_t cols, uint64_t seed, cudaStream_t stream);

// The GEMM D = A @ B (lt_gemm.h's operand layouts and scale layouts) recomputed on `samples` pseudo-random output
// elements with a float64 dot product of the dequantized operands, compared with D.
struct DirectCheck {
  const void* a = nullptr;
  const float* a_scale = nullptr;
  const void* b = nullptr;
  const float* b_scale = nullptr;
  const void* d = nullptr;
  GemmShape shape;
  int samples = 2048;
  uint64_t seed = 1;
};
struct DirectResult {
  double rel = 0;          // sqrt(sum (d - exact)^2 / sum exact^2) over the samples
  uint64_t nonfinite = 0;
};
// Synchronizes `stream`. `scratch` is 64 bytes of device memory.
DirectResult direct_check(const DirectCheck& c, void* scratch, cudaStream_t stream);

}  // namespace tpcomm::bench::atp
