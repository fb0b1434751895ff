// Quantization kernels for Hopper: FP8 (tensorwise, rowwise, colwise, 1x128, 128x128), MXFP8 (rowwise 1x32,
// colwise 32x1, 2-D and 3-D expert tensors) and NVFP4 (1x16, 16x16), quantize and dequantize.
//
// Every entry point takes device pointers, sizes and a cudaStream_t. Calls are asynchronous, allocate nothing,
// never synchronize the host and can be captured into a CUDA graph. Arguments are validated on the host before
// anything is enqueued; a bad argument throws tpcomm::Error(kInvalidArgument) whose message starts with the
// argument's (or the dimension's) name. The exact numerics (scale formulas, rounding, NaN/Inf rules) and every
// memory layout are specified in docs/quantize.md; the GPU output is bit-identical to the CPU reference that
// implements that document (tests/quantize/quant_ref.h).
//
// Common rules:
//   * Inputs are contiguous, row-major bf16 (the only input dtype at present).
//   * Every data pointer (input, quantized data, dequantized output) and every scale pointer must be 16-byte
//     aligned.
//   * "rows" is the outer (second-to-last) dimension and "cols" the inner, contiguous one.
//   * Sizes: rows, cols, experts and scale_ld below 2^31 each, at most 2^40 elements per tensor.
//   * No buffer a call writes may overlap another buffer of that call (there is no in-place quantization).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tpcomm/types.h"

