// Host references of the async-TP tests: float64 GEMMs of decoded inputs (bf16 / f16 / f32 / e4m3 / e5m2 element
// codes) with the FP8 scale modes of include/tpcomm/async_tp.h applied by explicit index formulas.
#pragma once

#include <cstdint>
#include <vector>

#include "tpcomm/types.h"

namespace tpcomm::test {

// Value of element i of a host buffer of `dtype`.
double decode_element(const void* buf, std::size_t i, DType dtype);
// Encodes x (round to nearest even) into element i of a host buffer of `dtype` (bf16, f16, f32).
void encode_element(void* buf, std::size_t i, DType dtype, double x);

// Dequantized A (rows x K, row-major codes) with a scale: none/tensorwise (scale[0]), rowwise (scale[row]),
// 1x128 blockwise M-major (scale[(k/128) * ld + row]).
enum class RefScale { kNone, kTensor, kRow, kBlock };
std::vector<double> ref_dequant_a(const std::vector<uint8_t>& codes, DType dtype, int64_t rows, int64_t K, RefScale mode,
                                  const std::vector<float>& scale, int64_t ld);
// Dequantized B (K x N) from codes stored as the (N, K) row-major weight (col_major) or (K, N) row-major; scales:
// tensorwise, per column (scale[n]), 128x128 blocks (scale[(n/128) * ld + k/128]).
std::vector<double> ref_dequant_b(const std::vector<uint8_t>& codes, DType dtype, int64_t K, int64_t N, bool col_major,
                                  RefScale mode, const std::vector<float>& scale, int64_t ld);
// C (M x N) = A (M x K) @ B (K x N), float64.
std::vector<double> ref_matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t M, int64_t K, int64_t N);

// ||x - ref|| / ||ref|| (Frobenius), with x decoded from a host buffer of `dtype`; NaN in x -> +inf.
double rel_error(const void* x, DType dtype, const std::vector<double>& ref);

}  // namespace tpcomm::test
