// GPU bit-exactness suite: every quantize / dequantize kernel against the CPU reference (quant_ref.h) on random
// data and on edge-case blocks (zeros, all-equal, power-of-two amax, amax = fp8_max * 2^k, subnormals, values
// past saturation, +-Inf, NaN, largest and smallest exponents, rounding ties), plus dequantization of arbitrary
// codes including E8M0 scale codes 0 / 254 / 255. Outputs are compared byte for byte (NaN scales compared as
// "both NaN"). Output buffers are pre-filled with a sentinel, so unwritten bytes and unwritten padding fail.
// The *DeterministicEdgeGroups tests put every scale-group kind into every kernel family with a fixed construction
// (edge_tensor, no seed); the *AcceptedOddShapes / RejectedShapes tests walk the limits of validate.cpp; the
// CudaGraph* tests capture every op (after a warm-up call, and as the very first call of the process).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "quantize/quant_test_params.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

#define CK(expr)                                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count, int fill = 0xcd) : n(count) {
    CK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
    CK(cudaMemset(p, fill, std::max<size_t>(1, n) * sizeof(T)));
  }
  Dev(const std::vector<T>& h) : Dev(h.size()) { CK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(p, h.data(), n * sizeof(T)))); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> get() const {
    CK(cudaDeviceSynchronize());
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void put(const std::vector<T>& h) { CK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(p, h.data(), n * sizeof(T)))); }
};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Byte/word-exact comparison; floats compare by bit pattern except that any NaN equals any NaN.
template <class T>
::testing::AssertionResult same(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << want.size();
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    bool eq;
    if constexpr (std::is_same_v<T, float>) {
      eq = bits_of(got[i]) == bits_of(want[i]) || (std::isnan(got[i]) && std::isnan(want[i]));
    } else {
      eq = got[i] == want[i];
    }
    if (!eq && bad++ == 0) first = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  auto show = [](auto v) {
    char b[64];
    if constexpr (std::is_same_v<decltype(v), float>) std::snprintf(b, sizeof b, "%a", static_cast<double>(v));
    else std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return std::string(b);
  };
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << got.size() << " differ; first at " << first
                                       << ": got " << show(got[first]) << ", want " << show(want[first]);
}

uint16_t bf(float f) { return ref::float_to_bf16(f); }

// Random bf16 with a per-32x32-block magnitude, and (optionally) edge-case 32x32 blocks.
std::vector<uint16_t> make_input(int64_t rows, int64_t cols, uint64_t seed, bool edges, bool nonfinite) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> v(static_cast<size_t>(rows * cols));
  const int64_t rb = (rows + 31) / 32, cb = (cols + 31) / 32;
  for (int64_t bi = 0; bi < rb; ++bi)
    for (int64_t bj = 0; bj < cb; ++bj) {
      const int base_e = static_cast<int>(rng.next() % 61) - 30;
      int pattern = -1;
      if (edges && rng.next() % 10 < 5) {
        pattern = static_cast<int>(rng.next() % 14);
        if (!nonfinite && (pattern == 7 || pattern == 8 || pattern == 9)) pattern = 0;
      }
      const float equal_v = static_cast<float>(rng.uniform(-3, 3)) * std::ldexp(1.0f, base_e);
      const int64_t special = static_cast<int64_t>(rng.next() % 1024);  // one position in the 32x32 block
      for (int64_t r = bi * 32; r < std::min(rows, bi * 32 + 32); ++r)
        for (int64_t c = bj * 32; c < std::min(cols, bj * 32 + 32); ++c) {
          const bool at_special = ((r % 32) * 32 + (c % 32)) == special || (r % 32 == c % 32);
          const double sgn = (rng.next() & 1) ? -1.0 : 1.0;
          float x = static_cast<float>(sgn * std::ldexp(rng.uniform(1.0, 2.0), base_e + static_cast<int>(rng.next() % 9) - 8));
          uint16_t b = bf(x);
          switch (pattern) {
            case 0: b = 0; break;                                                   // zeros
            case 1: b = bf(equal_v); break;                                         // all equal
            case 2: b = at_special ? bf(static_cast<float>(sgn) * std::ldexp(1.0f, base_e)) : bf(x * 0.25f); break;  // pow2 amax
            case 3: b = at_special ? bf(static_cast<float>(sgn) * 1.75f * std::ldexp(1.0f, base_e)) : bf(x * 0.5f); break;  // max * 2^k
            case 4: b = static_cast<uint16_t>((rng.next() & 0x807f) | 1); break;    // bf16 subnormals
            case 5: b = (rng.next() & 1) ? static_cast<uint16_t>(rng.next() & 0x807f) : static_cast<uint16_t>(0x0080 | (rng.next() & 0x807f)); break;
            case 6: b = static_cast<uint16_t>(0x7f00 | (rng.next() & 0x7f) | ((rng.next() & 1) << 15)); break;  // huge
            case 7: b = at_special ? 0x7f80 : b; break;                             // +Inf
            case 8: b = at_special ? 0xff80 : b; break;                             // -Inf
            case 9: b = at_special ? ((rng.next() & 1) ? 0x7fc0 : 0xffc1) : b; break;  // NaN
            case 10: b = (rng.next() & 1) ? static_cast<uint16_t>(0x7f7f ^ (rng.next() & 0x803f)) : static_cast<uint16_t>(0x0080 | (rng.next() & 0x807f)); break;
            case 11: b = at_special ? bf(equal_v) : ((rng.next() & 1) ? 0x8000 : 0x0000); break;  // +-0 and one value
            case 12: {  // rounding ties: multiples of 1/32 around an amax that is a power of two
              const int k = static_cast<int>(rng.next() % 64);
              b = at_special ? bf(static_cast<float>(sgn) * std::ldexp(1.0f, base_e + 3))
                             : bf(static_cast<float>(sgn) * std::ldexp(static_cast<float>(k + 32) / 32.0f, base_e));
              break;
            }
            case 13: b = at_special ? 0x7f7f : bf(x); break;                        // largest finite bf16 + normal data
            default: break;
          }
          v[static_cast<size_t>(r * cols + c)] = b;
        }
    }
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng.next());
  return v;
}

std::vector<uint32_t> to_u32(const std::vector<uint16_t>& v) { return std::vector<uint32_t>(v.begin(), v.end()); }

std::vector<uint32_t> download_out(void* p, size_t n, DType dt) {
  CK(cudaDeviceSynchronize());
  if (dt == DType::kFloat32) {
    std::vector<uint32_t> h(n);
    CK(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost));
    return h;
  }
  std::vector<uint16_t> h(n);
  CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  return to_u32(h);
}

struct Shape3 {
  int64_t e, n, k;
};

// ---- deterministic edge-case tensors -------------------------------------------------------------------------------
// Every kind of scale group the numeric rules distinguish. edge_tensor() cuts a tensor into groups of gr x gc
// elements (the scale groups of the format under test) and gives group g the kind kinds[g % K] and the exponent
// exps[(g / K) % V]: the construction is fixed (no seed), so with at least K groups every kind is present every run.
enum EdgeKind : int {
  kEdgeZero = 0,      // +-0 only (all +0 in even-numbered groups: a single-group tensor is literally all zero)
  kEdgeEqual,         // every element the same value
  kEdgePow2,          // amax a power of two: one element +-2^e, the rest below it
  kEdgeFp8Max,        // amax 1.75 * 2^e, i.e. fp8_max * 2^k for e4m3 (1.75 * 2^8) and e5m2 (1.75 * 2^15)
  kEdgeSubnormal,     // bf16 subnormals only (the largest, 0x007f, at one position)
  kEdgeSaturate,      // mantissas in [1.75, 2): past fp8_max after a floor E8M0 scale, rceil's "+1" case
  kEdgePosInf,        // one +Inf among normal values
  kEdgeNegInf,        // one -Inf among normal values
  kEdgeNaN,           // one NaN (quiet, negative quiet, signalling payload) among normal values
  kEdgeBf16Max,       // one +-0x7f7f (largest finite bf16) among normal values
  kEdgeMinSubnormal,  // one +-0x0001 (smallest bf16 subnormal) among +-0
  kEdgeTies,          // multiples of 2^(e-5) under an amax of 2^(e+3): rounding ties after scaling
  kNumEdgeKinds
};

const char* edge_kind_name(int k) {
  static const char* const names[kNumEdgeKinds] = {"zero",    "equal", "pow2", "fp8max",  "subnormal", "saturate",
                                                   "+inf",    "-inf",  "nan",  "bf16max", "minsub",    "ties"};
  return k >= 0 && k < kNumEdgeKinds ? names[k] : "?";
}

// All kinds, optionally without the non-finite ones or without the largest finite bf16.
std::vector<int> edge_kinds(bool inf, bool nan, bool bf16max = true) {
  std::vector<int> v;
  for (int k = 0; k < kNumEdgeKinds; ++k) {
    if (!inf && (k == kEdgePosInf || k == kEdgeNegInf)) continue;
    if (!nan && k == kEdgeNaN) continue;
    if (!bf16max && k == kEdgeBf16Max) continue;
    v.push_back(k);
  }
  return v;
}

// Group exponents: normal filler values stay normal down to e = -120 (2^(e-6) >= 2^-126); 124 leaves room for
// kEdgeTies' 2^(e+3).
const std::vector<int> kEdgeExps = {0, -19, 26, -120, 124};
// NVFP4: a narrow range, so that against one global amax the E4M3 block scales span normal and subnormal codes.
const std::vector<int> kNvfp4EdgeExps = {0, -3, -7, 2, -12};

// Element p of the n elements of group g (kind, exponent e). Values are exact in bf16.
uint16_t edge_value(int kind, int e, int64_t g, int64_t p, int64_t n) {
  test::SplitMix64 rng(static_cast<uint64_t>(g) * 0x100000001b3ull + static_cast<uint64_t>(p) + 1);
  const uint64_t h = rng.next();
  const bool at = p == (g * 977 + 3) % n;  // the group's special position, spread over the group
  const bool neg = (h >> 7) & 1;
  const uint16_t sbit = neg ? 0x8000 : 0x0000;
  const float sgn = neg ? -1.0f : 1.0f;
  // |filler| < 2^e, 7 mantissa bits.
  const float filler = sgn * (1.0f + static_cast<float>(h % 128) / 128.0f) *
                       std::ldexp(1.0f, e - 1 - static_cast<int>((h >> 16) % 6));
  switch (kind) {
    case kEdgeZero: return ((g & 1) && (p & 1)) ? 0x8000 : 0x0000;
    case kEdgeEqual: return bf(((g & 1) ? -1.625f : 1.625f) * std::ldexp(1.0f, e));
    case kEdgePow2: return bf(at ? sgn * std::ldexp(1.0f, e) : filler);
    case kEdgeFp8Max: return bf(at ? sgn * 1.75f * std::ldexp(1.0f, e) : filler);
    case kEdgeSubnormal: return static_cast<uint16_t>(sbit | (at ? 0x7fu : static_cast<unsigned>((h >> 24) & 0x7f)));
    case kEdgeSaturate:
      return bf(sgn * (at ? 1.9921875f : 1.75f + static_cast<float>((h >> 24) % 32) / 128.0f) * std::ldexp(1.0f, e));
    case kEdgePosInf: return at ? 0x7f80 : bf(filler);
    case kEdgeNegInf: return at ? 0xff80 : bf(filler);
    case kEdgeNaN: {
      static const uint16_t nans[3] = {0x7fc0, 0xffc1, 0x7f81};
      return at ? nans[g % 3] : bf(filler);
    }
    case kEdgeBf16Max: return at ? ((g & 1) ? 0xff7f : 0x7f7f) : bf(filler);
    case kEdgeMinSubnormal: return at ? ((g & 1) ? 0x8001 : 0x0001) : ((p & 1) ? 0x8000 : 0x0000);
    case kEdgeTies:
      return bf(sgn * (at ? std::ldexp(1.0f, e + 3)
                          : static_cast<float>(32 + (h >> 24) % 64) / 32.0f * std::ldexp(1.0f, e)));
    default: break;
  }
  return 0;
}

