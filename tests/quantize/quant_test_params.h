// Parameter builders shared by the quantize GPU tests.
#pragma once

#include <cstdint>

#include "tpcomm/quantize.h"

namespace tpcomm::quant::test_params {

// The fields every FP8 quantize call sets; the others keep the header's defaults (pow2_scales, scale_ld, amax_in,
// amax_out and transpose_output are the caller's).
inline Fp8QuantizeParams fp8_params(const void* in, int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling sc, void* out,
                                    float* scale_inv) {
  Fp8QuantizeParams p;
  p.input = in;
  p.rows = rows;
  p.cols = cols;
  p.format = fmt;
  p.scaling = sc;
  p.output = out;
  p.scale_inv = scale_inv;
  return p;
}

// FP8 colwise with the transposed (cols, rows) output, scale_inv[cols] and amax_out[cols].
inline Fp8QuantizeParams colwise_transposed(const void* in, int64_t rows, int64_t cols, uint8_t* out, float* scale_inv,
                                            float* amax_out, Fp8Format fmt = Fp8Format::kE4M3, bool pow2 = false) {
  Fp8QuantizeParams p = fp8_params(in, rows, cols, fmt, Fp8Scaling::kColwise, out, scale_inv);
  p.pow2_scales = pow2;
  p.amax_out = amax_out;
  p.transpose_output = true;
  return p;
}

}  // namespace tpcomm::quant::test_params
