// CPU reference implementation of docs/quantize.md. Deliberately simple and scalar.
#include "quant_ref.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace tpcomm::quant::ref {

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Minifloat {
  int mbits;      // mantissa bits
  int bias;
  int emin;       // exponent of the smallest normal
  double maxval;  // largest finite value
};

Minifloat spec(Fp8Format f) {
  if (f == Fp8Format::kE4M3) return {3, 7, -6, 448.0};
  return {2, 15, -14, 57344.0};
}
constexpr Minifloat kE2M1{1, 1, 0, 6.0};

// Round a >= 0 (finite) to the format with round-half-even and saturate at maxval. Returns the encoded magnitude
// bits (exponent field << mbits | mantissa).
uint32_t encode_magnitude(double a, const Minifloat& m) {
  if (a == 0.0) return 0;
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1) -> floor(log2 a) = e - 1
  int ex = e - 1;
  if (ex < m.emin) ex = m.emin;  // subnormal range: fixed quantum
  const double quantum = std::ldexp(1.0, ex - m.mbits);
  const double r = a / quantum;  // exact: power-of-two division of a double holding a float
  double n = std::floor(r);
  const double frac = r - n;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(n, 2.0) != 0.0)) n += 1.0;
  double v = n * quantum;
  if (v > m.maxval) v = m.maxval;
  if (v == 0.0) return 0;
  std::frexp(v, &e);
  ex = e - 1;
  if (ex < m.emin) {  // subnormal: exponent field 0
    return static_cast<uint32_t>(std::llround(v / std::ldexp(1.0, m.emin - m.mbits)));
  }
  const double mant = (v / std::ldexp(1.0, ex) - 1.0) * std::ldexp(1.0, m.mbits);
  return static_cast<uint32_t>((ex + m.bias) << m.mbits) | static_cast<uint32_t>(std::llround(mant));
}

double decode_magnitude(uint32_t bits, const Minifloat& m) {
  const uint32_t ef = bits >> m.mbits;
  const uint32_t mant = bits & ((1u << m.mbits) - 1);
  if (ef == 0) return std::ldexp(static_cast<double>(mant), m.emin - m.mbits);
  return std::ldexp(1.0 + std::ldexp(static_cast<double>(mant), -m.mbits), static_cast<int>(ef) - m.bias);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint32_t out_bits(float v, DType dt) {
  return dt == DType::kFloat32 ? float_to_f32_bits(v) : static_cast<uint32_t>(float_to_bf16(v));
}

}  // namespace

// ---- scalar helpers -------------------------------------------------------------------------------------------------
uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fff;
  const uint32_t u = float_bits(f);
  const uint32_t lower = u & 0xffffu;
  uint32_t upper = u >> 16;
  if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) upper += 1;  // overflow into Inf is IEEE RNE
  return static_cast<uint16_t>(upper);
}

uint32_t float_to_f32_bits(float f) { return std::isnan(f) ? 0x7fffffffu : float_bits(f); }

uint8_t fp8_encode(float v, Fp8Format fmt) {
  if (std::isnan(v)) return 0x7f;
  const Minifloat m = spec(fmt);
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(v));
  const uint32_t mag = std::isinf(a) ? encode_magnitude(m.maxval, m) : encode_magnitude(a, m);
  return static_cast<uint8_t>(sign | mag);
}

float fp8_decode(uint8_t code, Fp8Format fmt) {
  const Minifloat m = spec(fmt);
  const uint32_t mag = code & 0x7fu;
  const bool neg = code & 0x80u;
  if (fmt == Fp8Format::kE4M3) {
    if (mag == 0x7f) return kNaN;
  } else {
    if ((mag >> 2) == 0x1f) {
      if ((mag & 3u) != 0) return kNaN;
      return neg ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
    }
  }
  const float v = static_cast<float>(decode_magnitude(mag, m));
  return neg ? -v : v;
}

uint8_t e2m1_encode_magnitude(float a) {
  if (std::isnan(a)) return 7;
  const double x = std::fabs(static_cast<double>(a));
  if (std::isinf(x)) return 7;
  return static_cast<uint8_t>(encode_magnitude(x, kE2M1));
}

float e2m1_decode(uint8_t nibble) {
  const float v = static_cast<float>(decode_magnitude(nibble & 7u, kE2M1));
  return (nibble & 8u) ? -v : v;
}

