// Parameter builders shared by the quantize GPU tests.
#pragma once

#include <cstdint>

#include "tpcomm/quantize.h"

namespace tpcomm::quant::test_params {

// FP8 colwise with the transposed (cols, rows) output, scale_inv[cols] and amax_out[cols].
inline Fp8QuantizeParams colwise_transposed(const void* in, int64_t rows, int64_t cols, uint8_t* out, float* scale_inv,
                                            float* amax_out, Fp8Format fmt = Fp8Format::kE4M3, bool pow2 = false) {
  Fp8QuantizeParams p;
  p.input = in;
  p.rows = rows;
  p.cols = cols;
  p.format = fmt;
  p.scaling = Fp8Scaling::kColwise;
  p.pow2_scales = pow2;
  p.output = out;
  p.scale_inv = scale_inv;
  p.amax_out = amax_out;
  p.transpose_output = true;
  return p;
}

}  // namespace tpcomm::quant::test_params
