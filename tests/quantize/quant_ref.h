// Scalar CPU reference for every quantize / dequantize of tpcomm/quantize.h, written from docs/quantize.md (not
// from the GPU code): minifloat rounding is done with exact double arithmetic (value / quantum, round half to
// even, saturate), E8M0 selection by direct comparison with powers of two, layouts by explicit index formulas.
// GPU tests require bit-identical output. Tensors are host vectors; bf16 is carried as uint16_t bit patterns.
#pragma once

#include <cstdint>
#include <vector>

#include "tpcomm/quantize.h"

namespace tpcomm::quant::ref {

// ---- scalar codecs ------------------------------------------------------------------------------------------------
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);    // RNE; NaN -> 0x7FFF
uint32_t float_to_f32_bits(float f);  // NaN -> 0x7FFFFFFF, others unchanged
float bits_to_float(uint32_t u);
uint32_t float_bits(float f);

uint8_t fp8_encode(float v, Fp8Format fmt);  // RNE, saturate to +-max (Inf too), NaN -> 0x7F
float fp8_decode(uint8_t code, Fp8Format fmt);
uint8_t e2m1_encode_magnitude(float a);      // |a| RNE to {0,.5,1,1.5,2,3,4,6}, saturate at 6, NaN -> 7 (3 bits)
float e2m1_decode(uint8_t nibble);
uint8_t e8m0_select(float amax, Fp8Format fmt, E8M0Rounding r);
float e8m0_decode(uint8_t code);             // 2^(code-127); 0 -> 2^-127; 255 -> NaN

float fp8_quant_scale(float amax, Fp8Format fmt, bool pow2);  // quant (multiplier) scale
float nvfp4_global_encode_scale(float amax);
float amax_of(const uint16_t* x, int64_t n, int64_t stride = 1);  // max |x|, NaN if any NaN

int64_t swizzle_offset(int64_t row, int64_t col, int64_t cols);  // 128x4 layout, independent implementation
int64_t swizzle_count(int64_t rows, int64_t cols);

// ---- FP8 ------------------------------------------------------------------------------------------------------------
struct Fp8Out {
  std::vector<uint8_t> data;
  std::vector<float> scale_inv;  // fp8_scale_count() entries; entries not written by the op stay 0
  std::vector<float> amax;       // tensorwise: [1], colwise: [cols]; empty otherwise
};
// amax_in: tensorwise only (nullptr = computed).
Fp8Out fp8_quantize(const std::vector<uint16_t>& in, int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling scaling,
                    bool pow2, int64_t scale_ld = 0, const float* amax_in = nullptr);
// Output: bf16 bits (as uint32 low halves) or f32 bits, one entry per element.
std::vector<uint32_t> fp8_dequantize(const std::vector<uint8_t>& q, int64_t rows, int64_t cols, Fp8Format fmt,
                                     Fp8Scaling scaling, const std::vector<float>& scale_inv, int64_t scale_ld,
                                     DType out_dtype);

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
struct Mxfp8Out {
  std::vector<uint8_t> row_data, row_scales, col_data, col_scales;
};
Mxfp8Out mxfp8_quantize(const std::vector<uint16_t>& in, int64_t experts, int64_t rows, int64_t cols, Fp8Format fmt,
                        E8M0Rounding rounding, ScaleLayout layout, bool rowwise, bool colwise);
std::vector<uint32_t> mxfp8_dequantize(const std::vector<uint8_t>& data, const std::vector<uint8_t>& scales,
                                       Mxfp8Axis axis, int64_t experts, int64_t rows, int64_t cols, Fp8Format fmt,
                                       ScaleLayout layout, DType out_dtype);

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
struct Nvfp4Out {
  std::vector<uint8_t> data;    // rows * cols / 2
  std::vector<uint8_t> scales;  // nvfp4_scale_bytes()
  float amax = 0;               // global amax used
  float global_scale_inv = 0;   // 1 / S_enc
};
Nvfp4Out nvfp4_quantize(const std::vector<uint16_t>& in, int64_t rows, int64_t cols, Nvfp4Block block,
                        ScaleLayout layout, const float* amax_in = nullptr);
std::vector<uint32_t> nvfp4_dequantize(const std::vector<uint8_t>& data, const std::vector<uint8_t>& scales,
                                       float global_scale_inv, int64_t rows, int64_t cols, ScaleLayout layout,
                                       DType out_dtype);

}  // namespace tpcomm::quant::ref