int64_t edge_groups(int64_t rows, int64_t cols, int64_t gr, int64_t gc) {
  return ((rows + gr - 1) / gr) * ((cols + gc - 1) / gc);
}

// rows x cols (row-major) in groups of gr x gc; partial groups at the right and bottom edges.
std::vector<uint16_t> edge_tensor(int64_t rows, int64_t cols, int64_t gr, int64_t gc, const std::vector<int>& kinds,
                                  const std::vector<int>& exps) {
  std::vector<uint16_t> v(static_cast<size_t>(rows * cols));
  const int64_t ngc = (cols + gc - 1) / gc;
  const int64_t nk = static_cast<int64_t>(kinds.size()), ne = static_cast<int64_t>(exps.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t gi = r / gr, gj = c / gc, g = gi * ngc + gj;
      const int64_t r0 = gi * gr, c0 = gj * gc;
      const int64_t h = std::min(gr, rows - r0), w = std::min(gc, cols - c0);
      v[static_cast<size_t>(r * cols + c)] =
          edge_value(kinds[static_cast<size_t>(g % nk)], exps[static_cast<size_t>((g / nk) % ne)], g,
                     (r - r0) * w + (c - c0), h * w);
    }
  return v;
}

std::string shape_tag(int64_t rows, int64_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }
std::string shape_tag(const Shape3& s) {
  return std::to_string(s.e) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k);
}

// ---- call parameters, output comparisons, dequantize checks -------------------------------------------------------
// The *_params builders set the fields that every call of that op in this file sets; the other fields keep the
// header's defaults (FP8 callers set pow2_scales, scale_ld, amax_in and amax_out themselves).
using test_params::fp8_params;  // quant_test_params.h

// The rowwise outputs are set when row, the colwise ones when col; the others stay null.
Mxfp8QuantizeParams mxfp8_params(const void* in, const Shape3& s, Fp8Format fmt, E8M0Rounding rnd, ScaleLayout lay,
                                 bool row, bool col, void* row_data, uint8_t* row_scales, void* col_data,
                                 uint8_t* col_scales) {
  Mxfp8QuantizeParams p;
  p.input = in;
  p.experts = s.e;
  p.rows = s.n;
  p.cols = s.k;
  p.format = fmt;
  p.rounding = rnd;
  p.scale_layout = lay;
  if (row) {
    p.row_data = row_data;
    p.row_scales = row_scales;
  }
  if (col) {
    p.col_data = col_data;
    p.col_scales = col_scales;
  }
  return p;
}

Nvfp4QuantizeParams nvfp4_params(const void* in, int64_t rows, int64_t cols, Nvfp4Block blk, ScaleLayout lay,
                                 void* out, uint8_t* block_scales, const float* global_amax_in,
                                 float* global_amax_out, float* global_scale_inv) {
  Nvfp4QuantizeParams p;
  p.input = in;
  p.rows = rows;
  p.cols = cols;
  p.block = blk;
  p.scale_layout = lay;
  p.output = out;
  p.block_scales = block_scales;
  p.global_amax_in = global_amax_in;
  p.global_amax_out = global_amax_out;
  p.global_scale_inv = global_scale_inv;
  return p;
}

Fp8DequantizeParams fp8_dequant_params(const void* q, int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling sc,
                                       const float* scale_inv, int64_t ld, void* out, DType dt) {
  Fp8DequantizeParams p;
  p.input = q;
  p.rows = rows;
  p.cols = cols;
  p.format = fmt;
  p.scaling = sc;
  p.scale_inv = scale_inv;
  p.scale_ld = ld;
  p.output = out;
  p.output_dtype = dt;
  return p;
}

Mxfp8DequantizeParams mxfp8_dequant_params(const void* data, const uint8_t* scales, Mxfp8Axis axis, const Shape3& s,
                                           Fp8Format fmt, ScaleLayout lay, void* out, DType dt) {
  Mxfp8DequantizeParams p;
  p.data = data;
  p.scales = scales;
  p.axis = axis;
  p.experts = s.e;
  p.rows = s.n;
  p.cols = s.k;
  p.format = fmt;
  p.scale_layout = lay;
  p.output = out;
  p.output_dtype = dt;
  return p;
}

Nvfp4DequantizeParams nvfp4_dequant_params(const void* q, const uint8_t* block_scales, const float* global_scale_inv,
                                           int64_t rows, int64_t cols, ScaleLayout lay, void* out, DType dt) {
  Nvfp4DequantizeParams p;
  p.input = q;
  p.block_scales = block_scales;
  p.global_scale_inv = global_scale_inv;
  p.rows = rows;
  p.cols = cols;
  p.scale_layout = lay;
  p.output = out;
  p.output_dtype = dt;
  return p;
}

// "<fmt> <rounding> <layout>[ row][ col]", the MXFP8 part of the failure messages.
std::string mxfp8_config_name(Fp8Format fmt, E8M0Rounding rnd, ScaleLayout lay, bool row, bool col) {
  return std::string(fp8_format_name(fmt)) + " " + e8m0_rounding_name(rnd) + " " + scale_layout_name(lay) +
         (row ? " row" : "") + (col ? " col" : "");
}

// The outputs of one MXFP8 / NVFP4 quantize call (sentinel-filled), either at given sizes or at the sizes of the
// reference's outputs (an output the reference lacks gets an unused 1-byte buffer). params() points a call at them.
struct Mxfp8Outputs {
  Dev<uint8_t> rd, rs, cd, cs;  // row_data, row_scales, col_data, col_scales
  Mxfp8Outputs(size_t row_data, size_t row_scales, size_t col_data, size_t col_scales)
      : rd(row_data), rs(row_scales), cd(col_data), cs(col_scales) {}
  explicit Mxfp8Outputs(const ref::Mxfp8Out& want)
      : Mxfp8Outputs(want.row_data.size(), want.row_scales.size(), want.col_data.size(), want.col_scales.size()) {}
  Mxfp8QuantizeParams params(const void* in, const Shape3& s, Fp8Format fmt, E8M0Rounding rnd, ScaleLayout lay,
                             bool row, bool col) const {
    return mxfp8_params(in, s, fmt, rnd, lay, row, col, rd.p, rs.p, cd.p, cs.p);
  }
};

struct Nvfp4Outputs {
  Dev<uint8_t> out, sc;
  Dev<float> amax_out, sinv;
  Nvfp4Outputs(size_t data, size_t scales) : out(data), sc(scales), amax_out(1), sinv(1) {}
  explicit Nvfp4Outputs(const ref::Nvfp4Out& want) : Nvfp4Outputs(want.data.size(), want.scales.size()) {}
  // given_amax: a device scalar, or null to have the global amax computed into amax_out.
  Nvfp4QuantizeParams params(const void* in, int64_t rows, int64_t cols, Nvfp4Block blk, ScaleLayout lay,
                             const float* given_amax) const {
    return nvfp4_params(in, rows, cols, blk, lay, out.p, sc.p, given_amax, given_amax ? nullptr : amax_out.p, sinv.p);
  }
};

// The outputs of one quantize call against the reference; every message reads "<tag> <output><suffix>".
// FP8 amax_out: null only where the reference defines no amax (block scalings).
void expect_fp8_outputs(const Dev<uint8_t>& out, const Dev<float>& scale, const Dev<float>* amax_out,
                        const ref::Fp8Out& want, const std::string& tag, const std::string& suffix = "") {
  EXPECT_TRUE(same(out.get(), want.data, tag + " data" + suffix));
  EXPECT_TRUE(same(scale.get(), want.scale_inv, tag + " scale_inv" + suffix));
  if (!want.amax.empty()) {
    if (amax_out == nullptr) {
      ADD_FAILURE() << tag << ": the reference has an amax, the test passed no amax_out buffer";
      return;
    }
    auto got = amax_out->get();
    got.resize(want.amax.size());
    EXPECT_TRUE(same(got, want.amax, tag + " amax" + suffix));
  }
}

// Only the outputs row / col (those the call produced).
void expect_mxfp8_outputs(const Mxfp8Outputs& o, bool row, bool col, const ref::Mxfp8Out& want, const std::string& tag,
                          const std::string& suffix = "") {
  if (row) {
    EXPECT_TRUE(same(o.rd.get(), want.row_data, tag + " row_data" + suffix));
    EXPECT_TRUE(same(o.rs.get(), want.row_scales, tag + " row_scales" + suffix));
  }
  if (col) {
    EXPECT_TRUE(same(o.cd.get(), want.col_data, tag + " col_data" + suffix));
    EXPECT_TRUE(same(o.cs.get(), want.col_scales, tag + " col_scales" + suffix));
  }
}

// given: the call was given the global amax (then amax_out is not compared).
void expect_nvfp4_outputs(const Nvfp4Outputs& o, bool given, const ref::Nvfp4Out& want, const std::string& tag,
                          const std::string& suffix = "") {
  EXPECT_TRUE(same(o.out.get(), want.data, tag + " data" + suffix));
  EXPECT_TRUE(same(o.sc.get(), want.scales, tag + " scales" + suffix));
  EXPECT_TRUE(same(o.sinv.get(), std::vector<float>{want.global_scale_inv}, tag + " global_scale_inv" + suffix));
  if (!given) {
    EXPECT_TRUE(same(o.amax_out.get(), std::vector<float>{want.amax}, tag + " amax" + suffix));
  }
}

// Runs a dequantize op (fp8_dequantize, mxfp8_dequantize or nvfp4_dequantize) with p, its output going to a fresh
// sentinel-filled buffer of nel elements (p.output is set here), and compares that output with the reference's.
template <class Params>
void check_dequant(void (*op)(const Params&, cudaStream_t), Params p, size_t nel, const std::vector<uint32_t>& want,
                   const std::string& what) {
  Dev<uint8_t> out(nel * dtype_size(p.output_dtype));
  p.output = out.p;
  op(p, nullptr);
  EXPECT_TRUE(same(download_out(out.p, nel, p.output_dtype), want, what));
}

// The dequantize output type of successive checks: bf16, f32, bf16, ...
struct AlternatingDType {
  int n = 0;
  DType operator()() { return (n++ & 1) ? DType::kFloat32 : DType::kBFloat16; }
};

