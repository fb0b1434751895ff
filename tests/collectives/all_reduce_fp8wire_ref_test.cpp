// CPU tests of the FP8-wire all-reduce: its reference (round-trip bounds, zero blocks, saturation, non-finite
// blocks, the all-reduce against the float64 reduction within the documented bound), the wire layout, and the
// argument checks of the wire options.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "collectives/all_reduce_args.h"
#include "collectives/all_reduce_fp8wire.h"
#include "collectives/all_reduce_fp8wire_ref.h"
#include "collectives/all_reduce_ref.h"
#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"

using namespace tpcomm;
using namespace tpcomm::test;

namespace {

float bits_f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A block of n values: magnitudes spread over `decades` powers of two below 2^e_top, random signs.
std::vector<float> random_block(SplitMix64& rng, std::size_t n, int e_top, int spread) {
  std::vector<float> x(n);
  for (auto& v : x) {
    const int e = e_top - static_cast<int>(rng.next() % static_cast<uint64_t>(spread + 1));
    v = static_cast<float>(std::ldexp(rng.uniform(0.5, 1.0), e) * (rng.next() & 1 ? -1.0 : 1.0));
  }
  return x;
}

}  // namespace

TEST(Fp8WireRef, Float32OpsAreTheIeeeOps) {
  SplitMix64 rng(0xF8F8);
  int n = 0;
  while (n < 200000) {
    // Random finite bit patterns: subnormals, overflowing products and quotients included.
    const uint32_t ua = static_cast<uint32_t>(rng.next()), ub = static_cast<uint32_t>(rng.next() >> 32);
    if ((ua & 0x7f800000u) == 0x7f800000u || (ub & 0x7f800000u) == 0x7f800000u) continue;
    ++n;
    const float a = bits_f(ua), b = bits_f(ub);
    volatile float va = a, vb = b;
    const float s = va + vb, p = va * vb, q = va / vb;
    const float sr = f32_add(a, b), pr = f32_mul(a, b), qr = f32_div(a, b);
    EXPECT_EQ(std::memcmp(&s, &sr, 4), 0) << a << " + " << b;
    EXPECT_EQ(std::memcmp(&p, &pr, 4), 0) << a << " * " << b;
    if (!std::isnan(q)) EXPECT_EQ(std::memcmp(&q, &qr, 4), 0) << a << " / " << b;
    if (HasFailure()) break;
  }
}

TEST(Fp8WireRef, RoundTripWithinTheBoundAndTheAmaxMapsTo448) {
  SplitMix64 rng(fresh_seed());
  for (std::size_t B : {std::size_t(32), std::size_t(128)}) {
    double worst_rel = 0;  // largest error relative to the bound over the normal-code elements
    double worst_frac = 0; // largest |x^ - x| / |x| (must be e4m3-sized, not zero)
    for (int t = 0; t < 2000; ++t) {
      const int e_top = static_cast<int>(rng.next() % 200) - 100;
      const int spread = static_cast<int>(rng.next() % 24);
      const auto x = random_block(rng, B, e_top, spread);
      std::vector<uint8_t> q(B);
      std::vector<float> y(B);
      const float d = fp8_wire_quantize_block(x.data(), B, q.data());
      fp8_wire_dequantize_block(q.data(), B, d, y.data());
      const float a = fp8_wire_amax_ref(x.data(), B);
      EXPECT_EQ(d, f32_div(a, 448.0f));
      for (std::size_t i = 0; i < B; ++i) {
        EXPECT_NE(q[i] & 0x7f, 0x7f) << "NaN code for finite input";
        const double err = std::fabs(static_cast<double>(y[i]) - x[i]);
        const double bound = fp8_wire_quant_bound(std::fabs(x[i]), a);
        EXPECT_LE(err, bound) << "x " << x[i] << " amax " << a << " decoded " << y[i];
        worst_rel = std::max(worst_rel, err / bound);
        if (std::fabs(x[i]) * 64 >= a) worst_frac = std::max(worst_frac, err / std::fabs(x[i]));
        if (std::fabs(x[i]) == a) EXPECT_EQ(q[i] & 0x7f, 0x7e) << "the amax element encodes as +-448";
        EXPECT_EQ(q[i] >> 7, std::signbit(x[i]) ? 1 : 0);
      }
      if (HasFailure()) return;
    }
    // RNE to 3 mantissa bits loses up to 2^-4 relative: the data must show it (an identity "quantizer" would not).
    EXPECT_GT(worst_frac, std::ldexp(1.0, -5)) << "B=" << B;
    EXPECT_GT(worst_rel, 0.5) << "B=" << B << ": the bound is far from tight";
  }
}

