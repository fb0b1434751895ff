// CPU reference of the FP8-wire all-reduce (AllReduceWire::kFp8), written from the math in docs/all_reduce.md:
// per block of B elements a scale d = amax / 448 and a multiplier m = min(448 / amax, FLT_MAX) in IEEE fp32,
// e4m3 codes RNE with saturation (tests/quantize/quant_ref: fp8_encode / fp8_decode), dequantization q * d, an
// fp32 reduction in rank order 0..W-1 and, for the FP8 all-gather, the same quantization of the reduced block
// again. Every fp32 operation is computed in float64 and rounded to float32 once, which is the IEEE float32 result
// (53 >= 2 * 24 + 2 bits: double rounding is innocuous for +, *, /) and leaves the host compiler nothing to
// contract or reorder. GPU tests require bit-identical output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tpcomm/types.h"

namespace tpcomm::test {

// IEEE float32 +, *, / (round to nearest even), computed as described above.
float f32_add(float a, float b);
float f32_mul(float a, float b);
float f32_div(float a, float b);

struct Fp8WireScaleRef {
  float mult;   // m: x * m is the value encoded
  float scale;  // d: what the wire carries; code * d is the value decoded
};
// amax >= 0 or NaN.
Fp8WireScaleRef fp8_wire_scale_ref(float amax);
// max |x_i| over n values, NaN if any is NaN.
float fp8_wire_amax_ref(const float* x, std::size_t n);
// Quantizes one block of n values into n e4m3 codes; returns its scale d.
float fp8_wire_quantize_block(const float* x, std::size_t n, uint8_t* codes);
// Decodes n codes with scale d.
void fp8_wire_dequantize_block(const uint8_t* codes, std::size_t n, float d, float* out);

// What every rank holds after all_reduce(..., {kTwoShot or kAuto, wire kFp8, fp8_block = block, gather_wire})
// over these inputs (inputs[r]: rank r's count elements of dtype): count elements of dtype, bit for bit.
std::vector<uint8_t> reference_fp8_wire_all_reduce(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count,
                                                   DType dtype, ReduceOp op, int block, bool gather_fp8);

// One element's quantization error bound (docs/all_reduce.md): |decode(encode(x)) - x| for |x| <= A, A the amax
// of its block.
double fp8_wire_quant_bound(double abs_x, double block_amax);

// Per element, the bound on |result - exact| of docs/all_reduce.md, where exact is the float64 reduction of the
// inputs (reference_all_reduce): the W reduce-scatter quantizations, fp32 accumulation, the all-gather quantization
// (FP8 all-gather) and the final rounding to dtype.
std::vector<double> fp8_wire_error_bound(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype,
                                         ReduceOp op, int block, bool gather_fp8);

// Error of a result against the float64 reduction: the largest |result - exact|, that divided by the largest
// |exact| (normwise relative), and sqrt(sum (result - exact)^2 / sum exact^2) (RMS relative).
struct Fp8WireError {
  double max_abs = 0, max_rel = 0, rms_rel = 0;
};
Fp8WireError fp8_wire_error(const void* result, const std::vector<double>& exact, std::size_t count, DType dtype);

// Inputs that exercise the wire format: every 32-element block of a rank gets its own magnitude (2^-e_range ..
// 2^e_range times uniform [-1, 1); e_range 12 for f16, whose range is small, else 24), about one block in 16 is
// all zeros, and one element in 64 is zero; rounded to dtype. Deterministic in (seed, rank).
std::vector<uint8_t> make_fp8_wire_input(std::size_t count, DType dtype, uint64_t seed, int rank);

// A GPU result checked against the reference: elements whose bits differ from reference_fp8_wire_all_reduce
// (first ones described in `first`), elements beyond fp8_wire_error_bound of the float64 reduction, and the error.
struct Fp8WireCheck {
  std::size_t mismatches = 0;
  std::size_t over_bound = 0;
  std::string first;
  Fp8WireError error;
};
Fp8WireCheck check_fp8_wire_result(const void* result, const std::vector<std::vector<uint8_t>>& inputs, std::size_t count,
                                   DType dtype, ReduceOp op, int block, bool gather_fp8);

}  // namespace tpcomm::test
