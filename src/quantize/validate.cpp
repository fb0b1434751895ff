// Names, parsing, scale-buffer sizes and argument validation for the quantization API (no CUDA work here,
// except sm_count()).
#include "quantize/validate.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "common/check.h"
#include "tpcomm/error.h"

namespace tpcomm::quant {

const char* fp8_format_name(Fp8Format f) noexcept {
  switch (f) {
    case Fp8Format::kE4M3: return "e4m3";
    case Fp8Format::kE5M2: return "e5m2";
  }
  return "unknown";
}

const char* fp8_scaling_name(Fp8Scaling s) noexcept {
  switch (s) {
    case Fp8Scaling::kTensorwise: return "tensorwise";
    case Fp8Scaling::kRowwise: return "rowwise";
    case Fp8Scaling::kColwise: return "colwise";
    case Fp8Scaling::kBlock1x128: return "1x128";
    case Fp8Scaling::kBlock128x128: return "128x128";
  }
  return "unknown";
}

const char* e8m0_rounding_name(E8M0Rounding r) noexcept {
  switch (r) {
    case E8M0Rounding::kFloor: return "floor";
    case E8M0Rounding::kRceil: return "rceil";
  }
  return "unknown";
}

const char* scale_layout_name(ScaleLayout l) noexcept {
  switch (l) {
    case ScaleLayout::kLinear: return "linear";
    case ScaleLayout::kSwizzled128x4: return "swizzled";
  }
  return "unknown";
}

static std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

Fp8Format parse_fp8_format(std::string_view text, const char* arg_name) {
  const std::string t = lower(text);
  if (t == "e4m3" || t == "fp8_e4m3" || t == "float8_e4m3fn") return Fp8Format::kE4M3;
  if (t == "e5m2" || t == "fp8_e5m2" || t == "float8_e5m2") return Fp8Format::kE5M2;
  throw Error(ErrorCode::kInvalidArgument, std::string(arg_name) + ": unknown fp8 format '" + std::string(text) + "'");
}

E8M0Rounding parse_e8m0_rounding(std::string_view text, const char* arg_name) {
  const std::string t = lower(text);
  if (t == "floor") return E8M0Rounding::kFloor;
  if (t == "rceil") return E8M0Rounding::kRceil;
  throw Error(ErrorCode::kInvalidArgument, std::string(arg_name) + ": unknown E8M0 rounding '" + std::string(text) +
                                               "' (floor|rceil)");
}

ScaleLayout parse_scale_layout(std::string_view text, const char* arg_name) {
  const std::string t = lower(text);
  if (t == "linear") return ScaleLayout::kLinear;
  if (t == "swizzled" || t == "swizzled128x4" || t == "128x4") return ScaleLayout::kSwizzled128x4;
  throw Error(ErrorCode::kInvalidArgument, std::string(arg_name) + ": unknown scale layout '" + std::string(text) +
                                               "' (linear|swizzled)");
}

float fp8_max(Fp8Format f) noexcept { return f == Fp8Format::kE5M2 ? 57344.0f : 448.0f; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t fp8_scale_count(int64_t rows, int64_t cols, Fp8Scaling scaling, int64_t scale_ld) {
  switch (scaling) {
    case Fp8Scaling::kTensorwise: return 1;
    case Fp8Scaling::kRowwise: return rows;
    case Fp8Scaling::kColwise: return cols;
    case Fp8Scaling::kBlock1x128: {
      const int64_t ld = scale_ld ? scale_ld : rows;
      const int64_t nb = ceil_div(cols, 128);
      return nb == 0 ? 0 : (nb - 1) * ld + rows;
    }
    case Fp8Scaling::kBlock128x128: {
      const int64_t nb = ceil_div(cols, 128);
      const int64_t ld = scale_ld ? scale_ld : nb;
      const int64_t mb = ceil_div(rows, 128);
      return mb == 0 ? 0 : (mb - 1) * ld + nb;
    }
  }
  throw Error(ErrorCode::kInvalidArgument, "scaling: unknown value " + std::to_string(static_cast<int>(scaling)));
}

int64_t mxfp8_row_scale_bytes(int64_t experts, int64_t rows, int64_t cols, ScaleLayout layout) {
  if (layout == ScaleLayout::kSwizzled128x4) return experts * swizzled_scale_count(rows, cols / 32);
  return experts * rows * (cols / 32);
}

int64_t mxfp8_col_scale_bytes(int64_t experts, int64_t rows, int64_t cols, ScaleLayout layout) {
  if (layout == ScaleLayout::kSwizzled128x4) return experts * swizzled_scale_count(cols, rows / 32);
  return experts * (rows / 32) * cols;
}

int64_t nvfp4_scale_bytes(int64_t rows, int64_t cols, ScaleLayout layout) {
  if (layout == ScaleLayout::kSwizzled128x4) return swizzled_scale_count(rows, cols / 16);
  return rows * (cols / 16);
}

namespace detail {

namespace {

// Size limits every launcher relies on: each dimension < 2^31 (FP8 rowwise launches one block per row, grid.x <=
// 2^31 - 1) and at most 2^40 elements per tensor (2 TiB of bf16, above any GPU's memory). Under both, every grid
// the launchers compute fits: tile counts (rows/128 + 1)(cols/128 + 1) <= 2^26 + 2^24 + 2^24 + 1 < 2^31, the
// 32-bit tile numbers of fast_div.h included; elementwise grids <= 2^40 / 8 / 1024 = 2^27 blocks; the two-pass
// colwise grid cols / 256 < 2^23. And no byte count below overflows int64.
constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxElements = int64_t(1) << 40;

void check_dim_limit(int64_t v, const char* name) {
  TPCOMM_ARG_CHECK(v <= kMaxDim, name, "must be < 2^31, got " + std::to_string(v));
}

// experts x rows x cols <= kMaxElements (each factor already in [0, kMaxDim]); `name` is the dimension named.
void check_elements(int64_t experts, int64_t rows, int64_t cols, const char* name) {
  const auto n = static_cast<unsigned __int128>(experts) * static_cast<unsigned __int128>(rows) *
                 static_cast<unsigned __int128>(cols);
  TPCOMM_ARG_CHECK(n <= static_cast<unsigned __int128>(kMaxElements), name,
                   "tensor too large: " + std::to_string(experts) + " x " + std::to_string(rows) + " x " +
                       std::to_string(cols) + " elements exceed 2^40");
}

// A device buffer as [p, p + bytes); written: the call writes it. Two buffers of one call may share bytes only if
// neither is written: kernels read their inputs while other blocks write their outputs, so an output overlapping
// an input or another output gives undefined results (there is no in-place quantization).
struct Span {
  const void* p;
  int64_t bytes;
  const char* name;
  bool written;
};

void check_disjoint(std::initializer_list<Span> spans) {
  for (auto a = spans.begin(); a != spans.end(); ++a)
    for (auto b = a + 1; b != spans.end(); ++b) {
      if (!a->written && !b->written) continue;
      if (a->p == nullptr || b->p == nullptr || a->bytes <= 0 || b->bytes <= 0) continue;
      const auto pa = static_cast<unsigned __int128>(reinterpret_cast<uintptr_t>(a->p));
      const auto pb = static_cast<unsigned __int128>(reinterpret_cast<uintptr_t>(b->p));
      if (pa < pb + static_cast<uint64_t>(b->bytes) && pb < pa + static_cast<uint64_t>(a->bytes)) {
        const Span& w = b->written ? *b : *a;  // name a written buffer
        const Span& o = b->written ? *a : *b;
        TPCOMM_ARG_CHECK(false, w.name, std::string("overlaps ") + o.name + " (" + std::to_string(w.bytes) + " and " +
                                            std::to_string(o.bytes) + " bytes); buffers a call writes must not overlap"
                                            " any other buffer of the call");
      }
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_ptr(const void* p, const char* name) {
  TPCOMM_ARG_CHECK(p != nullptr, name, "must not be null");
  TPCOMM_ARG_CHECK(aligned16(p), name, "must be 16-byte aligned");
}

void check_input_dtype(DType d) {
  TPCOMM_ARG_CHECK(d == DType::kBFloat16, "input_dtype",
                   std::string("only bf16 input is supported, got ") + dtype_name(d));
}

void check_output_dtype(DType d) {
  TPCOMM_ARG_CHECK(d == DType::kBFloat16 || d == DType::kFloat32, "output_dtype",
                   std::string("must be bf16 or f32, got ") + dtype_name(d));
}

void check_format(Fp8Format f) {
  TPCOMM_ARG_CHECK(f == Fp8Format::kE4M3 || f == Fp8Format::kE5M2, "format",
                   "unknown value " + std::to_string(static_cast<int>(f)));
}

void check_layout(ScaleLayout l) {
  TPCOMM_ARG_CHECK(l == ScaleLayout::kLinear || l == ScaleLayout::kSwizzled128x4, "scale_layout",
                   "unknown value " + std::to_string(static_cast<int>(l)));
}

void check_dims(int64_t rows, int64_t cols) {
  TPCOMM_ARG_CHECK(rows >= 0, "rows", "must be >= 0, got " + std::to_string(rows));
  TPCOMM_ARG_CHECK(cols >= 0, "cols", "must be >= 0, got " + std::to_string(cols));
  check_dim_limit(rows, "rows");
  check_dim_limit(cols, "cols");
}

void check_multiple(int64_t v, int64_t m, const char* name, const char* why) {
  TPCOMM_ARG_CHECK(v % m == 0, name,
                   "must be a multiple of " + std::to_string(m) + " (" + why + "), got " + std::to_string(v));
}

void check_fp8_ld(int64_t rows, int64_t cols, Fp8Scaling scaling, int64_t scale_ld) {
  TPCOMM_ARG_CHECK(scale_ld >= 0, "scale_ld", "must be >= 0");
  check_dim_limit(scale_ld, "scale_ld");
  if (scaling == Fp8Scaling::kBlock1x128 && scale_ld != 0)
    TPCOMM_ARG_CHECK(scale_ld >= rows, "scale_ld", "must be >= rows (" + std::to_string(rows) + ") for 1x128");
  if (scaling == Fp8Scaling::kBlock128x128 && scale_ld != 0)
    TPCOMM_ARG_CHECK(scale_ld >= ceil_div(cols, 128), "scale_ld",
                     "must be >= ceil(cols/128) (" + std::to_string(ceil_div(cols, 128)) + ") for 128x128");
}

void check_scaling(Fp8Scaling s) {
  TPCOMM_ARG_CHECK(static_cast<int>(s) >= 0 && static_cast<int>(s) <= 4, "scaling",
                   "unknown value " + std::to_string(static_cast<int>(s)));
}

}  // namespace

void validate(const Fp8QuantizeParams& p) {
  check_input_dtype(p.input_dtype);
  check_format(p.format);
  check_scaling(p.scaling);
  check_dims(p.rows, p.cols);
  check_multiple(p.cols, 8, "cols", "16-byte vectors of bf16");
  check_elements(1, p.rows, p.cols, "rows");
  check_fp8_ld(p.rows, p.cols, p.scaling, p.scale_ld);
  if (p.rows == 0 || p.cols == 0) return;
  check_ptr(p.input, "input");
  check_ptr(p.output, "output");
  check_ptr(p.scale_inv, "scale_inv");
  if (p.scaling == Fp8Scaling::kTensorwise) {
    TPCOMM_ARG_CHECK(p.amax_in != nullptr || p.amax_out != nullptr, "amax_out",
                     "tensorwise scaling needs amax_in (precomputed) or amax_out (where the amax is computed)");
    if (p.amax_in) TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.amax_in) & 3u) == 0, "amax_in", "must be 4-byte aligned");
    if (p.amax_out) TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.amax_out) & 3u) == 0, "amax_out", "must be 4-byte aligned");
  } else {
    TPCOMM_ARG_CHECK(p.amax_in == nullptr, "amax_in", "only used with tensorwise scaling");
  }
  if (p.scaling == Fp8Scaling::kColwise) check_ptr(p.amax_out, "amax_out");
  if (p.transpose_output) {
    TPCOMM_ARG_CHECK(p.scaling == Fp8Scaling::kColwise, "transpose_output",
                     std::string("only with colwise scaling (got ") + fp8_scaling_name(p.scaling) + ")");
    check_multiple(p.rows, 16, "rows", "16-byte rows of the transposed output");
  }
  const int64_t n = p.rows * p.cols;
  // amax_out is written when the amax is computed: tensorwise without amax_in ([1]) and colwise ([cols]).
  const bool tensor = p.scaling == Fp8Scaling::kTensorwise;
  const int64_t amax_bytes = tensor ? (p.amax_in ? 0 : 4) : (p.scaling == Fp8Scaling::kColwise ? p.cols * 4 : 0);
  check_disjoint({{p.input, n * 2, "input", false},
                  {tensor ? p.amax_in : nullptr, 4, "amax_in", false},
                  {p.output, n, "output", true},
                  {p.scale_inv, fp8_scale_count(p.rows, p.cols, p.scaling, p.scale_ld) * 4, "scale_inv", true},
                  {p.amax_out, amax_bytes, "amax_out", true}});
}