TEST(Fp8WireRef, ZeroBlocksAndZerosInsideBlocks) {
  for (std::size_t B : {std::size_t(32), std::size_t(128)}) {
    std::vector<float> x(B, 0.0f);
    for (std::size_t i = 0; i < B; i += 3) x[i] = -0.0f;
    std::vector<uint8_t> q(B);
    std::vector<float> y(B, 1.0f);
    const float d = fp8_wire_quantize_block(x.data(), B, q.data());
    EXPECT_EQ(d, 0.0f);
    EXPECT_EQ(fp8_wire_scale_ref(0.0f).mult, FLT_MAX);  // 448 / 0 = Inf, capped
    fp8_wire_dequantize_block(q.data(), B, d, y.data());
    for (std::size_t i = 0; i < B; ++i) {
      EXPECT_EQ(q[i], i % 3 == 0 ? 0x80 : 0x00);
      EXPECT_EQ(y[i], 0.0f);
      EXPECT_EQ(std::signbit(y[i]), i % 3 == 0);
    }
    // Zeros among non-zeros stay exact zeros.
    x.assign(B, 0.0f);
    x[5] = 3.25f;
    x[7] = -0.001f;
    const float d2 = fp8_wire_quantize_block(x.data(), B, q.data());
    fp8_wire_dequantize_block(q.data(), B, d2, y.data());
    for (std::size_t i = 0; i < B; ++i)
      if (i != 5 && i != 7) EXPECT_EQ(y[i], 0.0f);
    EXPECT_LE(std::fabs(y[5] - 3.25), fp8_wire_quant_bound(3.25, 3.25));  // the amax element: 448 * d
    EXPECT_EQ(q[5], 0x7e);
  }
}

TEST(Fp8WireRef, SaturationAndNonFiniteBlocks) {
  // An amax whose multiplier rounds up so that amax * m > 448: the code saturates at 448 (0x7e), never NaN.
  SplitMix64 rng(0x5A7);
  int saturating = 0;
  for (int t = 0; t < 100000 && saturating < 50; ++t) {
    const float a = static_cast<float>(std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.next() % 60) - 30));
    const Fp8WireScaleRef s = fp8_wire_scale_ref(a);
    if (f32_mul(a, s.mult) <= 448.0f) continue;
    ++saturating;
    float x[32];
    for (float& v : x) v = a * 0.25f;
    x[3] = -a;
    uint8_t q[32];
    float y[32];
    const float d = fp8_wire_quantize_block(x, 32, q);
    fp8_wire_dequantize_block(q, 32, d, y);
    EXPECT_EQ(q[3], 0xfe) << "amax " << a;
    EXPECT_LE(std::fabs(static_cast<double>(y[3]) + a), fp8_wire_quant_bound(a, a));
  }
  EXPECT_GT(saturating, 0) << "no amax with a rounded-up multiplier found";
  // Values outside the code range (not reachable from a block's own amax, but the encoder's rule): +-448.
  EXPECT_EQ(quant::ref::fp8_encode(1000.0f, quant::Fp8Format::kE4M3), 0x7e);
  EXPECT_EQ(quant::ref::fp8_encode(-INFINITY, quant::Fp8Format::kE4M3), 0xfe);
  // Subnormal fp32 block: the multiplier overflows and is capped at FLT_MAX; decoded values stay finite, within 2 amax.
  {
    float x[32];
    for (int i = 0; i < 32; ++i) x[i] = std::ldexp(static_cast<float>(i + 1), -140);
    uint8_t q[32];
    float y[32];
    EXPECT_EQ(fp8_wire_scale_ref(x[31]).mult, FLT_MAX);
    const float d = fp8_wire_quantize_block(x, 32, q);
    fp8_wire_dequantize_block(q, 32, d, y);
    for (int i = 0; i < 32; ++i) {
      EXPECT_TRUE(std::isfinite(y[i]));
      EXPECT_LE(std::fabs(static_cast<double>(y[i]) - x[i]), fp8_wire_quant_bound(std::fabs(x[i]), x[31]));
    }
  }
  // A block with an Inf or a NaN decodes to NaN throughout (documented rule); other blocks are untouched.
  for (float bad : {INFINITY, -INFINITY, std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> x(128, 0.5f);
    x[17] = bad;
    std::vector<uint8_t> q(128);
    std::vector<float> y(128);
    const float d = fp8_wire_quantize_block(x.data(), 128, q.data());
    fp8_wire_dequantize_block(q.data(), 128, d, y.data());
    for (float v : y) EXPECT_TRUE(std::isnan(v)) << "input " << bad;
  }
}