uint8_t e8m0_select(float amax, Fp8Format fmt, E8M0Rounding r) {
  if (!std::isfinite(amax)) return 0xff;
  const double a = std::fabs(static_cast<double>(amax));
  const int emax = fmt == Fp8Format::kE4M3 ? 8 : 15;
  const double maxval = spec(fmt).maxval;
  int s;
  if (r == E8M0Rounding::kFloor) {
    // floor(log2 amax) read from the fp32 exponent field: -127 for zero and fp32 subnormals.
    int e;
    if (a < static_cast<double>(FLT_MIN)) {
      e = -127;
    } else {
      std::frexp(a, &e);
      e -= 1;
    }
    s = e - emax;
  } else {
    // Smallest power of two 2^s with 2^s * max >= amax.
    s = -127;
    while (s < 127 && std::ldexp(maxval, s) < a) ++s;
  }
  if (s < -127) s = -127;
  if (s > 127) s = 127;
  return static_cast<uint8_t>(s + 127);
}

float e8m0_decode(uint8_t code) {
  if (code == 0xff) return kNaN;
  return static_cast<float>(std::ldexp(1.0, static_cast<int>(code) - 127));
}

float fp8_quant_scale(float amax, Fp8Format fmt, bool pow2) {
  const double a = static_cast<double>(amax);
  const double clamped = std::isnan(a) ? a : std::max(a, 1e-12);
  float s = static_cast<float>(spec(fmt).maxval / clamped);
  if (pow2 && s > 0.0f && std::isfinite(s)) s = static_cast<float>(std::exp2(std::floor(std::log2(static_cast<double>(s)))));
  return s;
}

float nvfp4_global_encode_scale(float amax) {
  amax = std::fabs(amax);  // docs/quantize.md: a negative given amax counts by magnitude
  float s = 2688.0f / amax;
  s = std::fmin(s, FLT_MAX);
  if (amax == 0.0f || s == 0.0f) s = 1.0f;
  return s;
}

float amax_of(const uint16_t* x, int64_t n, int64_t stride) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = bf16_to_float(x[i * stride]);
    if (std::isnan(v)) nan = true;
    else m = std::max(m, std::fabs(v));
  }
  return nan ? kNaN : m;
}

int64_t swizzle_offset(int64_t row, int64_t col, int64_t cols) {
  // Tiles of 128 rows x 4 columns, 512 bytes each, ordered row-tile-major. Inside a tile, row r sits in
  // "sub-row" r % 32 (16 bytes each) and "sub-tile" r / 32 (4 bytes each), then the column.
  const int64_t tiles_per_row = (cols + 3) / 4;
  const int64_t tile = (row / 128) * tiles_per_row + (col / 4);
  const int64_t r = row % 128;
  return tile * 512 + (r % 32) * 16 + (r / 32) * 4 + (col % 4);
}

int64_t swizzle_count(int64_t rows, int64_t cols) { return ceil_div(rows, 128) * 128 * ceil_div(cols, 4) * 4; }

// ---- FP8 ------------------------------------------------------------------------------------------------------------
Fp8Out fp8_quantize(const std::vector<uint16_t>& in, int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling scaling,
                    bool pow2, int64_t scale_ld, const float* amax_in) {
  Fp8Out o;
  o.data.assign(static_cast<size_t>(rows * cols), 0);
  const int64_t nb = ceil_div(cols, 128), mb = ceil_div(rows, 128);
  int64_t ld = scale_ld;
  if (ld == 0) ld = scaling == Fp8Scaling::kBlock1x128 ? rows : nb;
  o.scale_inv.assign(static_cast<size_t>(fp8_scale_count(rows, cols, scaling, scale_ld)), 0.0f);
  auto cast = [&](int64_t i, float qs) {
    const float prod = static_cast<float>(static_cast<double>(bf16_to_float(in[i])) * static_cast<double>(qs));
    o.data[i] = fp8_encode(prod, fmt);
  };
  switch (scaling) {
    case Fp8Scaling::kTensorwise: {
      const float amax = amax_in ? *amax_in : amax_of(in.data(), rows * cols);
      if (!amax_in) o.amax = {amax};
      const float qs = fp8_quant_scale(amax, fmt, pow2);
      o.scale_inv[0] = 1.0f / qs;
      for (int64_t i = 0; i < rows * cols; ++i) cast(i, qs);
      break;
    }
    case Fp8Scaling::kRowwise:
      for (int64_t r = 0; r < rows; ++r) {
        const float qs = fp8_quant_scale(amax_of(&in[r * cols], cols), fmt, pow2);
        o.scale_inv[r] = 1.0f / qs;
        for (int64_t c = 0; c < cols; ++c) cast(r * cols + c, qs);
      }
      break;
    case Fp8Scaling::kColwise:
      o.amax.assign(static_cast<size_t>(cols), 0.0f);
      for (int64_t c = 0; c < cols; ++c) {
        const float amax = amax_of(&in[c], rows, cols);
        o.amax[c] = amax;
        const float qs = fp8_quant_scale(amax, fmt, pow2);
        o.scale_inv[c] = 1.0f / qs;
        for (int64_t r = 0; r < rows; ++r) cast(r * cols + c, qs);
      }
      break;
    case Fp8Scaling::kBlock1x128:
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t c0 = b * 128, n = std::min<int64_t>(128, cols - c0);
          const float qs = fp8_quant_scale(amax_of(&in[r * cols + c0], n), fmt, pow2);
          o.scale_inv[b * ld + r] = 1.0f / qs;
          for (int64_t c = c0; c < c0 + n; ++c) cast(r * cols + c, qs);
        }
      break;
    case Fp8Scaling::kBlock128x128:
      for (int64_t bi = 0; bi < mb; ++bi)
        for (int64_t bj = 0; bj < nb; ++bj) {
          const int64_t r0 = bi * 128, c0 = bj * 128;
          const int64_t r1 = std::min(rows, r0 + 128), c1 = std::min(cols, c0 + 128);
          float amax = 0.0f;
          bool nan = false;
          for (int64_t r = r0; r < r1; ++r) {
            const float a = amax_of(&in[r * cols + c0], c1 - c0);
            if (std::isnan(a)) nan = true;
            else amax = std::max(amax, a);
          }
          if (nan) amax = kNaN;
          const float qs = fp8_quant_scale(amax, fmt, pow2);
          o.scale_inv[bi * ld + bj] = 1.0f / qs;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = c0; c < c1; ++c) cast(r * cols + c, qs);
        }
      break;
  }
  return o;
}

