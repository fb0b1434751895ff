// The e2m1 (NVFP4 element) encoder the kernels run, written once for host and device so that the CPU tests can
// check the exact formula the GPU executes against the reference encoder (tests/quantize/e2m1_math_test.cpp).
//
// Why it exists: sm_90 has no e2m1 conversion instruction, and at ~2.5 bytes of traffic per element the NVFP4
// quantize kernel has a budget of ~20 issued instructions per element before it stops being memory-bound on
// H200. The previous per-element encoder (exponent-dependent magic number built with shift/max/lea, code
// reassembled with imad/iadd, sign merged separately) cost ~14, most on the half-rate logic pipe; this one costs
// ~10, mostly on the FMA and multiply-add pipes (e2m1_pack8).
//
// e2m1_nibble_biased(x, s) for one bf16 element x (given as fp32 bits: the bf16 in the top half) and the block's
// element multiplier s > 0 returns code + 8*sign + kE2m1Bias, where code (0..7) is |x*s| rounded to nearest-even
// on the e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6} and saturated at 6 (NaN -> 6, the sign taken from x's sign bit):
//   y = min(|x*s|, 6)                              one fp32 rounding, as the reference; fminf maps NaN to 6
//   p = 2^floor(log2(max(y, 1)))                   1, 2 or 4: the binade of y on the e2m1 grid, whose step is p/2
//   t = 2^22 * p + y, rounded once (fp32)          t's ulp is p/2, so this is RNE of y onto the grid; exact
//                                                  because 2^22 * p is representable and t stays in its binade
//   t & 7  = y_r / (p/2), the rounded y in units of its step: 0..4 for p = 1, 2..4 for p = 2, 2..3 for p = 4
//   t >> 22 = 2 * (149 + log2 p) = kE2m1Bias + 2 log2 p, and code = (t & 7) + 2 log2 p  (<= 7: no carry into
//   the sign bit)
// The bias is removed once per packed word: the nibbles are summed shifted (mod 2^32 the sum is linear), so
// sum((n_j + B) << 4j) - B * 0x11111111 = sum(n_j << 4j).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TPCOMM_E2M1_HD __host__ __device__ __forceinline__
#else
#define TPCOMM_E2M1_HD inline
#endif

