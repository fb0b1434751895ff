// FastDiv (src/quantize/fast_div.h), the tile-number division of the MXFP8 tile kernels, against '/'.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "quantize/fast_div.h"

namespace tpcomm::quant {
namespace {

using detail::FastDiv;

void check_divisor(uint32_t d, std::mt19937_64& rng) {
  const FastDiv f(d);
  std::vector<uint32_t> ns = {0u, 1u, d - 1, d, d + 1, 2 * d - 1, 2 * d, 0x7fffffffu, 0x7ffffffeu};
  // The values next to the largest multiples of d below 2^31, where the error term is largest.
  const uint32_t top = 0x7fffffffu / d * d;
  for (uint32_t k = 0; k < 4 && top >= k * d; ++k) {
    const uint32_t m = top - k * d;
    ns.push_back(m);
    if (m) ns.push_back(m - 1);
    if (m + 1 <= 0x7fffffffu) ns.push_back(m + 1);
  }
  std::uniform_int_distribution<uint32_t> any(0, 0x7fffffffu);
  for (int i = 0; i < 2000; ++i) ns.push_back(any(rng));
  for (uint32_t n : ns) {
    if (n > 0x7fffffffu) continue;
    ASSERT_EQ(f.div(n), n / d) << "n=" << n << " d=" << d;
  }
}

TEST(FastDiv, MatchesDivisionForSmallAndPowerOfTwoDivisors) {
  std::mt19937_64 rng(7);
  for (uint32_t d = 1; d <= 4096; ++d) check_divisor(d, rng);
  for (uint32_t l = 0; l < 31; ++l) {
    check_divisor(1u << l, rng);
    if (l > 1) check_divisor((1u << l) - 1, rng);
    check_divisor((1u << l) + 1, rng);
  }
  check_divisor(0x7fffffffu, rng);
}

TEST(FastDiv, MatchesDivisionForRandomDivisors) {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<uint32_t> any(1, 0x7fffffffu);
  for (int i = 0; i < 300; ++i) check_divisor(any(rng), rng);
}

}  // namespace
}  // namespace tpcomm::quant
