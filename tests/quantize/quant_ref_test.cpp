// CPU tests (CI): the reference codecs against hand-checked values, the swizzle formula, round-trip error
// bounds of every format, and host-side argument validation of the public API (no GPU needed: validation runs
// before anything is enqueued).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

uint16_t bf(float f) { return ref::float_to_bf16(f); }

std::vector<uint16_t> random_bf16(int64_t n, uint64_t seed, int emin = -12, int emax = 12) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> v(static_cast<size_t>(n));
  for (auto& x : v) {
    const double m = rng.uniform(1.0, 2.0);
    const int e = emin + static_cast<int>(rng.next() % static_cast<uint64_t>(emax - emin + 1));
    const double s = (rng.next() & 1) ? -1.0 : 1.0;
    x = bf(static_cast<float>(s * std::ldexp(m, e)));
  }
  return v;
}

// Expects a tpcomm::Error(kInvalidArgument) whose message names `name` right after the code prefix.
template <class F>
void expect_arg_error(F&& f, const std::string& name) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected one naming '" << name << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("invalid_argument: " + name + ":"), std::string::npos) << e.what();
  }
}

void* fake(uintptr_t a = 0x10000) { return reinterpret_cast<void*>(a); }

}  // namespace

TEST(QuantRef, Fp8DecodeKnownValues) {
  EXPECT_EQ(ref::fp8_decode(0x7e, Fp8Format::kE4M3), 448.0f);
  EXPECT_EQ(ref::fp8_decode(0xfe, Fp8Format::kE4M3), -448.0f);
  EXPECT_EQ(ref::fp8_decode(0x01, Fp8Format::kE4M3), std::ldexp(1.0f, -9));
  EXPECT_EQ(ref::fp8_decode(0x08, Fp8Format::kE4M3), std::ldexp(1.0f, -6));
  EXPECT_EQ(ref::fp8_decode(0x38, Fp8Format::kE4M3), 1.0f);
  EXPECT_TRUE(std::isnan(ref::fp8_decode(0x7f, Fp8Format::kE4M3)));
  EXPECT_TRUE(std::isnan(ref::fp8_decode(0xff, Fp8Format::kE4M3)));
  EXPECT_EQ(ref::fp8_decode(0x7b, Fp8Format::kE5M2), 57344.0f);
  EXPECT_EQ(ref::fp8_decode(0x7c, Fp8Format::kE5M2), kInf);
  EXPECT_TRUE(std::isnan(ref::fp8_decode(0x7d, Fp8Format::kE5M2)));
  EXPECT_EQ(ref::fp8_decode(0x01, Fp8Format::kE5M2), std::ldexp(1.0f, -16));
  EXPECT_EQ(ref::fp8_decode(0x3c, Fp8Format::kE5M2), 1.0f);
  EXPECT_TRUE(std::signbit(ref::fp8_decode(0x80, Fp8Format::kE4M3)));
}

TEST(QuantRef, Fp8EncodeRoundTripsEveryFiniteCode) {
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (int c = 0; c < 256; ++c) {
      const float v = ref::fp8_decode(static_cast<uint8_t>(c), f);
      if (!std::isfinite(v)) continue;
      EXPECT_EQ(ref::fp8_encode(v, f), c) << fp8_format_name(f) << " code " << c;
    }
  }
}