TEST(Fp8WireLayout, EveryBlockHasOneOwnerAndSlotsAreAligned) {
  for (int W : {1, 2, 3, 4, 5, 8})
    for (int B : {32, 128})
      for (std::size_t count : {std::size_t(1), std::size_t(31), std::size_t(129), std::size_t(1000003), std::size_t(1) << 24})
        for (std::size_t es : {std::size_t(2), std::size_t(4)})
          for (bool g : {false, true}) {
            const detail::Fp8WireLayout l = detail::fp8_wire_layout(count, es, W, B, g);
            SCOPED_TRACE("W=" + std::to_string(W) + " B=" + std::to_string(B) + " count=" + std::to_string(count));
            EXPECT_EQ(l.nblocks, (count + B - 1) / B);
            std::size_t total = 0;
            for (int c = 0; c < W; ++c) {
              EXPECT_LE(l.blocks_of(c), l.chunk_blocks);
              total += l.blocks_of(c);
            }
            EXPECT_EQ(total, l.nblocks);
            EXPECT_EQ(l.blocks_of(W), 0u);
            EXPECT_EQ(l.scale_offset % 16, 0u);
            EXPECT_EQ(l.rs_slot_bytes % 16, 0u);
            EXPECT_GE(l.rs_slot_bytes, l.scale_offset + 4 * l.chunk_blocks);
            EXPECT_EQ(l.ag_slot_bytes, g ? l.rs_slot_bytes : l.chunk_blocks * B * es);
            EXPECT_EQ(l.slot_bytes(), std::max(l.rs_slot_bytes, l.ag_slot_bytes));
          }
  // What fits the default W = 2 two-shot workspace (two_shot_max_bytes 16 MiB: slots of 8 MiB + 32 bytes,
  // communicator.cpp): bf16 up to about 1.94x of it with both phases in FP8 (B = 128), not 32 MiB.
  const std::size_t cap = (16u << 20) / 2 + 16;
  EXPECT_LE(detail::fp8_wire_layout((16u << 20) / 2, 2, 2, 128, true).slot_bytes(), cap);
  EXPECT_LE(detail::fp8_wire_layout((31u << 20) / 2, 2, 2, 128, true).slot_bytes(), cap);
  EXPECT_GT(detail::fp8_wire_layout((32u << 20) / 2, 2, 2, 128, true).slot_bytes(), cap);
  EXPECT_GT(detail::fp8_wire_layout((16u << 20) / 2, 2, 2, 128, false).slot_bytes(), cap - 16 - 1);
}

// The reference all-reduce against the float64 reduction: within the documented bound for every dtype, op, block
// size, all-gather wire and world size, and lossy at the e4m3 level (so the test would notice a reference that
// does not quantize).
TEST(Fp8WireRef, AllReduceWithinTheBoundOfTheFloat64Reduction) {
  const uint64_t seed = fresh_seed();
  for (bool mixed : {false, true})
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (int W : {1, 2, 3, 4, 8})
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin})
        for (int B : {32, 128})
          for (bool g : {true, false}) {
            const std::size_t count = 128 * 37 + 19;  // a partial last block
            std::vector<std::vector<uint8_t>> in(W);
            for (int r = 0; r < W; ++r)
              in[r] = mixed ? make_fp8_wire_input(count, dt, seed + W, r) : make_input(count, dt, seed + W, r);
            const auto out = reference_fp8_wire_all_reduce(in, count, dt, op, B, g);
            const auto exact = reference_all_reduce(in, count, dt, op);
            const auto bound = fp8_wire_error_bound(in, count, dt, op, B, g);
            SCOPED_TRACE(std::string(mixed ? "mixed-magnitude blocks " : "uniform ") + dtype_name(dt) + " W=" + std::to_string(W) + " " + reduce_op_name(op) +
                         " B=" + std::to_string(B) + (g ? " gather fp8" : " gather exact") + " seed " + std::to_string(seed));
            std::size_t bad = 0;
            for (std::size_t i = 0; i < count; ++i) {
              const double err = std::fabs(load_element(out.data(), i, dt) - exact[i]);
              if (!(err <= bound[i]) && bad++ < 3) ADD_FAILURE() << "element " << i << " err " << err << " bound " << bound[i];
            }
            EXPECT_EQ(bad, 0u);
            const Fp8WireError e = fp8_wire_error(out.data(), exact, count, dt);
            if (!mixed) {  // (mixed blocks: the RMS is dominated by the largest blocks, whose error is as here)
              EXPECT_GT(e.rms_rel, 1e-3);  // e4m3-sized error (bf16's own rounding alone is ~1e-3 RMS)
              EXPECT_LT(e.rms_rel, 0.08);  // and not garbage: 2^-4 per quantization at most
            }
            // The GPU tests' check reproduces the reference against itself.
            const Fp8WireCheck c = check_fp8_wire_result(out.data(), in, count, dt, op, B, g);
            EXPECT_EQ(c.mismatches, 0u);
            EXPECT_EQ(c.over_bound, 0u);
            if (HasFailure()) return;
          }
}