// ---- quantize on the GPU, compare with the reference, dequantize the GPU output ----------------------------------
// Output buffers carry the sentinel 0xcd (Dev): every byte the reference defines must be written. The dequantize
// step reads the GPU's quantized output and is compared with the reference dequantization of the reference output
// (the same bytes whenever the quantize comparison passed).
void check_fp8(const std::vector<uint16_t>& x, int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling sc, bool pow2,
               const float* given, DType dq, const std::string& tag) {
  const auto want = ref::fp8_quantize(x, rows, cols, fmt, sc, pow2, 0, given);
  Dev<uint16_t> d_in(x);
  Dev<uint8_t> out(want.data.size());
  Dev<float> scale(want.scale_inv.size());  // default ld: every entry is written
  Dev<float> amax_out(static_cast<size_t>(std::max<int64_t>(1, cols)));
  Dev<float> amax_in(std::vector<float>{given ? *given : 0.0f});
  Fp8QuantizeParams p = fp8_params(d_in.p, rows, cols, fmt, sc, out.p, scale.p);
  p.pow2_scales = pow2;
  if (given) p.amax_in = amax_in.p;
  if ((sc == Fp8Scaling::kTensorwise && !given) || sc == Fp8Scaling::kColwise) p.amax_out = amax_out.p;
  fp8_quantize(p, nullptr);
  expect_fp8_outputs(out, scale, &amax_out, want, tag);
  check_dequant(fp8_dequantize, fp8_dequant_params(out.p, rows, cols, fmt, sc, scale.p, 0, nullptr, dq),
                static_cast<size_t>(rows * cols),
                ref::fp8_dequantize(want.data, rows, cols, fmt, sc, want.scale_inv, 0, dq),
                tag + " dequant " + dtype_name(dq));
}

// Every output selection the shape allows (rowwise: K % 32 == 0, colwise: N % 32 == 0), then the dequantization
// of each axis the call produced.
void check_mxfp8(const Dev<uint16_t>& d_in, const std::vector<uint16_t>& x, const Shape3& s, Fp8Format fmt,
                 E8M0Rounding rnd, ScaleLayout lay, DType dq, const std::string& tag0) {
  const bool row_ok = s.k % 32 == 0, col_ok = s.n % 32 == 0;
  const auto want = ref::mxfp8_quantize(x, s.e, s.n, s.k, fmt, rnd, lay, row_ok, col_ok);
  const size_t nel = static_cast<size_t>(s.e * s.n * s.k);
  for (int outputs = 1; outputs <= 3; ++outputs) {
    const bool row = outputs & 1, col = outputs & 2;
    if ((row && !row_ok) || (col && !col_ok)) continue;
    const std::string tag = tag0 + " " + shape_tag(s) + " " + mxfp8_config_name(fmt, rnd, lay, row, col);
    Mxfp8Outputs o(want);
    mxfp8_quantize(o.params(d_in.p, s, fmt, rnd, lay, row, col), nullptr);
    for (Mxfp8Axis axis : {Mxfp8Axis::kRowwise, Mxfp8Axis::kColwise}) {
      const bool is_row = axis == Mxfp8Axis::kRowwise;
      if (is_row ? !row : !col) continue;
      expect_mxfp8_outputs(o, is_row, !is_row, want, tag);
      const Dev<uint8_t>& data = is_row ? o.rd : o.cd;
      const Dev<uint8_t>& scales = is_row ? o.rs : o.cs;
      check_dequant(mxfp8_dequantize, mxfp8_dequant_params(data.p, scales.p, axis, s, fmt, lay, nullptr, dq), nel,
                    ref::mxfp8_dequantize(is_row ? want.row_data : want.col_data,
                                          is_row ? want.row_scales : want.col_scales, axis, s.e, s.n, s.k, fmt, lay,
                                          dq),
                    tag + (is_row ? " row_" : " col_") + "dequant " + dtype_name(dq));
    }
  }
}

void check_nvfp4(const Dev<uint16_t>& d_in, const std::vector<uint16_t>& x, int64_t rows, int64_t cols,
                 Nvfp4Block blk, ScaleLayout lay, const float* given, DType dq, const std::string& tag0) {
  const std::string tag = tag0 + " " + shape_tag(rows, cols) + (blk == Nvfp4Block::k1x16 ? " 1x16 " : " 16x16 ") +
                          scale_layout_name(lay);
  const auto want = ref::nvfp4_quantize(x, rows, cols, blk, lay, given);
  Nvfp4Outputs o(want);
  Dev<float> d_given(std::vector<float>{given ? *given : 0.0f});
  nvfp4_quantize(o.params(d_in.p, rows, cols, blk, lay, given ? d_given.p : nullptr), nullptr);
  expect_nvfp4_outputs(o, given != nullptr, want, tag);
  check_dequant(nvfp4_dequantize, nvfp4_dequant_params(o.out.p, o.sc.p, o.sinv.p, rows, cols, lay, nullptr, dq),
                static_cast<size_t>(rows * cols),
                ref::nvfp4_dequantize(want.data, want.scales, want.global_scale_inv, rows, cols, lay, dq),
                tag + " dequant " + dtype_name(dq));
}

std::string amax_tag(float a) {
  char b[48];
  std::snprintf(b, sizeof b, "given amax %a", static_cast<double>(a));
  return b;
}

// The given (device scalar) amax values: zero, an fp32 subnormal, +Inf, NaN, a power of two, fp8_max * 2^k of both
// formats (56 = 448 * 2^-3 = 57344 * 2^-10) and 1e-13 (below FP8's 1e-12 clamp).
std::vector<float> edge_given_amax() {
  return {0.0f, 1e-40f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), 32.0f, 56.0f,
          1e-13f};
}

// Expects tpcomm::Error(kInvalidArgument) whose message starts with `name` (what() = "<code name>: <message>").
template <class F>
void expect_dim_error(F&& f, const std::string& name, const std::string& what) {
  const std::string prefix = std::string(error_code_name(ErrorCode::kInvalidArgument)) + ": " + name + ": ";
  try {
    f();
    ADD_FAILURE() << what << ": no exception, expected one naming '" << name << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what << ": " << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << what << ": expected a message starting with '" << prefix
                                                          << "', got '" << e.what() << "'";
  }
}

// ---- CUDA graph harness ---------------------------------------------------------------------------------------------
// One op of a captured graph: its own device buffers (held by the lambdas), a launch, a refresh that writes new
// input data to the device and computes the expected outputs, and a check of the outputs against them.
struct GraphOp {
  std::string name;
  std::function<void(cudaStream_t)> launch;
  std::function<void(uint64_t seed, int variant)> refresh;  // variant 1, 2: the replays
  std::function<void(const std::string& when)> check;
  std::vector<std::pair<void*, size_t>> outputs;            // poisoned before every replay
};

template <class T>
std::shared_ptr<Dev<T>> dev(size_t n) {
  return std::make_shared<Dev<T>>(n);
}

GraphOp graph_fp8(int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling sc, bool given) {
  const size_t nel = static_cast<size_t>(rows * cols);
  auto in = dev<uint16_t>(nel);
  auto out = dev<uint8_t>(nel);
  auto scale = dev<float>(static_cast<size_t>(fp8_scale_count(rows, cols, sc)));
  auto amax_out = dev<float>(static_cast<size_t>(std::max<int64_t>(1, cols)));
  auto amax_in = dev<float>(1);
  auto want = std::make_shared<ref::Fp8Out>();
  GraphOp op;
  op.name = std::string("fp8 ") + fp8_scaling_name(sc) + (given ? " given-amax " : " ") + fp8_format_name(fmt) + " " +
            shape_tag(rows, cols);
  Fp8QuantizeParams p = fp8_params(in->p, rows, cols, fmt, sc, out->p, scale->p);
  if (given) p.amax_in = amax_in->p;
  if ((sc == Fp8Scaling::kTensorwise && !given) || sc == Fp8Scaling::kColwise) p.amax_out = amax_out->p;
  op.launch = [p](cudaStream_t st) { fp8_quantize(p, st); };
  op.refresh = [=](uint64_t seed, int variant) {
    const auto x = make_input(rows, cols, seed, sc != Fp8Scaling::kTensorwise, false);
    in->put(x);
    const float a = variant == 1 ? 37.5f : (variant == 2 ? 1000.0f : 0.75f);
    if (given) amax_in->put(std::vector<float>{a});
    *want = ref::fp8_quantize(x, rows, cols, fmt, sc, false, 0, given ? &a : nullptr);
  };
  const std::string name = op.name;
  op.check = [=](const std::string& when) {
    expect_fp8_outputs(*out, *scale, amax_out.get(), *want, name, " " + when);
  };
  op.outputs = {{out->p, nel}, {scale->p, scale->n * 4}, {amax_out->p, amax_out->n * 4}};
  return op;
}

GraphOp graph_amax(int64_t n) {
  auto in = dev<uint16_t>(static_cast<size_t>(n));
  auto out = dev<float>(1);
  auto want = std::make_shared<float>(0.0f);
  GraphOp op;
  op.name = "compute_amax " + std::to_string(n);
  const uint16_t* ip = in->p;
  float* optr = out->p;
  op.launch = [=](cudaStream_t st) { compute_amax(ip, DType::kBFloat16, n, optr, st); };
  op.refresh = [=](uint64_t seed, int) {
    const auto x = make_input(1, n, seed, false, false);
    in->put(x);
    *want = ref::amax_of(x.data(), n);
  };
  const std::string name = op.name;
  op.check = [=](const std::string& when) {
    EXPECT_TRUE(same(out->get(), std::vector<float>{*want}, name + " " + when));
  };
  op.outputs = {{out->p, 4}};
  return op;
}

GraphOp graph_mxfp8(const Shape3& s, Fp8Format fmt, E8M0Rounding rnd, ScaleLayout lay, bool row, bool col) {
  const size_t nel = static_cast<size_t>(s.e * s.n * s.k);
  auto in = dev<uint16_t>(nel);
  auto o = std::make_shared<Mxfp8Outputs>(row ? nel : 0,
                                          row ? static_cast<size_t>(mxfp8_row_scale_bytes(s.e, s.n, s.k, lay)) : 0,
                                          col ? nel : 0,
                                          col ? static_cast<size_t>(mxfp8_col_scale_bytes(s.e, s.n, s.k, lay)) : 0);
  auto want = std::make_shared<ref::Mxfp8Out>();
  GraphOp op;
  op.name = std::string("mxfp8") + (row ? " row" : "") + (col ? " col" : "") + " " + fp8_format_name(fmt) + " " +
            e8m0_rounding_name(rnd) + " " + scale_layout_name(lay) + " " + shape_tag(s);
  op.launch = [p = o->params(in->p, s, fmt, rnd, lay, row, col)](cudaStream_t st) { mxfp8_quantize(p, st); };
  op.refresh = [=](uint64_t seed, int) {
    const auto x = make_input(s.e * s.n, s.k, seed, true, true);
    in->put(x);
    *want = ref::mxfp8_quantize(x, s.e, s.n, s.k, fmt, rnd, lay, row, col);
  };
  const std::string name = op.name;
  op.check = [=](const std::string& when) { expect_mxfp8_outputs(*o, row, col, *want, name, " " + when); };
  if (row) op.outputs.insert(op.outputs.end(), {{o->rd.p, o->rd.n}, {o->rs.p, o->rs.n}});
  if (col) op.outputs.insert(op.outputs.end(), {{o->cd.p, o->cd.n}, {o->cs.p, o->cs.n}});
  return op;
}