TEST(QuantRef, Fp8EncodeRoundingAndSaturation) {
  const auto e4 = [](float v) { return ref::fp8_encode(v, Fp8Format::kE4M3); };
  const auto e5 = [](float v) { return ref::fp8_encode(v, Fp8Format::kE5M2); };
  EXPECT_EQ(e4(1.0625f), 0x38);  // tie between 1.0 (even) and 1.125
  EXPECT_EQ(e4(1.1875f), 0x3a);  // tie between 1.125 and 1.25 (even)
  EXPECT_EQ(e4(1.07f), 0x39);
  EXPECT_EQ(e4(464.0f), 0x7e);   // tie between 448 and 480 -> 448 (and 480 is not finite anyway)
  EXPECT_EQ(e4(500.0f), 0x7e);
  EXPECT_EQ(e4(1e30f), 0x7e);
  EXPECT_EQ(e4(kInf), 0x7e);
  EXPECT_EQ(e4(-kInf), 0xfe);
  EXPECT_EQ(e4(kNaN), 0x7f);
  EXPECT_EQ(e4(-kNaN), 0x7f);
  EXPECT_EQ(e4(std::ldexp(1.0f, -10)), 0x00);         // half the smallest subnormal: tie to 0
  EXPECT_EQ(e4(std::ldexp(1.5f, -10)), 0x01);
  EXPECT_EQ(e4(std::ldexp(3.0f, -10)), 0x02);         // tie between 1 and 2 subnormal quanta -> 2 (even)
  EXPECT_EQ(e4(-std::ldexp(1.0f, -12)), 0x80);        // negative underflow keeps the sign
  EXPECT_EQ(e4(std::ldexp(1.0f, -100)), 0x00);
  EXPECT_EQ(e5(60000.0f), 0x7b);
  EXPECT_EQ(e5(kInf), 0x7b);
  EXPECT_EQ(e5(kNaN), 0x7f);
  EXPECT_EQ(e5(1.125f), 0x3c);  // tie between 1.0 (even) and 1.25
  EXPECT_EQ(e5(1.375f), 0x3e);  // tie between 1.25 and 1.5 (even)
}

TEST(QuantRef, E2m1Encode) {
  const std::vector<std::pair<float, int>> cases = {
      {0.0f, 0}, {0.25f, 0}, {0.2501f, 1}, {0.5f, 1}, {0.75f, 2}, {1.0f, 2}, {1.25f, 2}, {1.2501f, 3}, {1.5f, 3},
      {1.75f, 4}, {2.0f, 4}, {2.5f, 4}, {2.5001f, 5}, {3.0f, 5}, {3.5f, 6}, {4.0f, 6}, {5.0f, 6}, {5.001f, 7},
      {6.0f, 7}, {7.0f, 7}, {1e30f, 7}, {kInf, 7}, {kNaN, 7}, {std::ldexp(1.0f, -140), 0}};
  for (const auto& [v, c] : cases) EXPECT_EQ(ref::e2m1_encode_magnitude(v), c) << v;
  for (int c = 0; c < 16; ++c) {
    const float v = ref::e2m1_decode(static_cast<uint8_t>(c));
    EXPECT_EQ(ref::e2m1_encode_magnitude(v) | (std::signbit(v) ? 8 : 0), c);
  }
  EXPECT_EQ(ref::e2m1_decode(7), 6.0f);
  EXPECT_EQ(ref::e2m1_decode(0xd), -3.0f);
}