void validate(const Fp8DequantizeParams& p) {
  check_output_dtype(p.output_dtype);
  check_format(p.format);
  check_scaling(p.scaling);
  check_dims(p.rows, p.cols);
  check_multiple(p.cols, 8, "cols", "8-element vectors");
  check_elements(1, p.rows, p.cols, "rows");
  check_fp8_ld(p.rows, p.cols, p.scaling, p.scale_ld);
  if (p.rows == 0 || p.cols == 0) return;
  check_ptr(p.input, "input");
  check_ptr(p.output, "output");
  check_ptr(p.scale_inv, "scale_inv");
  const int64_t n = p.rows * p.cols;
  check_disjoint({{p.input, n, "input", false},
                  {p.scale_inv, fp8_scale_count(p.rows, p.cols, p.scaling, p.scale_ld) * 4, "scale_inv", false},
                  {p.output, n * static_cast<int64_t>(dtype_size(p.output_dtype)), "output", true}});
}

void validate(const Mxfp8QuantizeParams& p) {
  check_input_dtype(p.input_dtype);
  check_format(p.format);
  check_layout(p.scale_layout);
  TPCOMM_ARG_CHECK(p.rounding == E8M0Rounding::kFloor || p.rounding == E8M0Rounding::kRceil, "rounding",
                   "unknown value " + std::to_string(static_cast<int>(p.rounding)));
  TPCOMM_ARG_CHECK(p.experts >= 1, "experts", "must be >= 1, got " + std::to_string(p.experts));
  check_dim_limit(p.experts, "experts");
  check_dims(p.rows, p.cols);
  check_elements(p.experts, p.rows, p.cols, "experts");
  const bool row = p.row_data != nullptr || p.row_scales != nullptr;
  const bool col = p.col_data != nullptr || p.col_scales != nullptr;
  TPCOMM_ARG_CHECK(row || col, "row_data", "no output requested (set row_data/row_scales and/or col_data/col_scales)");
  if (row) check_multiple(p.cols, 32, "cols", "rowwise MXFP8 blocks are 1x32 along cols");
  else check_multiple(p.cols, 8, "cols", "16-byte vectors of bf16");
  if (col) check_multiple(p.rows, 32, "rows", "colwise MXFP8 blocks are 32x1 along rows");
  if (p.rows == 0 || p.cols == 0) return;
  TPCOMM_ARG_CHECK(p.experts * ((p.rows + 127) / 128) * ((p.cols + 127) / 128) < (int64_t(1) << 31), "experts",
                   "tensor too large (more than 2^31 128x128 tiles)");
  check_ptr(p.input, "input");
  if (row) {
    check_ptr(p.row_data, "row_data");
    check_ptr(p.row_scales, "row_scales");
  }
  if (col) {
    check_ptr(p.col_data, "col_data");
    check_ptr(p.col_scales, "col_scales");
  }
  const int64_t n = p.experts * p.rows * p.cols;
  check_disjoint({{p.input, n * 2, "input", false},
                  {p.row_data, row ? n : 0, "row_data", true},
                  {p.row_scales, row ? mxfp8_row_scale_bytes(p.experts, p.rows, p.cols, p.scale_layout) : 0,
                   "row_scales", true},
                  {p.col_data, col ? n : 0, "col_data", true},
                  {p.col_scales, col ? mxfp8_col_scale_bytes(p.experts, p.rows, p.cols, p.scale_layout) : 0,
                   "col_scales", true}});
}