std::vector<uint32_t> fp8_dequantize(const std::vector<uint8_t>& q, int64_t rows, int64_t cols, Fp8Format fmt,
                                     Fp8Scaling scaling, const std::vector<float>& scale_inv, int64_t scale_ld,
                                     DType out_dtype) {
  const int64_t nb = ceil_div(cols, 128);
  int64_t ld = scale_ld;
  if (ld == 0) ld = scaling == Fp8Scaling::kBlock1x128 ? rows : nb;
  std::vector<uint32_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float s = 0;
      switch (scaling) {
        case Fp8Scaling::kTensorwise: s = scale_inv[0]; break;
        case Fp8Scaling::kRowwise: s = scale_inv[r]; break;
        case Fp8Scaling::kColwise: s = scale_inv[c]; break;
        case Fp8Scaling::kBlock1x128: s = scale_inv[(c / 128) * ld + r]; break;
        case Fp8Scaling::kBlock128x128: s = scale_inv[(r / 128) * ld + c / 128]; break;
      }
      const float v = fp8_decode(q[r * cols + c], fmt) * s;
      out[r * cols + c] = out_bits(v, out_dtype);
    }
  return out;
}

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
namespace {
uint8_t mx_element(uint16_t x, uint8_t code, Fp8Format fmt) {
  if (code == 0xff) return 0x7f;
  const double mult = std::ldexp(1.0, 127 - static_cast<int>(code));
  const float prod = static_cast<float>(static_cast<double>(bf16_to_float(x)) * mult);
  return fp8_encode(prod, fmt);
}
}  // namespace

Mxfp8Out mxfp8_quantize(const std::vector<uint16_t>& in, int64_t experts, int64_t rows, int64_t cols, Fp8Format fmt,
                        E8M0Rounding rounding, ScaleLayout layout, bool rowwise, bool colwise) {
  Mxfp8Out o;
  const bool swz = layout == ScaleLayout::kSwizzled128x4;
  const int64_t N = rows, K = cols;
  if (rowwise) {
    const int64_t gk = K / 32;
    o.row_data.assign(static_cast<size_t>(experts * N * K), 0);
    const int64_t per_expert = swz ? swizzle_count(N, gk) : N * gk;
    o.row_scales.assign(static_cast<size_t>(experts * per_expert), 0);
    for (int64_t e = 0; e < experts; ++e)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < gk; ++g) {
          const int64_t base = (e * N + n) * K + g * 32;
          const uint8_t code = e8m0_select(amax_of(&in[base], 32), fmt, rounding);
          const int64_t sidx = e * per_expert + (swz ? swizzle_offset(n, g, gk) : n * gk + g);
          o.row_scales[sidx] = code;
          for (int64_t j = 0; j < 32; ++j) o.row_data[base + j] = mx_element(in[base + j], code, fmt);
        }
  }
  if (colwise) {
    const int64_t gn = N / 32;
    o.col_data.assign(static_cast<size_t>(experts * N * K), 0);
    const int64_t per_expert = swz ? swizzle_count(K, gn) : gn * K;
    o.col_scales.assign(static_cast<size_t>(experts * per_expert), 0);
    for (int64_t e = 0; e < experts; ++e)
      for (int64_t g = 0; g < gn; ++g)
        for (int64_t k = 0; k < K; ++k) {
          const uint16_t* col0 = &in[(e * N + g * 32) * K + k];
          const uint8_t code = e8m0_select(amax_of(col0, 32, K), fmt, rounding);
          const int64_t sidx = e * per_expert + (swz ? swizzle_offset(k, g, gn) : g * K + k);
          o.col_scales[sidx] = code;
          for (int64_t j = 0; j < 32; ++j) {
            const int64_t n = g * 32 + j;
            o.col_data[e * N * K + k * N + n] = mx_element(col0[j * K], code, fmt);
          }
        }
  }
  return o;
}