namespace tpcomm::quant::detail {

constexpr uint32_t kE2m1Bias = 298;  // 2 * 149: the biased exponent of 2^22, doubled
constexpr uint32_t kE2m1BiasWord = kE2m1Bias * 0x11111111u;  // wraps mod 2^32, as the sums it corrects

// Bit casts for the host branches below (the device branches use __float_as_uint / __uint_as_float).
inline uint32_t e2m1_f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float e2m1_u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The rounded magnitude t of one element (see above; t>>23 = 149 + log2 p, t & 7 = its index in the binade run).
// kClamp = false drops the min(., 6): only for elements with |x * s| < 7 in fp32 (finite). Then y in [6, 7) rounds
// to 6 on the step-2 grid of its binade (7 itself would tie to 8), the code the clamped form gives; the kernels
// take this form for a warp whose blocks all satisfy amax * s < 7 (one FMNMX less per element on the logic pipe,
// which bounds the NVFP4 kernels; the |.| folds into the two consumers' operand modifiers).
template <bool kClamp = true>
TPCOMM_E2M1_HD uint32_t e2m1_rounded_bits(uint32_t xbits, float s) {
#if defined(__CUDA_ARCH__)
  const float prod = fabsf(__fmul_rn(__uint_as_float(xbits), s));
  const float y = kClamp ? fminf(prod, 6.0f) : prod;
  const float p = __uint_as_float(__float_as_uint(fmaxf(y, 1.0f)) & 0x7f800000u);
  return __float_as_uint(__fmaf_rn(p, 4194304.0f, y));  // = fl(2^22 p + y): 2^22 p is exact
#else
  const float prod = e2m1_u2f(xbits) * s;
  const float ay = prod < 0.0f ? -prod : prod;
  const float y = !kClamp ? ay : (ay <= 6.0f) ? ay : 6.0f;  // also NaN -> 6, as fminf
  const float p = e2m1_u2f(e2m1_f2u(y > 1.0f ? y : 1.0f) & 0x7f800000u);
  const float magic = p * 4194304.0f;  // exact
  return e2m1_f2u(magic + y);
#endif
}

// code + 8*sign + kE2m1Bias of one element: the reference form of what e2m1_pack8 sums.
template <bool kClamp = true>
TPCOMM_E2M1_HD uint32_t e2m1_nibble_biased(uint32_t xbits, float s) {
  const uint32_t t = e2m1_rounded_bits<kClamp>(xbits, s);
  return (((xbits >> 28) & 8u) | (t & 7u)) + (t >> 22);
}

// 8 bf16 (packed pairs, element 0 in the low half of w0) times s -> 8 nibbles, element 0 in the lowest.
//
// Pipe balance (sm_90): logic, shift and min/max instructions share one half-rate pipe (64 lanes/clk/SM), and
// with each nibble assembled by masks and shifts (t & 7, t >> 22, x >> 28 & 8, merge) that pipe bounded the kernel
// at ~70% of the copy rate. Here the magnitudes are assembled with multiply-adds, on the other integer pipe:
//   magnitude_j << 4j = (t - (t >> 23) * (2^23 - 2)) << 4j      (= (code + 298) << 4j, summed mod 2^32: the
//                                                                 exponent bits of t cancel exactly)
// with t >> 23 a multiply-high by 2^9 (ptxas would turn a mul.hi by a constant power of two back into a shift, so
// on the device the multiplier m512 = 512 comes from a kernel parameter, a value it cannot see; an earlier form
// derived it from %dynamic_smem_size, which ptxas re-read with four uniform instructions per call). The 8 sign
// bits are placed in bulk: four byte permutes gather the bytes holding the bf16 sign bits, two masked merges put
// them on bits 3 and 7 of each output byte.
template <bool kClamp = true>
TPCOMM_E2M1_HD uint32_t e2m1_pack8(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, float s, uint32_t m512 = 512u) {
  const uint32_t w[4] = {w0, w1, w2, w3};
  uint32_t acc = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < 8; ++j) {
    const uint32_t x = (j & 1) ? (w[j >> 1] & 0xffff0000u) : (w[j >> 1] << 16);
    const uint32_t t = e2m1_rounded_bits<kClamp>(x, s);
#if defined(__CUDA_ARCH__)
    const uint32_t e = __umulhi(t, m512);  // t >> 23
#else
    const uint32_t e = t >> 23;
    (void)m512;
#endif
    acc += t << (4 * j);
    acc -= e * ((8388608u - 2u) << (4 * j));
  }
  const uint32_t mag = acc - kE2m1BiasWord;  // bits 3 and 7 of every byte are 0
#if defined(__CUDA_ARCH__)
  // Bytes 1 and 3 of w_q hold the signs of elements 2q and 2q+1 in their bit 7.
  const uint32_t p01 = __byte_perm(w0, w1, 0x7531);  // [w0.b1, w0.b3, w1.b1, w1.b3]
  const uint32_t p23 = __byte_perm(w2, w3, 0x7531);  // [w2.b1, w2.b3, w3.b1, w3.b3]
  // Byte q = the sign of element 2q replicated over the byte: prmt's sign mode (selector bit 3), which
  // __byte_perm does not expose (it uses the low 3 bits of each selector nibble only).
  uint32_t even;
  asm("prmt.b32 %0, %1, %2, 0xECA8;" : "=r"(even) : "r"(p01), "r"(p23));
  const uint32_t odd = __byte_perm(p01, p23, 0x7531);   // byte q: bit 7 = sign of element 2q+1
  return (mag | (even & 0x08080808u)) | (odd & 0x80808080u);
#else
  uint32_t sign = 0;
  for (int j = 0; j < 8; ++j) sign |= ((w[j >> 1] >> (16 * (j & 1) + 15)) & 1u) << (4 * j + 3);
  return mag | sign;
#endif
}


}  // namespace tpcomm::quant::detail
