// Division of tile numbers by a divisor fixed for the whole launch (col_tiles, tiles_per_expert) with an add, a
// multiply-high and a shift instead of the software division sm_90 runs for a run-time divisor (I2F + MUFU.RCP +
// F2I + multiply-high + corrections). Used by the MXFP8 tile kernels (bench/NOTES.md session 7: with the persistent
// loop computing each tile's coordinates once, MXFP8 "both" +1 to +2.5 points of copy on three of four shapes).
//
// For a divisor d >= 1 let l = ceil(log2 d) and m = ceil(2^(31+l) / d) (< 2^32 for d > 2^(l-1)). For every n < 2^31,
// floor(n * m / 2^(31+l)) = floor(n / d): with m = 2^(31+l)/d + e, 0 <= e < 1, n*m/2^(31+l) = n/d + n*e/2^(31+l),
// where n*e/2^(31+l) < 2^31/2^(31+l) = 2^-l <= 1/d while the fractional part of n/d is at most (d-1)/d. And
// n*m / 2^(31+l) = mulhi(2n, m) / 2^l with 2n < 2^32. Tile numbers are < 2^31 (validate.cpp bounds the tile count).
// Written once for host and device; tests/quantize/fast_div_test.cpp checks it against '/' on the host.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TPCOMM_FASTDIV_HD __host__ __device__ __forceinline__
#else
#define TPCOMM_FASTDIV_HD inline
#endif

namespace tpcomm::quant::detail {

struct FastDiv {
  uint32_t d = 1;
  uint32_t mul = 1u << 31;
  uint32_t l = 0;  // ceil(log2 d)

  FastDiv() = default;
  // d >= 1 (the launchers only build it for non-empty tensors).
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << l) < d) ++l;
    mul = static_cast<uint32_t>(((uint64_t(1) << (31 + l)) + d - 1) / d);
  }
  // floor(n / d) for n < 2^31.
  TPCOMM_FASTDIV_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    return __umulhi(n + n, mul) >> l;
#else
    return static_cast<uint32_t>((uint64_t(n + n) * mul) >> 32) >> l;
#endif
  }
};

// The two divisors of tile numbering (tile.cuh): tile t is column tile t % col_tiles of row tile t / col_tiles, and
// row tile rt belongs to expert rt / tiles_per_expert.
struct TileDivs {
  FastDiv col_tiles;
  FastDiv tiles_per_expert;
  TileDivs() = default;
  TileDivs(int64_t ct, int64_t tpe)
      : col_tiles(static_cast<uint32_t>(ct)), tiles_per_expert(static_cast<uint32_t>(tpe)) {}
};

}  // namespace tpcomm::quant::detail