GraphOp graph_nvfp4(int64_t rows, int64_t cols, Nvfp4Block blk, ScaleLayout lay, bool given) {
  const size_t nel = static_cast<size_t>(rows * cols);
  auto in = dev<uint16_t>(nel);
  auto o = std::make_shared<Nvfp4Outputs>(nel / 2, static_cast<size_t>(nvfp4_scale_bytes(rows, cols, lay)));
  auto amax_in = dev<float>(1);
  auto want = std::make_shared<ref::Nvfp4Out>();
  GraphOp op;
  op.name = std::string("nvfp4 ") + (blk == Nvfp4Block::k1x16 ? "1x16 " : "16x16 ") + scale_layout_name(lay) +
            (given ? " given-amax " : " ") + shape_tag(rows, cols);
  op.launch = [p = o->params(in->p, rows, cols, blk, lay, given ? amax_in->p : nullptr)](cudaStream_t st) {
    nvfp4_quantize(p, st);
  };
  op.refresh = [=](uint64_t seed, int variant) {
    const auto x = make_input(rows, cols, seed, given, given);
    in->put(x);
    const float a = variant == 1 ? 1000.0f : (variant == 2 ? 3.5f : 2.0e6f);
    if (given) amax_in->put(std::vector<float>{a});
    *want = ref::nvfp4_quantize(x, rows, cols, blk, lay, given ? &a : nullptr);
  };
  const std::string name = op.name;
  op.check = [=](const std::string& when) { expect_nvfp4_outputs(*o, given, *want, name, " " + when); };
  op.outputs = {{o->out.p, o->out.n}, {o->sc.p, o->sc.n}, {o->amax_out.p, 4}, {o->sinv.p, 4}};
  return op;
}

// The check of a dequantize op: its output (nel elements of dt, poisoned before every replay) against *want.
void set_dequant_check(GraphOp& op, const std::shared_ptr<Dev<uint8_t>>& out, size_t nel, DType dt,
                       const std::shared_ptr<std::vector<uint32_t>>& want) {
  const std::string name = op.name;
  op.check = [=](const std::string& when) {
    EXPECT_TRUE(same(download_out(out->p, nel, dt), *want, name + " " + when));
  };
  op.outputs = {{out->p, out->n}};
}

// Dequantize ops read random codes and scales (new ones before every replay).
GraphOp graph_fp8_dequant(int64_t rows, int64_t cols, Fp8Format fmt, Fp8Scaling sc, DType dt) {
  const size_t nel = static_cast<size_t>(rows * cols);
  const size_t ns = static_cast<size_t>(fp8_scale_count(rows, cols, sc));
  auto q = dev<uint8_t>(nel);
  auto s = dev<float>(ns);
  auto out = dev<uint8_t>(nel * dtype_size(dt));
  auto want = std::make_shared<std::vector<uint32_t>>();
  GraphOp op;
  op.name = std::string("fp8 dequant ") + fp8_scaling_name(sc) + " " + fp8_format_name(fmt) + " " + dtype_name(dt) +
            " " + shape_tag(rows, cols);
  op.launch = [p = fp8_dequant_params(q->p, rows, cols, fmt, sc, s->p, 0, out->p, dt)](cudaStream_t st) {
    fp8_dequantize(p, st);
  };
  op.refresh = [=](uint64_t seed, int) {
    const auto qh = random_bytes(nel, seed);
    test::SplitMix64 rng(seed + 1);
    std::vector<float> sh(ns);
    for (auto& v : sh)
      v = static_cast<float>(std::ldexp(rng.uniform(0.5, 1.0), static_cast<int>(rng.next() % 60) - 30));
    q->put(qh);
    s->put(sh);
    *want = ref::fp8_dequantize(qh, rows, cols, fmt, sc, sh, 0, dt);
  };
  set_dequant_check(op, out, nel, dt, want);
  return op;
}

GraphOp graph_mxfp8_dequant(const Shape3& sh, Mxfp8Axis axis, Fp8Format fmt, ScaleLayout lay, DType dt) {
  const size_t nel = static_cast<size_t>(sh.e * sh.n * sh.k);
  const bool rowwise = axis == Mxfp8Axis::kRowwise;
  const size_t ns = static_cast<size_t>(rowwise ? mxfp8_row_scale_bytes(sh.e, sh.n, sh.k, lay)
                                                : mxfp8_col_scale_bytes(sh.e, sh.n, sh.k, lay));
  auto q = dev<uint8_t>(nel);
  auto s = dev<uint8_t>(ns);
  auto out = dev<uint8_t>(nel * dtype_size(dt));
  auto want = std::make_shared<std::vector<uint32_t>>();
  GraphOp op;
  op.name = std::string("mxfp8 dequant ") + (rowwise ? "row " : "col ") + fp8_format_name(fmt) + " " +
            scale_layout_name(lay) + " " + dtype_name(dt) + " " + shape_tag(sh);
  op.launch = [p = mxfp8_dequant_params(q->p, s->p, axis, sh, fmt, lay, out->p, dt)](cudaStream_t st) {
    mxfp8_dequantize(p, st);
  };
  op.refresh = [=](uint64_t seed, int) {
    const auto qh = random_bytes(nel, seed);
    auto shh = random_bytes(ns, seed + 1);
    for (size_t i = 0; i < shh.size(); ++i)  // mostly moderate scales (2^-20 .. 2^19), some 0 / 254 / 255 left
      if (i % 7 != 0) shh[i] = static_cast<uint8_t>(107 + shh[i] % 40);
    q->put(qh);
    s->put(shh);
    *want = ref::mxfp8_dequantize(qh, shh, axis, sh.e, sh.n, sh.k, fmt, lay, dt);
  };
  set_dequant_check(op, out, nel, dt, want);
  return op;
}

GraphOp graph_nvfp4_dequant(int64_t rows, int64_t cols, ScaleLayout lay, DType dt) {
  const size_t nel = static_cast<size_t>(rows * cols);
  const size_t ns = static_cast<size_t>(nvfp4_scale_bytes(rows, cols, lay));
  auto q = dev<uint8_t>(nel / 2);
  auto s = dev<uint8_t>(ns);
  auto g = dev<float>(1);
  auto out = dev<uint8_t>(nel * dtype_size(dt));
  auto want = std::make_shared<std::vector<uint32_t>>();
  GraphOp op;
  op.name = std::string("nvfp4 dequant ") + scale_layout_name(lay) + " " + dtype_name(dt) + " " + shape_tag(rows, cols);
  op.launch = [p = nvfp4_dequant_params(q->p, s->p, g->p, rows, cols, lay, out->p, dt)](cudaStream_t st) {
    nvfp4_dequantize(p, st);
  };
  op.refresh = [=](uint64_t seed, int variant) {
    const auto qh = random_bytes(nel / 2, seed);
    const auto shh = random_bytes(ns, seed + 1);
    const float gh = variant == 1 ? 0.0123f : (variant == 2 ? 1.0f : 3.0e-3f);
    q->put(qh);
    s->put(shh);
    g->put(std::vector<float>{gh});
    *want = ref::nvfp4_dequantize(qh, shh, gh, rows, cols, lay, dt);
  };
  set_dequant_check(op, out, nel, dt, want);
  return op;
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// Captures every op, in order, on a non-blocking stream in cudaStreamCaptureModeGlobal (the strictest mode: a
// capture-unsafe call made by the library invalidates the capture), instantiates the graph and replays it twice.
// Before each replay every op gets new input data (a replay that does nothing, or that reads values frozen at
// capture time, fails) and its outputs are poisoned with a different byte; after each replay every output is
// compared with the reference. warm_up: one eager call of each op before the capture.
void capture_and_replay(std::vector<GraphOp>& ops, bool warm_up, uint64_t seed) {
  Stream st;
  if (warm_up) {
    for (auto& op : ops) op.launch(st.s);  // on the sentinel-filled inputs; its results are poisoned below
    CK(cudaStreamSynchronize(st.s));
  }
  CK(cudaDeviceSynchronize());
  CK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeGlobal));
  std::string err, current;
  try {
    for (auto& op : ops) {
      current = op.name;
      op.launch(st.s);
    }
  } catch (const std::exception& e) {
    err = current + ": " + e.what();
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ec = cudaStreamEndCapture(st.s, &graph);
  if (!err.empty() || ec != cudaSuccess || graph == nullptr) {
    (void)cudaGetLastError();
    if (graph != nullptr) cudaGraphDestroy(graph);
    ADD_FAILURE() << "capture failed" << (err.empty() ? "" : " (" + err + ")")
                  << "; cudaStreamEndCapture: " << cudaGetErrorString(ec);
    return;
  }
  size_t nodes = 0;
  CK(cudaGraphGetNodes(graph, nullptr, &nodes));
  EXPECT_GE(nodes, ops.size()) << "every op enqueues at least one node";
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ei = cudaGraphInstantiate(&exec, graph, 0);
  if (ei != cudaSuccess) {
    (void)cudaGetLastError();
    cudaGraphDestroy(graph);
    ADD_FAILURE() << "cudaGraphInstantiate: " << cudaGetErrorString(ei);
    return;
  }
  for (int rep = 1; rep <= 2; ++rep) {
    int i = 0;
    for (auto& op : ops) op.refresh(seed + 1000 * static_cast<uint64_t>(rep) + static_cast<uint64_t>(i++), rep);
    for (auto& op : ops)
      for (const auto& [ptr, bytes] : op.outputs)
        if (bytes > 0) CK(cudaMemsetAsync(ptr, rep == 1 ? 0xcd : 0x5a, bytes, st.s));
    CK(cudaGraphLaunch(exec, st.s));
    CK(cudaStreamSynchronize(st.s));
    for (auto& op : ops) op.check("replay " + std::to_string(rep));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace

// ---- CUDA graph: the very first call of each op inside a capture ---------------------------------------------------
// tpcomm/quantize.h says every call can be captured into a CUDA graph, with no warm-up. Yet several launchers do
// one-time host setup on their first call: cudaFuncSetAttribute + cudaOccupancyMaxActiveClusters for the one-pass
// FP8 colwise kernel (src/quantize/fp8.cu col_cluster_attributes / col_cluster_capacity, cached per (registers,
// cluster size, shared memory)), cudaFuncSetAttribute + cudaOccupancyMaxActiveBlocksPerMultiprocessor for the
// persistent MXFP8 "both" kernel (tile_launch.h persistent_blocks_per_sm) and for NVFP4's one-wave choice
// (common/pdl.cpp device_capacity), the SM count (validate.cpp sm_count); and CUDA loads each kernel's module
// lazily on its first launch. bench/common.cpp (time_graph_us) therefore warms up outside its captures, and
// CudaGraphEveryOp below does too. This test holds the library to its word: the first call of each op happens
// inside a cudaStreamCaptureModeGlobal capture. It is meaningful only as the first quantize work of the process,
// so it is defined first in this file (gtest runs tests in definition order, also under the QuantGpu* filters of
// the ctest entries), and its shapes appear nowhere else, so the shape-keyed colwise cache is cold even when it
// does not run first.
TEST(QuantGpuCaptureFirst, FirstCallOfEachOpInsideCapture) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Fp8Format e4 = Fp8Format::kE4M3, e5 = Fp8Format::kE5M2;
  const ScaleLayout lin = ScaleLayout::kLinear, swz = ScaleLayout::kSwizzled128x4;
  std::vector<GraphOp> ops;
  ops.push_back(graph_fp8(520, 136, e4, Fp8Scaling::kColwise, false));  // one-pass, clusters of 2
  ops.push_back(graph_fp8(72, 264, e4, Fp8Scaling::kTensorwise, false));
  ops.push_back(graph_fp8(72, 264, e5, Fp8Scaling::kTensorwise, true));
  ops.push_back(graph_fp8(72, 264, e4, Fp8Scaling::kRowwise, false));
  ops.push_back(graph_fp8(72, 264, e4, Fp8Scaling::kBlock1x128, false));
  ops.push_back(graph_fp8(72, 264, e5, Fp8Scaling::kBlock128x128, false));
  ops.push_back(graph_amax(2056));
  ops.push_back(graph_mxfp8({1, 224, 288}, e5, E8M0Rounding::kFloor, swz, true, true));    // persistent "both"
  ops.push_back(graph_mxfp8({1, 64, 96}, e4, E8M0Rounding::kRceil, lin, true, false));     // warp-window rowwise
  ops.push_back(graph_mxfp8({1, 72, 192}, e4, E8M0Rounding::kRceil, swz, true, false));    // tile rowwise
  ops.push_back(graph_mxfp8({2, 64, 104}, e4, E8M0Rounding::kRceil, lin, false, true));    // 3-D colwise
  ops.push_back(graph_nvfp4(48, 112, Nvfp4Block::k1x16, lin, false));   // amax pass + warp-window kernel
  ops.push_back(graph_nvfp4(176, 208, Nvfp4Block::k16x16, swz, true));  // tile kernel (one-wave choice)
  ops.push_back(graph_fp8_dequant(40, 56, e4, Fp8Scaling::kRowwise, DType::kBFloat16));
  ops.push_back(graph_mxfp8_dequant({1, 64, 56}, Mxfp8Axis::kColwise, e4, swz, DType::kFloat32));
  ops.push_back(graph_mxfp8_dequant({1, 40, 64}, Mxfp8Axis::kRowwise, e4, lin, DType::kBFloat16));
  ops.push_back(graph_nvfp4_dequant(24, 48, swz, DType::kBFloat16));
  capture_and_replay(ops, /*warm_up=*/false, seed);
}

// ---- MXFP8 ----------------------------------------------------------------------------------------------------------
TEST(QuantGpu, Mxfp8QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  // {3, 160, 3072}: 24 column tiles per row tile and a partial last row tile, with several tiles per block in the
  // persistent rowwise + colwise kernel.
  const std::vector<Shape3> shapes = {{1, 256, 512}, {1, 96, 160},   {3, 96, 288},
                                      {2, 160, 64},  {4, 512, 1024}, {3, 160, 3072}};
  int case_no = 0;
  for (const Shape3& s : shapes) {
    const bool edges = s.e * s.n * s.k < (1 << 20);
    const auto x = make_input(s.e * s.n, s.k, seed + case_no++, edges, true);
    Dev<uint16_t> d_in(x);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (E8M0Rounding rnd : {E8M0Rounding::kFloor, E8M0Rounding::kRceil})
        for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
          const auto want = ref::mxfp8_quantize(x, s.e, s.n, s.k, fmt, rnd, lay, true, true);
          for (int outputs = 1; outputs <= 3; ++outputs) {
            const bool row = outputs & 1, col = outputs & 2;
            Mxfp8Outputs o(want);
            mxfp8_quantize(o.params(d_in.p, s, fmt, rnd, lay, row, col), nullptr);
            expect_mxfp8_outputs(o, row, col, want, shape_tag(s) + " " + mxfp8_config_name(fmt, rnd, lay, row, col));
          }
        }
  }
}