namespace tpcomm::quant {

enum class Fp8Format : int { kE4M3 = 0, kE5M2 = 1 };

// FP8 scaling granularity. Scales are float32 *dequantization* scales (what cuBLASLt's A/B scale pointers and
// torch._scaled_mm consume): x ~= fp8_value * scale_inv.
enum class Fp8Scaling : int {
  kTensorwise = 0,    // one scale                                 cuBLASLt SCALAR_32F
  kRowwise = 1,       // one scale per row, scale_inv[rows]           OUTER_VEC_32F (A operand, or W of W^T)
  kColwise = 2,       // one scale per column, scale_inv[cols]        OUTER_VEC_32F after a transpose (Hopper's FP8
                      //   GEMM takes K-major operands only; for W^T quantize W (N x K) kRowwise instead)
  kBlock1x128 = 3,    // one scale per 1x128 block along cols        VEC128_32F: M-major, scale_inv[j*ld + i]
  kBlock128x128 = 4,  // one scale per 128x128 block                 BLK128x128_32F: row-major, scale_inv[i*ld + j]
};

// E8M0 scale selection for MXFP8 (docs/quantize.md):
//   kFloor: code = clamp(floor(log2 amax) - emax_elem + 127, 0, 254)   (torchao's default)
//   kRceil: code = clamp(ceil(log2(amax / fp8_max)) + 127, 0, 254)     (TransformerEngine, NVIDIA's recommendation)
// A NaN or Inf amax gives code 0xFF (NaN) in both modes.
enum class E8M0Rounding : int { kFloor = 0, kRceil = 1 };

// Block-scale layouts. kSwizzled128x4 is the interleaved layout the block-scaled GEMMs (cuBLASLt VEC32_UE8M0 /
// VEC16_UE4M3, CUTLASS) read: a logical scale matrix S[R][C] (R = outer dim of the operand, C = blocks along the
// scaled dim) padded to [roundup(R,128)][roundup(C,4)], element (r,c) stored at
//   ((r/128) * (Cp/4) + c/4) * 512 + (r%32) * 16 + ((r/32)%4) * 4 + c%4,     Cp = roundup(C,4).
// Padding entries are written as 0.
enum class ScaleLayout : int { kLinear = 0, kSwizzled128x4 = 1 };

enum class Nvfp4Block : int { k1x16 = 0, k16x16 = 1 };

// Which MXFP8 output a dequantize call reads.
enum class Mxfp8Axis : int { kRowwise = 0, kColwise = 1 };

const char* fp8_format_name(Fp8Format f) noexcept;        // "e4m3", "e5m2"
const char* fp8_scaling_name(Fp8Scaling s) noexcept;      // "tensorwise", "rowwise", "colwise", "1x128", "128x128"
const char* e8m0_rounding_name(E8M0Rounding r) noexcept;  // "floor", "rceil"
const char* scale_layout_name(ScaleLayout l) noexcept;    // "linear", "swizzled"
Fp8Format parse_fp8_format(std::string_view text, const char* arg_name = "format");
E8M0Rounding parse_e8m0_rounding(std::string_view text, const char* arg_name = "rounding");
ScaleLayout parse_scale_layout(std::string_view text, const char* arg_name = "scale_layout");

// Largest finite value of the element format: 448 (e4m3) or 57344 (e5m2).
float fp8_max(Fp8Format f) noexcept;

// Number of entries of a kSwizzled128x4 scale matrix with `rows` x `cols` logical entries.
constexpr int64_t swizzled_scale_count(int64_t rows, int64_t cols) {
  return ((rows + 127) / 128 * 128) * ((cols + 3) / 4 * 4);
}
// Offset of logical entry (row, col) in a kSwizzled128x4 scale matrix with `cols` logical columns.
constexpr int64_t swizzled_scale_offset(int64_t row, int64_t col, int64_t cols) {
  const int64_t col_tiles = (cols + 3) / 4;
  return ((row / 128) * col_tiles + col / 4) * 512 + (row % 32) * 16 + ((row / 32) % 4) * 4 + col % 4;
}

// ---- max |x| ------------------------------------------------------------------------------------------------------
// amax_out[0] = max |x| over `count` bf16 values (NaN if any value is NaN). Enqueues two kernels (zero, reduce).
// count must be a multiple of 8; input 16-byte aligned.
void compute_amax(const void* input, DType input_dtype, int64_t count, float* amax_out, cudaStream_t stream);

// ---- FP8 ------------------------------------------------------------------------------------------------------------
// quant_scale = float(double(fp8_max) / max(double(amax), 1e-12))  [pow2_scales: mantissa bits cleared]
// q = saturating_rne_cast(x * quant_scale);  scale_inv = 1.0f / quant_scale  (written to scale_inv).
struct Fp8QuantizeParams {
  const void* input = nullptr;  // (rows, cols) row-major
  DType input_dtype = DType::kBFloat16;
  int64_t rows = 0;
  int64_t cols = 0;             // multiple of 8
  Fp8Format format = Fp8Format::kE4M3;
  Fp8Scaling scaling = Fp8Scaling::kRowwise;
  bool pow2_scales = false;
  void* output = nullptr;       // (rows, cols) row-major fp8
  float* scale_inv = nullptr;   // see Fp8Scaling; fp8_scale_count() entries
  // Leading dimension of the scale matrix: kBlock1x128 (>= rows, default rows), kBlock128x128 (>= ceil(cols/128),
  // default ceil(cols/128)). 0 = default. Ignored otherwise. Entries between the dense size and ld are untouched.
  int64_t scale_ld = 0;
  // kTensorwise only: a precomputed amax (device scalar, e.g. all-reduced or from the previous step). When set, the
  // quantization is a single pass; otherwise the amax is computed first into amax_out (two passes).
  const float* amax_in = nullptr;
  // kTensorwise: [1], kColwise: [cols]. Receives the amax; required when it is computed (kColwise always).
  float* amax_out = nullptr;
  // kColwise only: write the output transposed, (cols, rows) row-major: the K-major operand a Hopper FP8 GEMM takes
  // when K = rows (e.g. the transposed operand of a backward GEMM), with scale_inv[cols] as its per-row
  // OUTER_VEC_32F scales. Same values as the row-major output, one pass, no separate transpose. rows must be a
  // multiple of 16 (16-byte output rows). Dequantize it as kRowwise of a (cols, rows) matrix.
  bool transpose_output = false;
};
// Number of float entries scale_inv must hold (ld taken into account).
int64_t fp8_scale_count(int64_t rows, int64_t cols, Fp8Scaling scaling, int64_t scale_ld = 0);
void fp8_quantize(const Fp8QuantizeParams& p, cudaStream_t stream);

// x = float(q) * scale_inv, rounded to output_dtype (bf16 RNE or f32). Same scale layouts as quantize.
struct Fp8DequantizeParams {
  const void* input = nullptr;  // (rows, cols) fp8 row-major
  int64_t rows = 0;
  int64_t cols = 0;             // multiple of 8
  Fp8Format format = Fp8Format::kE4M3;
  Fp8Scaling scaling = Fp8Scaling::kRowwise;
  const float* scale_inv = nullptr;
  int64_t scale_ld = 0;
  void* output = nullptr;       // (rows, cols) row-major
  DType output_dtype = DType::kBFloat16;  // kBFloat16 or kFloat32
};
void fp8_dequantize(const Fp8DequantizeParams& p, cudaStream_t stream);

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
// Input (experts, rows, cols) row-major (experts = 1 for a 2-D tensor). Rowwise and colwise outputs are computed
// from one read of the input when both are requested. Element = saturating_rne_cast(x * 2^(127 - code)); a block
// whose code is 0xFF is written as NaN (0x7F).
struct Mxfp8QuantizeParams {
  const void* input = nullptr;
  DType input_dtype = DType::kBFloat16;
  int64_t experts = 1;
  int64_t rows = 0;  // N: multiple of 32 when colwise output is requested
  int64_t cols = 0;  // K: multiple of 32 when rowwise output is requested, else multiple of 8
  Fp8Format format = Fp8Format::kE4M3;
  E8M0Rounding rounding = E8M0Rounding::kRceil;
  ScaleLayout scale_layout = ScaleLayout::kLinear;
  // Rowwise: 1x32 blocks along cols. row_data (experts*rows, cols) row-major. row_scales: linear (experts*rows,
  // cols/32) row-major; swizzled: per expert a [roundup(rows,128)][roundup(cols/32,4)] block (expert-major).
  void* row_data = nullptr;
  uint8_t* row_scales = nullptr;
  // Colwise: 32x1 blocks along rows, written column-major per expert: element (e,n,k) at e*rows*cols + k*rows + n
  // (strides rows*cols, 1, rows). col_scales: linear (experts, rows/32, cols) row-major; swizzled: per expert the
  // [roundup(cols,128)][roundup(rows/32,4)] block of the transposed scale matrix (what a GEMM consuming the
  // column-major data as a K-major (cols x rows) operand expects).
  void* col_data = nullptr;
  uint8_t* col_scales = nullptr;
};
int64_t mxfp8_row_scale_bytes(int64_t experts, int64_t rows, int64_t cols, ScaleLayout layout);
int64_t mxfp8_col_scale_bytes(int64_t experts, int64_t rows, int64_t cols, ScaleLayout layout);
void mxfp8_quantize(const Mxfp8QuantizeParams& p, cudaStream_t stream);

// x = float(q) * 2^(code - 127) (code 0xFF -> NaN), written in the storage order of `data`: for kRowwise
// (experts*rows, cols) row-major, for kColwise the column-major per-expert layout of col_data.
struct Mxfp8DequantizeParams {
  const void* data = nullptr;
  const uint8_t* scales = nullptr;
  Mxfp8Axis axis = Mxfp8Axis::kRowwise;
  int64_t experts = 1;
  int64_t rows = 0;
  int64_t cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  ScaleLayout scale_layout = ScaleLayout::kLinear;
  void* output = nullptr;
  DType output_dtype = DType::kBFloat16;
};
void mxfp8_dequantize(const Mxfp8DequantizeParams& p, cudaStream_t stream);

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
// S_enc = 448*6/|amax| (a negative given amax counts by magnitude; 1 if amax == 0 or the quotient is 0; capped at FLT_MAX); block scale
// s_b = e4m3(block_amax * (S_enc * (1/6))); element = e2m1_rne(x * min(1 / (float(s_b) * (1/S_enc)), FLT_MAX)).
struct Nvfp4QuantizeParams {
  const void* input = nullptr;  // (rows, cols) row-major
  DType input_dtype = DType::kBFloat16;
  int64_t rows = 0;             // multiple of 16 for k16x16
  int64_t cols = 0;             // multiple of 16
  Nvfp4Block block = Nvfp4Block::k1x16;
  ScaleLayout scale_layout = ScaleLayout::kLinear;
  void* output = nullptr;          // (rows, cols/2) bytes; column 2i in the low nibble, 2i+1 in the high nibble
  uint8_t* block_scales = nullptr; // e4m3; linear (rows, cols/16) row-major, or swizzled [roundup(rows,128)]
                                   // [roundup(cols/16,4)]. k16x16 writes each block's scale on all its 16 rows.
  const float* global_amax_in = nullptr;  // device scalar; when null the amax is computed into global_amax_out
  float* global_amax_out = nullptr;       // device scalar; required when global_amax_in is null
  float* global_scale_inv = nullptr;      // optional device scalar out: 1/S_enc (the GEMM's alpha factor)
};
int64_t nvfp4_scale_bytes(int64_t rows, int64_t cols, ScaleLayout layout);
void nvfp4_quantize(const Nvfp4QuantizeParams& p, cudaStream_t stream);

// x = (e2m1(q) * float(s_b)) * global_scale_inv[0], rounded to output_dtype.
struct Nvfp4DequantizeParams {
  const void* input = nullptr;
  const uint8_t* block_scales = nullptr;
  const float* global_scale_inv = nullptr;  // device scalar (as written by nvfp4_quantize)
  int64_t rows = 0;
  int64_t cols = 0;  // multiple of 16
  ScaleLayout scale_layout = ScaleLayout::kLinear;
  void* output = nullptr;
  DType output_dtype = DType::kBFloat16;
};
void nvfp4_dequantize(const Nvfp4DequantizeParams& p, cudaStream_t stream);

}  // namespace tpcomm::quant
