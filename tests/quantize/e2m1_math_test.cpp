// The e2m1 encoder the NVFP4 kernels execute (src/quantize/e2m1_math.h, same source on host and device) against
// the reference encoder of quant_ref.cpp (double arithmetic, explicit round-to-nearest-even).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "quantize/e2m1_math.h"
#include "quantize/quant_ref.h"

namespace tpcomm::quant {
namespace {

using detail::e2m1_nibble_biased;
using detail::e2m1_pack8;
using detail::kE2m1Bias;

float f_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint32_t ref_nibble(float x, float s) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const float mag = std::fabs(x) * s;
  return ref::e2m1_encode_magnitude(mag) | ((u >> 28) & 8u);
}

// Every rounding decision depends on the bits above the rounding position, the guard bit and the sticky OR of
// the rest; the rounding positions are bits 21..23 of normal fp32 values (and above the mantissa below 0.5). So
// every combination of the top 20 bits (sign, exponent, 11 mantissa bits) with low 12 bits that are zero, one,
// half-way or all ones covers each guard/sticky case at every position >= 12: 8.4 million patterns, among them
// every tie, every near-tie, 6 and beyond, Inf, NaN, subnormals and zeros of both signs.
TEST(E2m1Math, StructuredPatternsMatchReference) {
  const uint32_t lows[] = {0u, 1u, 2u, 0x7ffu, 0x800u, 0x801u, 0xffeu, 0xfffu};
  int64_t bad = 0;
  for (uint32_t hi = 0; hi < (1u << 20); ++hi) {
    for (uint32_t lo : lows) {
      const uint32_t u = (hi << 12) | lo;
      const uint32_t got = e2m1_nibble_biased(u, 1.0f) - kE2m1Bias;
      const uint32_t want = ref_nibble(f_of(u), 1.0f);
      if (got != want && ++bad <= 5)
        ADD_FAILURE() << "x bits 0x" << std::hex << u << " (" << f_of(u) << "): got " << got << " want " << want;
    }
  }
  EXPECT_EQ(bad, 0);
}

// The kernels' inputs: bf16 elements times block multipliers (random, and exact powers of two that put products
// on ties).
TEST(E2m1Math, Bf16TimesMultiplierPackedMatchesReference) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_real_distribution<float> mul(0.01f, 100.0f);
  for (int it = 0; it < 200000; ++it) {
    uint32_t w[4];
    for (auto& v : w) v = bits(rng);
    const float s = (it % 3 == 0) ? f_of((static_cast<uint32_t>(120 + it % 16)) << 23) : mul(rng);
    uint32_t want = 0;
    for (int j = 0; j < 8; ++j) {
      const uint32_t b16 = (w[j / 2] >> (16 * (j & 1))) & 0xffffu;
      want |= ref_nibble(f_of(b16 << 16), s) << (4 * j);
    }
    const uint32_t got = e2m1_pack8(w[0], w[1], w[2], w[3], s);
    ASSERT_EQ(got, want) << "iteration " << it << " s " << s;
  }
}

// The unclamped encoder (kClamp = false) the kernels take when a warp's blocks all have amax * s < 7: for every
// finite bf16 x and a spread of multipliers (random, powers of two that put products on ties, and the largest
// multiplier that keeps 6 < |x s| < 7 reachable), wherever |x s| < 7 in fp32 it gives the clamped encoder's nibble,
// and both give the reference's. Also: |x s| = 7 is where it would break (7 ties to 8), so the precondition is strict.
TEST(E2m1Math, UnclampedEncoderMatchesBelowSeven) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> mul(0.001f, 1000.0f);
  std::vector<float> muls;
  for (int i = 0; i < 48; ++i) muls.push_back(mul(rng));
  for (int e = 110; e < 140; ++e) muls.push_back(f_of(static_cast<uint32_t>(e) << 23));
  muls.push_back(6.9999995f);
  muls.push_back(1.0f / 0.9375f);  // amax * s up to 6.4: a block scale rounded down by e4m3's half-ulp
  int64_t checked = 0, bad = 0;
  for (float s : muls) {
    for (uint32_t b = 0; b < 0x10000u; ++b) {
      const uint32_t u = b << 16;
      const float x = f_of(u);
      if (!std::isfinite(x)) continue;
      const float prod = std::fabs(x * s);
      if (!(prod < 7.0f)) continue;
      ++checked;
      const uint32_t fast = detail::e2m1_nibble_biased<false>(u, s);
      const uint32_t clamped = detail::e2m1_nibble_biased<true>(u, s);
      if ((fast != clamped || clamped - kE2m1Bias != ref_nibble(x, s)) && ++bad <= 5)
        ADD_FAILURE() << "x " << x << " s " << s << ": unclamped " << fast << " clamped " << clamped;
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(checked, int64_t(1) << 20);
  // At 7 the unclamped form leaves the e2m1 range (the precondition is < 7, not <= 7).
  EXPECT_NE(detail::e2m1_nibble_biased<false>(0x40e00000u /* 7.0 */, 1.0f), detail::e2m1_nibble_biased<true>(0x40e00000u, 1.0f));
}

}  // namespace
}  // namespace tpcomm::quant