TEST(QuantGpu, Mxfp8DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Shape3 s{3, 96, 160};
  const size_t nel = static_cast<size_t>(s.e * s.n * s.k);
  const auto data = random_bytes(nel, seed);
  Dev<uint8_t> d_data(data);
  for (Mxfp8Axis axis : {Mxfp8Axis::kRowwise, Mxfp8Axis::kColwise})
    for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
      const int64_t ns = axis == Mxfp8Axis::kRowwise ? mxfp8_row_scale_bytes(s.e, s.n, s.k, lay)
                                                     : mxfp8_col_scale_bytes(s.e, s.n, s.k, lay);
      auto scales = random_bytes(static_cast<size_t>(ns), seed + 7);
      for (size_t i = 0; i < scales.size(); ++i) {  // make sure the extreme codes appear
        if (i % 7 == 0) scales[i] = 0;
        if (i % 7 == 1) scales[i] = 254;
        if (i % 7 == 2) scales[i] = 255;
        if (i % 7 == 3) scales[i] = static_cast<uint8_t>(120 + i % 16);
      }
      Dev<uint8_t> d_sc(scales);
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (DType dt : {DType::kBFloat16, DType::kFloat32})
          check_dequant(mxfp8_dequantize, mxfp8_dequant_params(d_data.p, d_sc.p, axis, s, fmt, lay, nullptr, dt), nel,
                        ref::mxfp8_dequantize(data, scales, axis, s.e, s.n, s.k, fmt, lay, dt),
                        std::string("mxfp8 dequant ") + (axis == Mxfp8Axis::kRowwise ? "row " : "col ") +
                            scale_layout_name(lay) + " " + fp8_format_name(fmt) + " " + dtype_name(dt));
    }
}

// ---- FP8 ------------------------------------------------------------------------------------------------------------
// The tile kernels run persistent blocks that walk several tiles each (tile.cuh) once a tensor has more 128x128 tiles
// than fit on the GPU at once (about 400 to 660 blocks on an H200); the shapes above all fit in one wave. These
// shapes have partial row and column tiles and several tiles per block.
TEST(QuantGpu, TileKernelsWithSeveralTilesPerBlock) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t E = 6, N = 1056, K = 2080;  // 6 x 9 x 17 = 918 tiles
  const auto x = make_input(E * N, K, seed + 900, true, true);
  Dev<uint16_t> d_in(x);
  struct MxCase {
    Fp8Format fmt;
    E8M0Rounding rnd;
    ScaleLayout lay;
    bool row, col;
  };
  for (const MxCase& c : {MxCase{Fp8Format::kE4M3, E8M0Rounding::kRceil, ScaleLayout::kLinear, true, true},
                          MxCase{Fp8Format::kE5M2, E8M0Rounding::kFloor, ScaleLayout::kSwizzled128x4, true, true},
                          MxCase{Fp8Format::kE4M3, E8M0Rounding::kFloor, ScaleLayout::kLinear, true, false},
                          MxCase{Fp8Format::kE4M3, E8M0Rounding::kFloor, ScaleLayout::kLinear, false, true}}) {
    const auto want = ref::mxfp8_quantize(x, E, N, K, c.fmt, c.rnd, c.lay, c.row, c.col);
    Mxfp8Outputs o(want);
    mxfp8_quantize(o.params(d_in.p, Shape3{E, N, K}, c.fmt, c.rnd, c.lay, c.row, c.col), nullptr);
    expect_mxfp8_outputs(o, c.row, c.col, want, "mxfp8 " + mxfp8_config_name(c.fmt, c.rnd, c.lay, c.row, c.col));
  }
  const int64_t M = E * N;  // the same data as one 2-D (6336 x 2080) matrix
  for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16}) {
    const ScaleLayout lay = blk == Nvfp4Block::k1x16 ? ScaleLayout::kLinear : ScaleLayout::kSwizzled128x4;
    const float given = 1000.0f;
    Dev<float> d_given(std::vector<float>{given});
    const auto want = ref::nvfp4_quantize(x, M, K, blk, lay, &given);
    const std::string tag = std::string("nvfp4 ") + (blk == Nvfp4Block::k1x16 ? "1x16 " : "16x16 ") + scale_layout_name(lay);
    Nvfp4Outputs o(want);
    nvfp4_quantize(o.params(d_in.p, M, K, blk, lay, d_given.p), nullptr);
    EXPECT_TRUE(same(o.out.get(), want.data, tag + " data"));
    EXPECT_TRUE(same(o.sc.get(), want.scales, tag + " scales"));
  }
  // NVFP4 16x16 switches to its persistent kernel beyond two waves of tiles (1056 tiles on an H200 with 8 rows per
  // thread, 1320 with 16 under TPCOMM_QUANT_TILE_ROWS=16): a full-tile shape (40 x 36 tiles) and one with a partial
  // row and column tile (rows a multiple of 16; 41 x 37 tiles).
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{5120, 4608}, std::pair<int64_t, int64_t>{5136, 4624}}) {
    const auto big = make_input(rows, cols, seed + 901, true, true);
    Dev<uint16_t> d_big(big);
    const float given = 1000.0f;
    Dev<float> d_given(std::vector<float>{given});
    for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
      const auto want = ref::nvfp4_quantize(big, rows, cols, Nvfp4Block::k16x16, lay, &given);
      const std::string tag = "nvfp4 16x16 " + std::to_string(rows) + "x" + std::to_string(cols) + " " + scale_layout_name(lay);
      Nvfp4Outputs o(want);
      nvfp4_quantize(o.params(d_big.p, rows, cols, Nvfp4Block::k16x16, lay, d_given.p), nullptr);
      EXPECT_TRUE(same(o.out.get(), want.data, tag + " data"));
      EXPECT_TRUE(same(o.sc.get(), want.scales, tag + " scales"));
    }
  }
  for (Fp8Scaling sc : {Fp8Scaling::kBlock1x128, Fp8Scaling::kBlock128x128}) {
    const auto want = ref::fp8_quantize(x, M, K, Fp8Format::kE4M3, sc, false, 0, nullptr);
    Dev<uint8_t> out(want.data.size());
    Dev<float> scale(want.scale_inv.size(), 0);
    fp8_quantize(fp8_params(d_in.p, M, K, Fp8Format::kE4M3, sc, out.p, scale.p), nullptr);
    expect_fp8_outputs(out, scale, nullptr, want, std::string("fp8 ") + fp8_scaling_name(sc));  // no amax: block scales
  }
}