std::vector<uint32_t> mxfp8_dequantize(const std::vector<uint8_t>& data, const std::vector<uint8_t>& scales,
                                       Mxfp8Axis axis, int64_t experts, int64_t rows, int64_t cols, Fp8Format fmt,
                                       ScaleLayout layout, DType out_dtype) {
  const bool swz = layout == ScaleLayout::kSwizzled128x4;
  const int64_t N = rows, K = cols;
  std::vector<uint32_t> out(static_cast<size_t>(experts * N * K));
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        int64_t didx, sidx;
        if (axis == Mxfp8Axis::kRowwise) {
          const int64_t gk = K / 32;
          didx = (e * N + n) * K + k;
          sidx = swz ? e * swizzle_count(N, gk) + swizzle_offset(n, k / 32, gk) : (e * N + n) * gk + k / 32;
        } else {
          const int64_t gn = N / 32;
          didx = e * N * K + k * N + n;
          sidx = swz ? e * swizzle_count(K, gn) + swizzle_offset(k, n / 32, gn) : (e * gn + n / 32) * K + k;
        }
        const float v = fp8_decode(data[didx], fmt) * e8m0_decode(scales[sidx]);
        out[didx] = out_bits(v, out_dtype);
      }
  return out;
}

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
Nvfp4Out nvfp4_quantize(const std::vector<uint16_t>& in, int64_t rows, int64_t cols, Nvfp4Block block,
                        ScaleLayout layout, const float* amax_in) {
  Nvfp4Out o;
  const bool swz = layout == ScaleLayout::kSwizzled128x4;
  const int64_t gk = cols / 16;
  o.amax = amax_in ? *amax_in : amax_of(in.data(), rows * cols);
  const float s_enc = nvfp4_global_encode_scale(o.amax);
  const float s_dec = 1.0f / s_enc;
  o.global_scale_inv = s_dec;
  const float coef = s_enc * (1.0f / 6.0f);
  o.data.assign(static_cast<size_t>(rows * cols / 2), 0);
  o.scales.assign(static_cast<size_t>(swz ? swizzle_count(rows, gk) : rows * gk), 0);
  const int64_t brows = block == Nvfp4Block::k16x16 ? 16 : 1;
  for (int64_t r0 = 0; r0 < rows; r0 += brows)
    for (int64_t g = 0; g < gk; ++g) {
      float bamax = 0.0f;
      bool nan = false;
      for (int64_t r = r0; r < r0 + brows; ++r) {
        const float a = amax_of(&in[r * cols + g * 16], 16);
        if (std::isnan(a)) nan = true;
        else bamax = std::max(bamax, a);
      }
      if (nan) bamax = kNaN;
      const float sb_value = bamax * coef;
      const uint8_t code = fp8_encode(sb_value, Fp8Format::kE4M3);
      const float sb = fp8_decode(code, Fp8Format::kE4M3);
      const float rcp = std::fmin(1.0f / (sb * s_dec), FLT_MAX);
      for (int64_t r = r0; r < r0 + brows; ++r) {
        o.scales[swz ? swizzle_offset(r, g, gk) : r * gk + g] = code;
        for (int64_t j = 0; j < 16; ++j) {
          const int64_t i = r * cols + g * 16 + j;
          const uint16_t x = in[i];
          const float mag = std::fabs(bf16_to_float(x)) * rcp;
          const uint8_t nib = static_cast<uint8_t>(e2m1_encode_magnitude(mag) | ((x & 0x8000u) ? 8u : 0u));
          o.data[i / 2] |= static_cast<uint8_t>((i & 1) ? (nib << 4) : nib);
        }
      }
    }
  return o;
}

std::vector<uint32_t> nvfp4_dequantize(const std::vector<uint8_t>& data, const std::vector<uint8_t>& scales,
                                       float global_scale_inv, int64_t rows, int64_t cols, ScaleLayout layout,
                                       DType out_dtype) {
  const bool swz = layout == ScaleLayout::kSwizzled128x4;
  const int64_t gk = cols / 16;
  std::vector<uint32_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const uint8_t nib = (i & 1) ? (data[i / 2] >> 4) : (data[i / 2] & 0xf);
      const float sb = fp8_decode(scales[swz ? swizzle_offset(r, c / 16, gk) : r * gk + c / 16], Fp8Format::kE4M3);
      const float v = (e2m1_decode(nib) * sb) * global_scale_inv;
      out[i] = out_bits(v, out_dtype);
    }
  return out;
}

}  // namespace tpcomm::quant::ref