TEST(QuantRef, E8m0Selection) {
  using R = E8M0Rounding;
  const auto fl = [](float a) { return ref::e8m0_select(a, Fp8Format::kE4M3, R::kFloor); };
  const auto rc = [](float a) { return ref::e8m0_select(a, Fp8Format::kE4M3, R::kRceil); };
  EXPECT_EQ(fl(448.0f), 127);   // floor(log2 448) = 8 -> 8 - 8 + 127
  EXPECT_EQ(fl(511.0f), 127);
  EXPECT_EQ(fl(512.0f), 128);
  EXPECT_EQ(fl(1.0f), 119);
  EXPECT_EQ(fl(0.0f), 0);
  EXPECT_EQ(fl(std::ldexp(1.0f, -133)), 0);  // subnormal amax
  EXPECT_EQ(fl(3.3895e38f), 246);
  EXPECT_EQ(rc(448.0f), 127);   // 448 / 448 = 1 = 2^0
  EXPECT_EQ(rc(450.0f), 128);
  EXPECT_EQ(rc(896.0f), 128);   // exactly 2 * 448
  EXPECT_EQ(rc(1.0f), 119);     // 1/448 -> 2^-8
  EXPECT_EQ(rc(1.75f), 119);    // 1.75/448 = 2^-8 exactly
  EXPECT_EQ(rc(1.76f), 120);
  EXPECT_EQ(rc(0.0f), 0);
  EXPECT_EQ(rc(std::ldexp(1.75f, -118)), 1);   // amax/448 = 2^-126
  EXPECT_EQ(rc(std::ldexp(1.75f, -119)), 0);   // amax/448 = 2^-127
  EXPECT_EQ(rc(std::ldexp(1.5f, -118)), 1);    // amax/448 in (2^-127, 2^-126]
  EXPECT_EQ(rc(3.3895e38f), 247);
  for (R r : {R::kFloor, R::kRceil}) {
    EXPECT_EQ(ref::e8m0_select(kNaN, Fp8Format::kE4M3, r), 0xff);
    EXPECT_EQ(ref::e8m0_select(kInf, Fp8Format::kE4M3, r), 0xff);
    EXPECT_EQ(ref::e8m0_select(kInf, Fp8Format::kE5M2, r), 0xff);
  }
  EXPECT_EQ(ref::e8m0_select(57344.0f, Fp8Format::kE5M2, R::kRceil), 127);
  EXPECT_EQ(ref::e8m0_select(57344.0f, Fp8Format::kE5M2, R::kFloor), 127);  // floor(log2) = 15 -> 15 - 15
  EXPECT_EQ(ref::e8m0_decode(127), 1.0f);
  EXPECT_EQ(ref::e8m0_decode(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(ref::e8m0_decode(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(ref::e8m0_decode(255)));
}

TEST(QuantRef, Fp8ScaleFormula) {
  EXPECT_EQ(ref::fp8_quant_scale(448.0f, Fp8Format::kE4M3, false), 1.0f);
  EXPECT_EQ(ref::fp8_quant_scale(0.0f, Fp8Format::kE4M3, false), static_cast<float>(448.0 / 1e-12));
  EXPECT_EQ(ref::fp8_quant_scale(3.0f, Fp8Format::kE4M3, false), static_cast<float>(448.0 / 3.0));
  EXPECT_EQ(ref::fp8_quant_scale(3.0f, Fp8Format::kE4M3, true), 128.0f);  // 149.33 -> 128
  EXPECT_EQ(ref::fp8_quant_scale(kInf, Fp8Format::kE4M3, true), 0.0f);
  EXPECT_TRUE(std::isnan(ref::fp8_quant_scale(kNaN, Fp8Format::kE4M3, false)));
  EXPECT_EQ(ref::fp8_quant_scale(1.0f, Fp8Format::kE5M2, false), 57344.0f);
}

TEST(QuantRef, Nvfp4GlobalScale) {
  EXPECT_EQ(ref::nvfp4_global_encode_scale(2688.0f), 1.0f);
  EXPECT_EQ(ref::nvfp4_global_encode_scale(0.0f), 1.0f);
  EXPECT_EQ(ref::nvfp4_global_encode_scale(kInf), 1.0f);
  EXPECT_EQ(ref::nvfp4_global_encode_scale(kNaN), std::numeric_limits<float>::max());
  EXPECT_EQ(ref::nvfp4_global_encode_scale(std::ldexp(1.0f, -140)), std::numeric_limits<float>::max());
}

TEST(QuantRef, Bf16Rounding) {
  EXPECT_EQ(ref::float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(ref::float_to_bf16(ref::bits_to_float(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(ref::float_to_bf16(ref::bits_to_float(0x3f818000u)), 0x3f82);  // tie -> even
  EXPECT_EQ(ref::float_to_bf16(ref::bits_to_float(0x3f808001u)), 0x3f81);
  EXPECT_EQ(ref::float_to_bf16(kNaN), 0x7fff);
  EXPECT_EQ(ref::float_to_bf16(ref::bits_to_float(0x7f7fffffu)), 0x7f80);  // rounds to Inf
  EXPECT_EQ(ref::float_to_bf16(ref::bits_to_float(0x00018000u)), 0x0002);  // subnormal tie -> even
}

TEST(QuantRef, SwizzleMatchesPublicFormula) {
  for (int64_t rows : {1, 100, 128, 300})
    for (int64_t cols : {1, 3, 4, 7, 40}) {
      EXPECT_EQ(ref::swizzle_count(rows, cols), swizzled_scale_count(rows, cols));
      std::vector<int> seen(static_cast<size_t>(swizzled_scale_count(rows, cols)), 0);
      for (int64_t r = 0; r < (rows + 127) / 128 * 128; ++r)
        for (int64_t c = 0; c < (cols + 3) / 4 * 4; ++c) {
          const int64_t o = ref::swizzle_offset(r, c, cols);
          ASSERT_EQ(o, swizzled_scale_offset(r, c, cols));
          ASSERT_LT(o, static_cast<int64_t>(seen.size()));
          seen[o]++;
        }
      for (int s : seen) ASSERT_EQ(s, 1);  // a bijection onto the padded buffer
    }
  // Interleave inside one 128x4 tile: rows 0, 32, 64, 96 are adjacent 4-byte groups.
  EXPECT_EQ(swizzled_scale_offset(0, 0, 4), 0);
  EXPECT_EQ(swizzled_scale_offset(32, 0, 4), 4);
  EXPECT_EQ(swizzled_scale_offset(1, 0, 4), 16);
  EXPECT_EQ(swizzled_scale_offset(0, 4, 8), 512);
  EXPECT_EQ(swizzled_scale_offset(128, 0, 8), 1024);
}

TEST(QuantRef, SizeHelpers) {
  EXPECT_EQ(mxfp8_row_scale_bytes(2, 100, 96, ScaleLayout::kLinear), 2 * 100 * 3);
  EXPECT_EQ(mxfp8_row_scale_bytes(2, 100, 96, ScaleLayout::kSwizzled128x4), 2 * 128 * 4);
  EXPECT_EQ(mxfp8_col_scale_bytes(3, 64, 200, ScaleLayout::kLinear), 3 * 2 * 200);
  EXPECT_EQ(mxfp8_col_scale_bytes(3, 64, 200, ScaleLayout::kSwizzled128x4), 3 * 256 * 4);
  EXPECT_EQ(nvfp4_scale_bytes(130, 80, ScaleLayout::kSwizzled128x4), 256 * 8);
  EXPECT_EQ(fp8_scale_count(200, 328, Fp8Scaling::kBlock1x128), 3 * 200);
  EXPECT_EQ(fp8_scale_count(200, 328, Fp8Scaling::kBlock1x128, 256), 2 * 256 + 200);
  EXPECT_EQ(fp8_scale_count(200, 328, Fp8Scaling::kBlock128x128), 2 * 3);
  EXPECT_EQ(fp8_scale_count(200, 328, Fp8Scaling::kBlock128x128, 4), 4 + 3);
}

// Round trip through the reference: the error of every finite, non-saturated element is bounded by the
// format's relative precision times its block amax.
TEST(QuantRef, RoundTripErrorBounds) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t rows = 64, cols = 256;
  const auto x = random_bf16(rows * cols, seed, -6, 6);
  auto val = [&](int64_t i) { return static_cast<double>(ref::bf16_to_float(x[i])); };
  auto deq = [](uint32_t b) { return static_cast<double>(ref::bf16_to_float(static_cast<uint16_t>(b))); };
  {
    const auto q = ref::mxfp8_quantize(x, 1, rows, cols, Fp8Format::kE4M3, E8M0Rounding::kRceil,
                                       ScaleLayout::kLinear, true, true);
    const auto dr = ref::mxfp8_dequantize(q.row_data, q.row_scales, Mxfp8Axis::kRowwise, 1, rows, cols,
                                          Fp8Format::kE4M3, ScaleLayout::kLinear, DType::kBFloat16);
    const auto dc = ref::mxfp8_dequantize(q.col_data, q.col_scales, Mxfp8Axis::kColwise, 1, rows, cols,
                                          Fp8Format::kE4M3, ScaleLayout::kLinear, DType::kBFloat16);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        const double ba = ref::amax_of(&x[r * cols + c / 32 * 32], 32);
        EXPECT_LE(std::fabs(deq(dr[i]) - val(i)), ba * 0x1p-3 + std::fabs(val(i)) * 0x1p-7) << i;
        const double bc = ref::amax_of(&x[(r / 32 * 32) * cols + c], 32, cols);
        EXPECT_LE(std::fabs(deq(dc[c * rows + r]) - val(i)), bc * 0x1p-3 + std::fabs(val(i)) * 0x1p-7) << i;
      }
  }
  {
    const auto q = ref::nvfp4_quantize(x, rows, cols, Nvfp4Block::k1x16, ScaleLayout::kSwizzled128x4);
    const auto d = ref::nvfp4_dequantize(q.data, q.scales, q.global_scale_inv, rows, cols,
                                         ScaleLayout::kSwizzled128x4, DType::kFloat32);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const double ba = ref::amax_of(&x[i / 16 * 16], 16);
      const double got = ref::bits_to_float(d[i]);
      EXPECT_LE(std::fabs(got - val(i)), ba * 0.3) << i;
    }
  }
  for (Fp8Scaling s : {Fp8Scaling::kTensorwise, Fp8Scaling::kRowwise, Fp8Scaling::kColwise, Fp8Scaling::kBlock1x128,
                       Fp8Scaling::kBlock128x128}) {
    const auto q = ref::fp8_quantize(x, rows, cols, Fp8Format::kE4M3, s, false);
    const auto d = ref::fp8_dequantize(q.data, rows, cols, Fp8Format::kE4M3, s, q.scale_inv, 0, DType::kFloat32);
    const double gmax = ref::amax_of(x.data(), rows * cols);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const double got = ref::bits_to_float(d[i]);
      // relative 2^-4 for normal fp8 values, plus the subnormal quantum scaled back (at most gmax * 2^-9/448 * 448)
      EXPECT_LE(std::fabs(got - val(i)), std::fabs(val(i)) * 0x1p-4 + gmax * 0x1p-16) << fp8_scaling_name(s) << " " << i;
    }
  }
}

TEST(QuantRef, Mxfp8SpecialBlocks) {
  // One 32-element row block per case, quantized rowwise.
  std::vector<uint16_t> x(4 * 32, 0);
  for (int j = 0; j < 32; ++j) {
    x[0 * 32 + j] = 0;                                   // zeros -> code 0, data 0
    x[1 * 32 + j] = bf(j == 5 ? kNaN : 1.0f);            // NaN -> code 255, all data NaN
    x[2 * 32 + j] = bf(j == 7 ? -kInf : 2.0f);           // Inf -> code 255
    x[3 * 32 + j] = bf(448.0f * (j % 2 ? -1.f : 1.f));   // amax exactly max -> code 127, +-448
  }
  const auto q = ref::mxfp8_quantize(x, 1, 4, 32, Fp8Format::kE4M3, E8M0Rounding::kRceil, ScaleLayout::kLinear, true,
                                     false);
  EXPECT_EQ(q.row_scales[0], 0);
  EXPECT_EQ(q.row_scales[1], 255);
  EXPECT_EQ(q.row_scales[2], 255);
  EXPECT_EQ(q.row_scales[3], 127);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(q.row_data[j], 0);
    EXPECT_EQ(q.row_data[32 + j], 0x7f);
    EXPECT_EQ(q.row_data[64 + j], 0x7f);
    EXPECT_EQ(q.row_data[96 + j], j % 2 ? 0xfe : 0x7e);
  }
}

// ---- API validation (host only; no CUDA work happens before these throw) -------------------------------------------
TEST(QuantApi, Fp8TransposedOutputRulesNameTheArgument) {
  Fp8QuantizeParams p;
  p.input = fake();
  p.rows = 64;
  p.cols = 96;
  p.output = fake();
  p.scale_inv = static_cast<float*>(fake());
  p.amax_out = static_cast<float*>(fake());
  p.transpose_output = true;
  p.scaling = Fp8Scaling::kRowwise;
  expect_arg_error([&] { fp8_quantize(p, nullptr); }, "transpose_output");
  p.scaling = Fp8Scaling::kColwise;
  p.rows = 72;  // not a multiple of 16
  expect_arg_error([&] { fp8_quantize(p, nullptr); }, "rows");
}

TEST(QuantApi, Mxfp8RejectsShapesNamingTheDim) {
  Mxfp8QuantizeParams p;
  p.input = fake();
  p.rows = 64;
  p.cols = 96;
  p.col_data = fake();
  p.col_scales = static_cast<uint8_t*>(fake());
  p.rows = 48;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "rows");
  p.rows = 64;
  p.row_data = fake();
  p.row_scales = static_cast<uint8_t*>(fake());
  p.cols = 48;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "cols");
  p.cols = 64;
  p.experts = 0;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "experts");
  p.experts = 2;
  p.input = nullptr;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "input");
  p.input = fake(0x10008);
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "input");
  p.input = fake();
  p.input_dtype = DType::kFloat32;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "input_dtype");
  p.input_dtype = DType::kBFloat16;
  p.row_scales = nullptr;
  expect_arg_error([&] { mxfp8_quantize(p, nullptr); }, "row_scales");
  Mxfp8QuantizeParams none;
  none.input = fake();
  none.rows = 32;
  none.cols = 32;
  expect_arg_error([&] { mxfp8_quantize(none, nullptr); }, "row_data");
  Mxfp8DequantizeParams d;
  d.axis = Mxfp8Axis::kColwise;
  d.rows = 40;
  d.cols = 64;
  expect_arg_error([&] { mxfp8_dequantize(d, nullptr); }, "rows");
}