TEST(QuantGpu, Fp8QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  struct Case {
    int64_t rows, cols;
    bool nonfinite;
  };
  // 3001x72 and 4000x200: the one-pass colwise kernel runs clusters of 6 and 8 blocks (64-column strips; 12 and 16
  // with 128), the last block of a cluster short, the last strip partly outside the matrix.
  const std::vector<Case> cases = {{256, 512, false}, {200, 328, false}, {200, 328, true}, {3, 70008, false},
                                   {64, 8, true},     {3001, 72, false}, {4000, 200, true}};
  int case_no = 0;
  for (const Case& c : cases) {
    const auto x = make_input(c.rows, c.cols, seed + 100 + case_no++, true, c.nonfinite);
    Dev<uint16_t> d_in(x);
    for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                          Fp8Scaling::kBlock128x128})
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (bool pow2 : {false, true})
          for (int variant = 0; variant < 2; ++variant) {
            // variant 1: tensorwise with a given amax; 1x128 / 128x128 with a padded leading dimension.
            if (variant == 1 && (sc == Fp8Scaling::kRowwise || sc == Fp8Scaling::kColwise)) continue;
            int64_t ld = 0;
            if (variant == 1 && sc == Fp8Scaling::kBlock1x128) ld = c.rows + 5;
            if (variant == 1 && sc == Fp8Scaling::kBlock128x128) ld = (c.cols + 127) / 128 + 3;
            const float given_amax = 37.5f;
            const bool use_given = variant == 1 && sc == Fp8Scaling::kTensorwise;
            const auto want = ref::fp8_quantize(x, c.rows, c.cols, fmt, sc, pow2, ld, use_given ? &given_amax : nullptr);
            const std::string tag = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " " + fp8_scaling_name(sc) +
                                    " " + fp8_format_name(fmt) + (pow2 ? " pow2" : "") + " v" + std::to_string(variant) +
                                    (c.nonfinite ? " nonfinite" : "");
            Dev<uint8_t> out(want.data.size());
            Dev<float> scale(want.scale_inv.size(), 0);
            Dev<float> amax_out(std::max<size_t>(1, static_cast<size_t>(c.cols)), 0xcd);
            Dev<float> amax_in(std::vector<float>{given_amax});
            Fp8QuantizeParams p = fp8_params(d_in.p, c.rows, c.cols, fmt, sc, out.p, scale.p);
            p.pow2_scales = pow2;
            p.scale_ld = ld;
            if (use_given) p.amax_in = amax_in.p;
            if (sc == Fp8Scaling::kTensorwise || sc == Fp8Scaling::kColwise) p.amax_out = amax_out.p;
            fp8_quantize(p, nullptr);
            expect_fp8_outputs(out, scale, &amax_out, want, tag);
          }
  }
}

TEST(QuantGpu, Fp8DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t rows = 200, cols = 328;
  const auto q = random_bytes(static_cast<size_t>(rows * cols), seed);
  Dev<uint8_t> d_q(q);
  for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                        Fp8Scaling::kBlock128x128}) {
    const int64_t ld = sc == Fp8Scaling::kBlock1x128 ? rows + 3 : (sc == Fp8Scaling::kBlock128x128 ? 4 : 0);
    std::vector<float> scales(static_cast<size_t>(fp8_scale_count(rows, cols, sc, ld)));
    test::SplitMix64 rng(seed + 1);
    for (auto& v : scales) v = static_cast<float>(std::ldexp(rng.uniform(0.5, 1.0), static_cast<int>(rng.next() % 200) - 100));
    scales[0] = std::ldexp(1.0f, -140);  // subnormal scale
    Dev<float> d_s(scales);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (DType dt : {DType::kBFloat16, DType::kFloat32})
        check_dequant(fp8_dequantize, fp8_dequant_params(d_q.p, rows, cols, fmt, sc, d_s.p, ld, nullptr, dt), q.size(),
                      ref::fp8_dequantize(q, rows, cols, fmt, sc, scales, ld, dt),
                      std::string("fp8 dequant ") + fp8_scaling_name(sc) + " " + fp8_format_name(fmt) + " " +
                          dtype_name(dt));
  }
}

// ---- NVFP4 ----------------------------------------------------------------------------------------------------------
TEST(QuantGpu, Nvfp4QuantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  struct Case {
    int64_t rows, cols;
    bool nonfinite;
    bool given_amax;
  };
  const std::vector<Case> cases = {{256, 512, false, false}, {144, 80, false, false}, {144, 80, true, true},
                                   {256, 512, true, true},   {16, 16, false, false},  {64, 128, true, false}};
  int case_no = 0;
  for (const Case& c : cases) {
    const auto x = make_input(c.rows, c.cols, seed + 200 + case_no++, true, c.nonfinite);
    Dev<uint16_t> d_in(x);
    const float given = 1000.0f;
    Dev<float> d_given(std::vector<float>{given});
    for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16})
      for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
        const auto want = ref::nvfp4_quantize(x, c.rows, c.cols, blk, lay, c.given_amax ? &given : nullptr);
        const std::string tag = std::to_string(c.rows) + "x" + std::to_string(c.cols) +
                                (blk == Nvfp4Block::k1x16 ? " 1x16 " : " 16x16 ") + scale_layout_name(lay) +
                                (c.nonfinite ? " nonfinite" : "") + (c.given_amax ? " given-amax" : "");
        Nvfp4Outputs o(want);
        nvfp4_quantize(o.params(d_in.p, c.rows, c.cols, blk, lay, c.given_amax ? d_given.p : nullptr), nullptr);
        expect_nvfp4_outputs(o, c.given_amax, want, tag);
      }
  }
}

TEST(QuantGpu, Nvfp4DequantizeMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t rows = 144, cols = 80;
  const auto q = random_bytes(static_cast<size_t>(rows * cols / 2), seed);
  Dev<uint8_t> d_q(q);
  for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
    const auto sc = random_bytes(static_cast<size_t>(nvfp4_scale_bytes(rows, cols, lay)), seed + 3);
    Dev<uint8_t> d_sc(sc);
    // Inf / NaN / overflowing global scales exercise the kernel's "no NaN possible" fast path decision.
    for (float g : {1.0f, 0.0123f, std::ldexp(1.0f, -130), INFINITY, NAN, 3.0e38f}) {
      Dev<float> d_g(std::vector<float>{g});
      for (DType dt : {DType::kBFloat16, DType::kFloat32})
        check_dequant(nvfp4_dequantize, nvfp4_dequant_params(d_q.p, d_sc.p, d_g.p, rows, cols, lay, nullptr, dt),
                      static_cast<size_t>(rows * cols), ref::nvfp4_dequantize(q, sc, g, rows, cols, lay, dt),
                      std::string("nvfp4 dequant ") + scale_layout_name(lay) + " " + dtype_name(dt));
    }
  }
}

// ---- amax, graphs, empty tensors ---------------------------------------------------------------------------------
TEST(QuantGpu, ComputeAmax) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int64_t n : {8, 4096 + 8, 1 << 22}) {
    for (int kind = 0; kind < 3; ++kind) {
      auto x = make_input(1, n, seed + n + kind, false, false);
      if (kind == 1) x[static_cast<size_t>(n / 3)] = 0xffc1;   // NaN
      if (kind == 2) std::fill(x.begin(), x.end(), static_cast<uint16_t>(0x8000));  // -0
      Dev<uint16_t> d(x);
      Dev<float> a(1);
      compute_amax(d.p, DType::kBFloat16, n, a.p, nullptr);
      EXPECT_TRUE(same(a.get(), std::vector<float>{ref::amax_of(x.data(), n)}, "amax n=" + std::to_string(n)));
    }
  }
}

TEST(QuantGpu, CudaGraphCaptureAndReplay) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Shape3 s{4, 256, 384};
  auto x = make_input(s.e * s.n, s.k, seed, false, false);
  Dev<uint16_t> d_in(x);
  Dev<uint8_t> cd(static_cast<size_t>(s.e * s.n * s.k)), cs(static_cast<size_t>(mxfp8_col_scale_bytes(s.e, s.n, s.k, ScaleLayout::kSwizzled128x4)));
  Dev<uint8_t> fq(static_cast<size_t>(s.e * s.n * s.k));
  Dev<float> fs(1), famax(1);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const Mxfp8QuantizeParams p = mxfp8_params(d_in.p, s, Fp8Format::kE4M3, E8M0Rounding::kRceil,
                                             ScaleLayout::kSwizzled128x4, false, true, nullptr, nullptr, cd.p, cs.p);
  Fp8QuantizeParams f = fp8_params(d_in.p, s.e * s.n, s.k, Fp8Format::kE4M3, Fp8Scaling::kTensorwise, fq.p, fs.p);
  f.amax_out = famax.p;
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  mxfp8_quantize(p, st);
  fp8_quantize(f, st);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int rep = 0; rep < 2; ++rep) {
    if (rep == 1) {
      x = make_input(s.e * s.n, s.k, seed + 1, true, false);
      d_in.put(x);
    }
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    const auto want = ref::mxfp8_quantize(x, s.e, s.n, s.k, Fp8Format::kE4M3, E8M0Rounding::kRceil,
                                          ScaleLayout::kSwizzled128x4, false, true);
    EXPECT_TRUE(same(cd.get(), want.col_data, "graph col_data rep " + std::to_string(rep)));
    EXPECT_TRUE(same(cs.get(), want.col_scales, "graph col_scales rep " + std::to_string(rep)));
    const auto wf = ref::fp8_quantize(x, f.rows, f.cols, Fp8Format::kE4M3, Fp8Scaling::kTensorwise, false);
    EXPECT_TRUE(same(fq.get(), wf.data, "graph fp8 data rep " + std::to_string(rep)));
    EXPECT_TRUE(same(fs.get(), wf.scale_inv, "graph fp8 scale rep " + std::to_string(rep)));
  }
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
}

TEST(QuantGpu, EmptyTensorsAreNoOps) {
  Mxfp8QuantizeParams p;
  p.rows = 0;
  p.cols = 64;
  p.col_data = reinterpret_cast<void*>(16);
  EXPECT_NO_THROW(mxfp8_quantize(p, nullptr));
  Fp8QuantizeParams f;
  f.rows = 0;
  f.cols = 16;
  EXPECT_NO_THROW(fp8_quantize(f, nullptr));
  CK(cudaDeviceSynchronize());
}