void validate(const Mxfp8DequantizeParams& p) {
  check_output_dtype(p.output_dtype);
  check_format(p.format);
  check_layout(p.scale_layout);
  TPCOMM_ARG_CHECK(p.axis == Mxfp8Axis::kRowwise || p.axis == Mxfp8Axis::kColwise, "axis",
                   "unknown value " + std::to_string(static_cast<int>(p.axis)));
  TPCOMM_ARG_CHECK(p.experts >= 1, "experts", "must be >= 1, got " + std::to_string(p.experts));
  check_dim_limit(p.experts, "experts");
  check_dims(p.rows, p.cols);
  check_elements(p.experts, p.rows, p.cols, "experts");
  if (p.axis == Mxfp8Axis::kRowwise) {
    check_multiple(p.cols, 32, "cols", "rowwise MXFP8 blocks are 1x32 along cols");
  } else {
    check_multiple(p.rows, 32, "rows", "colwise MXFP8 blocks are 32x1 along rows");
  }
  if (p.rows == 0 || p.cols == 0) return;
  check_ptr(p.data, "data");
  check_ptr(p.scales, "scales");
  check_ptr(p.output, "output");
  const int64_t n = p.experts * p.rows * p.cols;
  const int64_t scale_bytes = p.axis == Mxfp8Axis::kRowwise
                                  ? mxfp8_row_scale_bytes(p.experts, p.rows, p.cols, p.scale_layout)
                                  : mxfp8_col_scale_bytes(p.experts, p.rows, p.cols, p.scale_layout);
  check_disjoint({{p.data, n, "data", false},
                  {p.scales, scale_bytes, "scales", false},
                  {p.output, n * static_cast<int64_t>(dtype_size(p.output_dtype)), "output", true}});
}