TEST(QuantApi, Nvfp4AndFp8RejectBadArguments) {
  Nvfp4QuantizeParams n;
  n.input = fake();
  n.output = fake();
  n.block_scales = static_cast<uint8_t*>(fake());
  n.global_amax_in = static_cast<const float*>(fake());
  n.rows = 32;
  n.cols = 24;
  expect_arg_error([&] { nvfp4_quantize(n, nullptr); }, "cols");
  n.cols = 32;
  n.rows = 8;
  n.block = Nvfp4Block::k16x16;
  expect_arg_error([&] { nvfp4_quantize(n, nullptr); }, "rows");
  n.rows = 32;
  n.global_amax_in = nullptr;
  expect_arg_error([&] { nvfp4_quantize(n, nullptr); }, "global_amax_out");

  Fp8QuantizeParams f;
  f.input = fake();
  f.output = fake();
  f.scale_inv = static_cast<float*>(fake());
  f.rows = 256;
  f.cols = 100;
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "cols");
  f.cols = 256;
  f.scaling = Fp8Scaling::kBlock1x128;
  f.scale_ld = 100;
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "scale_ld");
  f.scale_ld = 0;
  f.scaling = Fp8Scaling::kTensorwise;
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "amax_out");
  f.scaling = Fp8Scaling::kColwise;
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "amax_out");
  f.scaling = static_cast<Fp8Scaling>(9);
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "scaling");
  f.scaling = Fp8Scaling::kRowwise;
  f.format = static_cast<Fp8Format>(7);
  expect_arg_error([&] { fp8_quantize(f, nullptr); }, "format");

  Fp8DequantizeParams fd;
  fd.rows = 4;
  fd.cols = 16;
  fd.output_dtype = DType::kFloat16;
  expect_arg_error([&] { fp8_dequantize(fd, nullptr); }, "output_dtype");
  expect_arg_error([&] { compute_amax(fake(), DType::kBFloat16, 12, static_cast<float*>(fake()), nullptr); }, "count");
}

TEST(QuantApi, NamesAndParsing) {
  EXPECT_EQ(parse_fp8_format("E4M3"), Fp8Format::kE4M3);
  EXPECT_EQ(parse_e8m0_rounding("rceil"), E8M0Rounding::kRceil);
  EXPECT_EQ(parse_scale_layout("swizzled"), ScaleLayout::kSwizzled128x4);
  expect_arg_error([] { parse_e8m0_rounding("ceil", "--scale-mode"); }, "--scale-mode");
  EXPECT_STREQ(fp8_scaling_name(Fp8Scaling::kBlock128x128), "128x128");
  EXPECT_EQ(fp8_max(Fp8Format::kE5M2), 57344.0f);
}