// ---- CUDA graph: every op ------------------------------------------------------------------------------------------
// Every quantize and dequantize op (all FP8 scalings, computed and given amax; MXFP8 rowwise on both its kernels,
// colwise, rowwise + colwise, 3-D; NVFP4 1x16 and 16x16 on both kernels; every dequantize; compute_amax) in one
// graph, replayed twice with new inputs. Each op is called once eagerly before the capture, as bench/common.cpp
// time_graph_us does, so the one-time host setup listed above QuantGpuCaptureFirst happens outside the capture;
// that test covers the first call inside one.
TEST(QuantGpu, CudaGraphEveryOp) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Fp8Format e4 = Fp8Format::kE4M3, e5 = Fp8Format::kE5M2;
  const ScaleLayout lin = ScaleLayout::kLinear, swz = ScaleLayout::kSwizzled128x4;
  const DType b16 = DType::kBFloat16, f32 = DType::kFloat32;
  const Fp8Scaling scalings[] = {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise,
                                 Fp8Scaling::kBlock1x128, Fp8Scaling::kBlock128x128};
  std::vector<GraphOp> ops;
  // FP8. Colwise takes the one-pass cluster kernel at both shapes (clusters of 2 and of 6 blocks).
  for (Fp8Scaling sc : scalings) ops.push_back(graph_fp8(1024, 256, e4, sc, false));
  ops.push_back(graph_fp8(1024, 256, e4, Fp8Scaling::kTensorwise, true));
  ops.push_back(graph_fp8(3001, 72, e5, Fp8Scaling::kColwise, false));
  ops.push_back(graph_fp8(3001, 72, e5, Fp8Scaling::kTensorwise, false));
  ops.push_back(graph_fp8(3001, 72, e5, Fp8Scaling::kBlock1x128, false));
  ops.push_back(graph_fp8(3001, 72, e5, Fp8Scaling::kBlock128x128, false));
  ops.push_back(graph_amax((int64_t(1) << 20) + 8));
  // MXFP8. Rowwise only: warp-window kernel (linear scales) and tile kernel (swizzled). Rowwise + colwise always
  // runs the persistent kernel; 2560 x 2048 has 320 tiles, more than the 2 resident blocks x 132 SMs of an H200,
  // so blocks walk several tiles and the cp.async prefetch of the next tile runs inside the graph.
  ops.push_back(graph_mxfp8({1, 1024, 512}, e4, E8M0Rounding::kRceil, lin, true, false));
  ops.push_back(graph_mxfp8({1, 1024, 512}, e4, E8M0Rounding::kFloor, swz, true, false));
  ops.push_back(graph_mxfp8({1, 1024, 512}, e4, E8M0Rounding::kRceil, lin, false, true));
  ops.push_back(graph_mxfp8({1, 2560, 2048}, e4, E8M0Rounding::kRceil, lin, true, true));
  ops.push_back(graph_mxfp8({4, 256, 384}, e5, E8M0Rounding::kFloor, swz, false, true));
  ops.push_back(graph_mxfp8({2, 160, 640}, e5, E8M0Rounding::kRceil, swz, true, true));
  // NVFP4: 1x16 linear (amax pass + warp-window kernel), 1x16 swizzled and 16x16 (tile kernel).
  ops.push_back(graph_nvfp4(1024, 512, Nvfp4Block::k1x16, lin, false));
  ops.push_back(graph_nvfp4(1000, 496, Nvfp4Block::k1x16, swz, true));
  ops.push_back(graph_nvfp4(1024, 512, Nvfp4Block::k16x16, swz, true));
  ops.push_back(graph_nvfp4(208, 240, Nvfp4Block::k16x16, lin, false));
  // Dequantize.
  int i = 0;
  for (Fp8Scaling sc : scalings) {
    ops.push_back(graph_fp8_dequant(200, 328, (i & 1) ? e5 : e4, sc, (i & 1) ? f32 : b16));
    ++i;
  }
  ops.push_back(graph_mxfp8_dequant({3, 96, 160}, Mxfp8Axis::kRowwise, e4, lin, b16));  // warp-window kernel
  ops.push_back(graph_mxfp8_dequant({3, 96, 160}, Mxfp8Axis::kRowwise, e5, swz, f32));
  ops.push_back(graph_mxfp8_dequant({3, 96, 160}, Mxfp8Axis::kColwise, e4, lin, f32));
  ops.push_back(graph_mxfp8_dequant({3, 96, 160}, Mxfp8Axis::kColwise, e5, swz, b16));
  ops.push_back(graph_nvfp4_dequant(144, 80, lin, b16));
  ops.push_back(graph_nvfp4_dequant(144, 80, swz, f32));
  capture_and_replay(ops, /*warm_up=*/true, seed);
}

// ---- deterministic edge groups (fixed construction, no seed) -------------------------------------------------------
// Every scale-group kind of edge_tensor() (zeros, all equal, power-of-two amax, amax = fp8_max * 2^k, subnormals only,
// past saturation, +Inf, -Inf, NaN, 0x7f7f, 0x0001, ties) in every kernel family, each case followed by the
// dequantization of its output. The named FP8 test runs under every colwise form (tests/CMakeLists.txt filters on
// QuantGpu.Fp8Quantize*).
TEST(QuantGpu, Fp8QuantizeDeterministicEdgeGroups) {
  const auto all = edge_kinds(true, true), finite = edge_kinds(false, false);
  const int64_t combos = static_cast<int64_t>(all.size() * kEdgeExps.size());
  AlternatingDType dq;
  // Group counts: rowwise 72 rows, colwise 72 columns and 1x128 80 blocks hold every kind with every exponent;
  // 128x128 has 16 blocks, every kind once.
  ASSERT_GE(edge_groups(72, 200, 1, 200), combos);
  ASSERT_GE(edge_groups(1100, 72, 1100, 1), combos);
  ASSERT_GE(edge_groups(20, 456, 1, 128), combos);
  ASSERT_GE(edge_groups(424, 392, 128, 128), static_cast<int64_t>(all.size()));
  const auto mixed = edge_tensor(72, 200, 1, 200, all, kEdgeExps);
  const auto mixed_finite = edge_tensor(72, 200, 1, 200, finite, kEdgeExps);
  const std::vector<uint16_t> zeros(72 * 200, 0);
  const auto cols_x = edge_tensor(1100, 72, 1100, 1, all, kEdgeExps);
  const auto b1x128_x = edge_tensor(20, 456, 1, 128, all, kEdgeExps);
  const auto b128_x = edge_tensor(424, 392, 128, 128, all, kEdgeExps);
  for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
    for (bool pow2 : {false, true}) {
      const std::string f = std::string(fp8_format_name(fmt)) + (pow2 ? " pow2" : "");
      // Tensorwise, computed amax: the whole tensor is the group, so one tensor per kind and exponent (kEdgeZero:
      // the all-(+0) tensor, amax 0).
      for (int k : all)
        for (int e : kEdgeExps)
          check_fp8(edge_tensor(16, 40, 16, 40, {k}, {e}), 16, 40, fmt, Fp8Scaling::kTensorwise, pow2, nullptr, dq(),
                    "tensorwise " + f + " " + edge_kind_name(k) + " e=" + std::to_string(e));
      // Tensorwise, given amax: every given value on every kind, on the finite kinds, and on the all-zero tensor.
      for (float a : edge_given_amax()) {
        check_fp8(mixed, 72, 200, fmt, Fp8Scaling::kTensorwise, pow2, &a, dq(),
                  "tensorwise mixed " + f + " " + amax_tag(a));
        check_fp8(mixed_finite, 72, 200, fmt, Fp8Scaling::kTensorwise, pow2, &a, dq(),
                  "tensorwise finite " + f + " " + amax_tag(a));
        check_fp8(zeros, 72, 200, fmt, Fp8Scaling::kTensorwise, pow2, &a, dq(),
                  "tensorwise zeros " + f + " " + amax_tag(a));
      }
      check_fp8(mixed, 72, 200, fmt, Fp8Scaling::kRowwise, pow2, nullptr, dq(), "rowwise " + f);
      // 1100 rows: the one-pass kernel runs clusters of 3 blocks (64-column strips); the special elements of the
      // column groups are spread over all rows, so over all blocks of a cluster.
      check_fp8(cols_x, 1100, 72, fmt, Fp8Scaling::kColwise, pow2, nullptr, dq(), "colwise " + f);
      check_fp8(b1x128_x, 20, 456, fmt, Fp8Scaling::kBlock1x128, pow2, nullptr, dq(), "1x128 " + f);
      check_fp8(b128_x, 424, 392, fmt, Fp8Scaling::kBlock128x128, pow2, nullptr, dq(), "128x128 " + f);
    }
}

TEST(QuantGpu, Mxfp8DeterministicEdgeGroups) {
  const auto all = edge_kinds(true, true);
  const int64_t combos = static_cast<int64_t>(all.size() * kEdgeExps.size());
  AlternatingDType dq;
  // 2-D with partial row and column tiles, and 3-D; the input cut into rowwise (1x32) groups, then into colwise
  // (32x1) groups. Every output selection is checked on both (check_mxfp8).
  for (const Shape3& s : {Shape3{1, 160, 224}, Shape3{3, 96, 160}})
    for (int orient = 0; orient < 2; ++orient) {
      const int64_t gr = orient == 0 ? 1 : 32, gc = orient == 0 ? 32 : 1;
      ASSERT_GE(edge_groups(s.e * s.n, s.k, gr, gc), combos);
      const auto x = edge_tensor(s.e * s.n, s.k, gr, gc, all, kEdgeExps);
      Dev<uint16_t> d_in(x);
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (E8M0Rounding rnd : {E8M0Rounding::kFloor, E8M0Rounding::kRceil})
          for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4})
            check_mxfp8(d_in, x, s, fmt, rnd, lay, dq(), orient == 0 ? "1x32 groups" : "32x1 groups");
    }
}

TEST(QuantGpu, Nvfp4DeterministicEdgeGroups) {
  struct Mixed {
    const char* name;
    std::vector<int> kinds;
    bool given;  // also run every given global amax
  };
  // Computed global amax of the mixed tensors: NaN, +Inf, 0x7f7f (S_enc ~ 7.9e-36), and a moderate value (32).
  const std::vector<Mixed> mixed = {{"all kinds", edge_kinds(true, true), true},
                                    {"no nan", edge_kinds(true, false), false},
                                    {"finite", edge_kinds(false, false), false},
                                    {"moderate", edge_kinds(false, false, false), true}};
  const int64_t R = 208, C = 240;  // partial row and column tiles; 13 x 15 blocks of 16x16
  AlternatingDType dq;
  for (Nvfp4Block blk : {Nvfp4Block::k1x16, Nvfp4Block::k16x16}) {
    const int64_t gr = blk == Nvfp4Block::k1x16 ? 1 : 16;
    for (const Mixed& m : mixed) {
      ASSERT_GE(edge_groups(R, C, gr, 16), static_cast<int64_t>(m.kinds.size() * kNvfp4EdgeExps.size()));
      const auto x = edge_tensor(R, C, gr, 16, m.kinds, kNvfp4EdgeExps);
      Dev<uint16_t> d_in(x);
      for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
        check_nvfp4(d_in, x, R, C, blk, lay, nullptr, dq(), std::string(m.name) + " computed amax");
        if (m.given)
          for (float a : edge_given_amax())
            check_nvfp4(d_in, x, R, C, blk, lay, &a, dq(), std::string(m.name) + " " + amax_tag(a));
      }
    }
    // One kind per tensor, computed global amax: the global amax itself is 0, a power of two, 1.75 * 2^k, a bf16
    // subnormal, 2^-133, +Inf, NaN, 0x7f7f, ...
    for (int k : edge_kinds(true, true)) {
      const auto x = edge_tensor(16, 48, gr, 16, {k}, kNvfp4EdgeExps);
      Dev<uint16_t> d_in(x);
      for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4})
        check_nvfp4(d_in, x, 16, 48, blk, lay, nullptr, dq(), std::string("only ") + edge_kind_name(k));
    }
  }
}