void validate(const Nvfp4QuantizeParams& p) {
  check_input_dtype(p.input_dtype);
  check_layout(p.scale_layout);
  TPCOMM_ARG_CHECK(p.block == Nvfp4Block::k1x16 || p.block == Nvfp4Block::k16x16, "block",
                   "unknown value " + std::to_string(static_cast<int>(p.block)));
  check_dims(p.rows, p.cols);
  check_multiple(p.cols, 16, "cols", "NVFP4 blocks are 16 wide");
  if (p.block == Nvfp4Block::k16x16) check_multiple(p.rows, 16, "rows", "16x16 NVFP4 blocks");
  check_elements(1, p.rows, p.cols, "rows");
  if (p.rows == 0 || p.cols == 0) return;
  check_ptr(p.input, "input");
  check_ptr(p.output, "output");
  check_ptr(p.block_scales, "block_scales");
  TPCOMM_ARG_CHECK(p.global_amax_in != nullptr || p.global_amax_out != nullptr, "global_amax_out",
                   "needs global_amax_in (precomputed) or global_amax_out (where the amax is computed)");
  if (p.global_amax_in)
    TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.global_amax_in) & 3u) == 0, "global_amax_in", "must be 4-byte aligned");
  if (p.global_amax_out)
    TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.global_amax_out) & 3u) == 0, "global_amax_out",
                     "must be 4-byte aligned");
  if (p.global_scale_inv)
    TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.global_scale_inv) & 3u) == 0, "global_scale_inv",
                     "must be 4-byte aligned");
  const int64_t n = p.rows * p.cols;
  check_disjoint({{p.input, n * 2, "input", false},
                  {p.global_amax_in, 4, "global_amax_in", false},
                  {p.output, n / 2, "output", true},
                  {p.block_scales, nvfp4_scale_bytes(p.rows, p.cols, p.scale_layout), "block_scales", true},
                  {p.global_amax_in ? nullptr : p.global_amax_out, 4, "global_amax_out", true},
                  {p.global_scale_inv, 4, "global_scale_inv", true}});
}