// W = 1 with an exact all-gather is one quantize/dequantize round trip per block, rounded to dtype: an independent
// composition of the block functions.
TEST(Fp8WireRef, SingleRankIsOneRoundTrip) {
  const std::size_t count = 1000;
  const auto in = make_input(count, DType::kFloat32, 77, 0);
  const auto out = reference_fp8_wire_all_reduce({in}, count, DType::kFloat32, ReduceOp::kSum, 32, false);
  for (std::size_t k = 0; k < count; k += 32) {
    float x[32] = {}, y[32];
    uint8_t q[32];
    for (std::size_t i = 0; i < 32 && k + i < count; ++i) x[i] = static_cast<float>(load_element(in.data(), k + i, DType::kFloat32));
    const float d = fp8_wire_quantize_block(x, 32, q);
    fp8_wire_dequantize_block(q, 32, d, y);
    for (std::size_t i = 0; i < 32 && k + i < count; ++i) EXPECT_EQ(load_element(out.data(), k + i, DType::kFloat32), y[i]);
  }
}

TEST(AllReduceWireOptions, ErrorsNameTheArgument) {
  auto expect_error = [](const char* what, DType dt, ReduceOp op, AllReduceOptions o) {
    try {
      detail::check_all_reduce_options(dt, op, o);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string(": ") + what + ":"), std::string::npos) << e.what();
    }
  };
  AllReduceOptions fp8;
  fp8.wire = AllReduceWire::kFp8;
  for (AllReduceAlgo a : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kOneShotCE, AllReduceAlgo::kNccl}) {
    AllReduceOptions o = fp8;
    o.algo = a;
    expect_error("wire", DType::kBFloat16, ReduceOp::kSum, o);
  }
  {
    AllReduceOptions o = fp8;
    o.algo = AllReduceAlgo::kOneShot;
    o.zero_copy = true;
    expect_error("wire", DType::kBFloat16, ReduceOp::kSum, o);
  }
  for (int b : {0, 16, 64, 256, -128}) {
    AllReduceOptions o = fp8;
    o.fp8_block = b;
    expect_error("fp8_block", DType::kBFloat16, ReduceOp::kSum, o);
  }
  {
    AllReduceOptions o = fp8;
    o.gather_wire = static_cast<AllReduceWire>(5);
    expect_error("gather_wire", DType::kBFloat16, ReduceOp::kSum, o);
    o = {};
    o.wire = static_cast<AllReduceWire>(2);
    expect_error("wire", DType::kBFloat16, ReduceOp::kSum, o);
  }
  for (DType dt : {DType::kFloat8E4M3, DType::kFloat8E5M2, DType::kInt32, DType::kUInt8})
    expect_error("dtype", dt, ReduceOp::kSum, fp8);
  expect_error("op", DType::kBFloat16, static_cast<ReduceOp>(9), fp8);
  // Valid: every dtype, op, block size and all-gather wire, with two_shot or auto.
  for (AllReduceAlgo a : {AllReduceAlgo::kAuto, AllReduceAlgo::kTwoShot})
    for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin})
        for (int b : {32, 128})
          for (AllReduceWire g : {AllReduceWire::kExact, AllReduceWire::kFp8}) {
            AllReduceOptions o = fp8;
            o.algo = a;
            o.fp8_block = b;
            o.gather_wire = g;
            EXPECT_NO_THROW(detail::check_all_reduce_options(dt, op, o));
          }
  // The exact wire ignores the FP8 fields.
  AllReduceOptions exact;
  exact.fp8_block = 7;
  exact.algo = AllReduceAlgo::kOneShot;
  EXPECT_NO_THROW(detail::check_all_reduce_options(DType::kBFloat16, ReduceOp::kSum, exact));
  EXPECT_EQ(parse_all_reduce_wire("fp8"), AllReduceWire::kFp8);
  EXPECT_EQ(parse_all_reduce_wire("exact"), AllReduceWire::kExact);
  EXPECT_STREQ(all_reduce_wire_name(AllReduceWire::kFp8), "fp8");
  EXPECT_THROW(parse_all_reduce_wire("fp4"), Error);
}