// ---- shapes at the edge of what each op accepts (src/quantize/validate.cpp) -----------------------------------------
TEST(QuantGpu, Mxfp8AcceptedOddShapes) {
  const auto all = edge_kinds(true, true);
  AlternatingDType dq;
  // Colwise only: cols need only be a multiple of 8 (check_mxfp8 runs colwise only: K % 32 != 0).
  for (const Shape3& s : {Shape3{2, 96, 72}, Shape3{1, 64, 200}, Shape3{3, 32, 8}}) {
    const auto x = edge_tensor(s.e * s.n, s.k, 32, 1, all, kEdgeExps);
    Dev<uint16_t> d_in(x);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (E8M0Rounding rnd : {E8M0Rounding::kFloor, E8M0Rounding::kRceil})
        for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4})
          check_mxfp8(d_in, x, s, fmt, rnd, lay, dq(), "colwise-only, cols % 32 != 0");
  }
  // Rowwise only: rows need not be a multiple of 32 (check_mxfp8 runs rowwise only: N % 32 != 0). Kinds from
  // kEdgeSaturate on, so that the single group of 1 x 1 x 32 is not all zero.
  std::vector<int> rot = all;
  std::rotate(rot.begin(), rot.begin() + kEdgeSaturate, rot.end());
  for (const Shape3& s : {Shape3{2, 33, 96}, Shape3{1, 1, 32}, Shape3{3, 7, 160}}) {
    const auto x = edge_tensor(s.e * s.n, s.k, 1, 32, rot, kEdgeExps);
    Dev<uint16_t> d_in(x);
    for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
      for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4})
        check_mxfp8(d_in, x, s, fmt, E8M0Rounding::kRceil, lay, dq(), "rowwise-only, rows % 32 != 0");
  }
  // The colwise dequantize checks rows only, so it takes any cols (here 7 and 20): random codes, scale codes
  // included 0 / 254 / 255.
  for (const Shape3& s : {Shape3{2, 64, 7}, Shape3{1, 32, 20}}) {
    const size_t nel = static_cast<size_t>(s.e * s.n * s.k);
    const auto data = random_bytes(nel, 7000 + static_cast<uint64_t>(s.k));
    Dev<uint8_t> d_data(data);
    for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
      const auto scales = random_bytes(static_cast<size_t>(mxfp8_col_scale_bytes(s.e, s.n, s.k, lay)),
                                       7100 + static_cast<uint64_t>(s.k));
      Dev<uint8_t> d_sc(scales);
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        for (DType dt : {DType::kBFloat16, DType::kFloat32})
          check_dequant(mxfp8_dequantize,
                        mxfp8_dequant_params(d_data.p, d_sc.p, Mxfp8Axis::kColwise, s, fmt, lay, nullptr, dt), nel,
                        ref::mxfp8_dequantize(data, scales, Mxfp8Axis::kColwise, s.e, s.n, s.k, fmt, lay, dt),
                        "mxfp8 col dequant " + shape_tag(s) + " " + scale_layout_name(lay) + " " +
                            fp8_format_name(fmt) + " " + dtype_name(dt));
    }
  }
}

TEST(QuantGpu, Nvfp4AcceptedOddShapes) {
  // 1x16 takes any rows (swizzled scales padded to 128 rows; the linear layout runs the warp-window kernel);
  // 16x16 needs rows % 16 == 0: here not multiples of 128 (or below it).
  struct Case {
    int64_t rows, cols;
    Nvfp4Block blk;
  };
  const auto moderate = edge_kinds(false, false, false), all = edge_kinds(true, true);
  AlternatingDType dq;
  const float given = 8.0f;
  const Nvfp4Block b1 = Nvfp4Block::k1x16, b16 = Nvfp4Block::k16x16;
  for (const Case& c : {Case{1, 48, b1}, Case{37, 48, b1}, Case{37, 80, b1}, Case{130, 80, b1}, Case{16, 48, b16},
                        Case{48, 208, b16}, Case{272, 48, b16}}) {
    const int64_t gr = c.blk == Nvfp4Block::k1x16 ? 1 : 16;
    const auto xm = edge_tensor(c.rows, c.cols, gr, 16, moderate, kNvfp4EdgeExps);
    const auto xa = edge_tensor(c.rows, c.cols, gr, 16, all, kNvfp4EdgeExps);
    Dev<uint16_t> dm(xm), da(xa);
    for (ScaleLayout lay : {ScaleLayout::kLinear, ScaleLayout::kSwizzled128x4}) {
      check_nvfp4(dm, xm, c.rows, c.cols, c.blk, lay, nullptr, dq(), "odd shape, computed amax");
      check_nvfp4(da, xa, c.rows, c.cols, c.blk, lay, &given, dq(), "odd shape, " + amax_tag(given));
    }
  }
}

TEST(QuantGpu, Fp8QuantizeAcceptedOddShapes) {
  // cols a multiple of 8 and nothing else: one row, one 8-wide column group, 1x128 / 128x128 edge blocks of 8
  // columns, a colwise strip whose last 64-column strip holds 8 columns.
  // Finite kinds without 0x7f7f (the tensorwise amax stays moderate), a nonzero one first (the 1 x 8 tensor is one
  // group).
  const std::vector<int> kinds = {kEdgeFp8Max,   kEdgeTies, kEdgeEqual,     kEdgePow2,
                                  kEdgeSaturate, kEdgeZero, kEdgeSubnormal, kEdgeMinSubnormal};
  const std::vector<int> exps = {0, -3, 5};
  AlternatingDType dq;
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 8}, {129, 8}, {130, 136}, {2, 1160}}) {
    const auto x = edge_tensor(rows, cols, 1, 8, kinds, exps);
    for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                          Fp8Scaling::kBlock128x128})
      for (Fp8Format fmt : {Fp8Format::kE4M3, Fp8Format::kE5M2})
        check_fp8(x, rows, cols, fmt, sc, false, nullptr, dq(),
                  std::string("odd shape ") + shape_tag(rows, cols) + " " + fp8_scaling_name(sc) + " " +
                      fp8_format_name(fmt));
  }
}

// Shapes an op cannot take throw tpcomm::Error(kInvalidArgument) naming the dimension, before anything is enqueued
// (every output keeps its sentinel). All pointers are valid device buffers, so only the shape can be at fault.
TEST(QuantGpu, RejectedShapesThrowNamingTheDim) {
  Dev<uint16_t> in(64 * 256);
  Dev<uint8_t> o1(64 * 256 * 4), o2(64 * 256 * 4), s1(8192), s2(8192);
  Dev<float> f1(256), f2(256);
  // Format, rounding, layouts and output types: the header's defaults.
  const Fp8Format e4 = Fp8Format::kE4M3;
  const ScaleLayout lin = ScaleLayout::kLinear;
  const DType b16 = DType::kBFloat16;
  auto mx = [&](int64_t e, int64_t rows, int64_t cols, bool row, bool col) {
    return mxfp8_params(in.p, Shape3{e, rows, cols}, e4, E8M0Rounding::kRceil, lin, row, col, o1.p, s1.p, o2.p, s2.p);
  };
  expect_dim_error([&] { mxfp8_quantize(mx(1, 64, 20, false, true), nullptr); }, "cols", "mxfp8 colwise cols 20");
  expect_dim_error([&] { mxfp8_quantize(mx(1, 48, 64, false, true), nullptr); }, "rows", "mxfp8 colwise rows 48");
  expect_dim_error([&] { mxfp8_quantize(mx(2, 40, 64, false, true), nullptr); }, "rows", "mxfp8 3-D colwise rows 40");
  expect_dim_error([&] { mxfp8_quantize(mx(1, 64, 72, true, false), nullptr); }, "cols", "mxfp8 rowwise cols 72");
  expect_dim_error([&] { mxfp8_quantize(mx(1, 64, 72, true, true), nullptr); }, "cols",
                   "mxfp8 rowwise+colwise cols 72 (colwise alone accepts it)");
  auto mxd = [&](Mxfp8Axis axis, int64_t rows, int64_t cols) {
    return mxfp8_dequant_params(o1.p, s1.p, axis, Shape3{1, rows, cols}, e4, lin, o2.p, b16);
  };
  expect_dim_error([&] { mxfp8_dequantize(mxd(Mxfp8Axis::kRowwise, 64, 72), nullptr); }, "cols",
                   "mxfp8 row dequant cols 72");
  expect_dim_error([&] { mxfp8_dequantize(mxd(Mxfp8Axis::kColwise, 48, 64), nullptr); }, "rows",
                   "mxfp8 col dequant rows 48");
  auto nv = [&](Nvfp4Block blk, int64_t rows, int64_t cols) {
    return nvfp4_params(in.p, rows, cols, blk, lin, o1.p, s1.p, nullptr, f1.p, f2.p);
  };
  expect_dim_error([&] { nvfp4_quantize(nv(Nvfp4Block::k16x16, 40, 64), nullptr); }, "rows", "nvfp4 16x16 rows 40");
  expect_dim_error([&] { nvfp4_quantize(nv(Nvfp4Block::k1x16, 40, 24), nullptr); }, "cols", "nvfp4 1x16 cols 24");
  expect_dim_error([&] { nvfp4_quantize(nv(Nvfp4Block::k16x16, 32, 24), nullptr); }, "cols", "nvfp4 16x16 cols 24");
  expect_dim_error([&] { nvfp4_dequantize(nvfp4_dequant_params(o1.p, s1.p, f2.p, 32, 24, lin, o2.p, b16), nullptr); },
                   "cols", "nvfp4 dequant cols 24");
  for (Fp8Scaling sc : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                        Fp8Scaling::kBlock128x128}) {
    Fp8QuantizeParams p = fp8_params(in.p, 64, 12, e4, sc, o1.p, f1.p);
    p.amax_out = f2.p;
    expect_dim_error([&] { fp8_quantize(p, nullptr); }, "cols",
                     std::string("fp8 ") + fp8_scaling_name(sc) + " cols 12");
    const Fp8DequantizeParams d = fp8_dequant_params(o1.p, 64, 12, e4, sc, f1.p, 0, o2.p, b16);
    expect_dim_error([&] { fp8_dequantize(d, nullptr); }, "cols",
                     std::string("fp8 dequant ") + fp8_scaling_name(sc) + " cols 12");
  }
  expect_dim_error([&] { compute_amax(in.p, DType::kBFloat16, 12, f1.p, nullptr); }, "count", "compute_amax count 12");
  CK(cudaDeviceSynchronize());
  for (const Dev<uint8_t>* d : {&o1, &o2, &s1, &s2}) {
    const auto h = d->get();
    EXPECT_TRUE(std::all_of(h.begin(), h.end(), [](uint8_t b) { return b == 0xcd; })) << "a rejected call wrote output";
  }
  for (const Dev<float>* d : {&f1, &f2}) {
    const auto h = d->get();
    EXPECT_TRUE(std::all_of(h.begin(), h.end(), [](float v) { return bits_of(v) == 0xcdcdcdcdu; }))
        << "a rejected call wrote output";
  }
}