void validate(const Nvfp4DequantizeParams& p) {
  check_output_dtype(p.output_dtype);
  check_layout(p.scale_layout);
  check_dims(p.rows, p.cols);
  check_multiple(p.cols, 16, "cols", "NVFP4 blocks are 16 wide");
  check_elements(1, p.rows, p.cols, "rows");
  if (p.rows == 0 || p.cols == 0) return;
  check_ptr(p.input, "input");
  check_ptr(p.block_scales, "block_scales");
  check_ptr(p.output, "output");
  TPCOMM_ARG_CHECK(p.global_scale_inv != nullptr, "global_scale_inv", "must not be null");
  TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(p.global_scale_inv) & 3u) == 0, "global_scale_inv",
                   "must be 4-byte aligned");
  const int64_t n = p.rows * p.cols;
  check_disjoint({{p.input, n / 2, "input", false},
                  {p.block_scales, nvfp4_scale_bytes(p.rows, p.cols, p.scale_layout), "block_scales", false},
                  {p.global_scale_inv, 4, "global_scale_inv", false},
                  {p.output, n * static_cast<int64_t>(dtype_size(p.output_dtype)), "output", true}});
}

void validate_amax(const void* input, DType input_dtype, int64_t count, const float* amax_out) {
  check_input_dtype(input_dtype);
  TPCOMM_ARG_CHECK(count >= 0, "count", "must be >= 0");
  TPCOMM_ARG_CHECK(count <= kMaxElements, "count", "must be <= 2^40, got " + std::to_string(count));
  check_multiple(count, 8, "count", "16-byte vectors of bf16");
  TPCOMM_ARG_CHECK(amax_out != nullptr, "amax_out", "must not be null");
  TPCOMM_ARG_CHECK((reinterpret_cast<uintptr_t>(amax_out) & 3u) == 0, "amax_out", "must be 4-byte aligned");
  if (count > 0) check_ptr(input, "input");
  check_disjoint({{input, count * 2, "input", false}, {amax_out, 4, "amax_out", true}});
}

int sm_count() {
  static std::mutex mu;
  static std::vector<int> cache;
  int dev = 0;
  TPCOMM_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(cache.size()) <= dev) cache.resize(dev + 1, 0);
  if (cache[dev] == 0) TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&cache[dev], cudaDevAttrMultiProcessorCount, dev));
  return cache[dev];
}

}  // namespace detail
}  // namespace tpcomm::quant
