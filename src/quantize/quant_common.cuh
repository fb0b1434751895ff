// Device helpers shared by the quantization kernels: bf16 unpacking, NaN-propagating abs-max on packed bf16,
// exact E8M0 / E2M1 / FP8 conversions and the scale formulas of docs/quantize.md.
//
// Exactness rules followed everywhere:
//   * every product whose rounding matters is written __fmul_rn/__fadd_rn so nvcc cannot contract it into an FMA;
//   * abs-max works on the bf16 bit patterns as unsigned integers: for non-negative values integer order equals
//     float order, and every NaN pattern (exponent 0xFF, mantissa != 0) is larger than Inf, so the maximum is NaN
//     as soon as one input is NaN (no NaN is ever dropped, unlike fmaxf);
//   * scales derived from an amax are computed from its exponent bits (E8M0) or with IEEE-rounded divisions
//     (fp64 for FP8 scales, matching torchao's amax_to_scale; fp32 for NVFP4, matching TransformerEngine).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

#include "quantize/e2m1_math.h"

// The FP8 conversions below must be the hardware cvt instructions (sm_89+); an older target would silently fall
// back to cuda_fp8.h's fp64 software emulation (exact, but ~5x slower). Fail the build instead.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "tpcomm quantization kernels target sm_90 (Hopper): configure with CMAKE_CUDA_ARCHITECTURES=90a"
#endif

namespace tpcomm::quant::detail {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- bf16 ------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
// Element j (0..7) of 8 bf16 held in a uint4.
__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}
__device__ __forceinline__ float bf16_elem(const uint4& v, int j) {
  const uint32_t w = word_of(v, j >> 1);
  return (j & 1) ? bf16_hi(w) : bf16_lo(w);
}

// ---- NaN-propagating |x| max on packed bf16 pairs (u16x2 integer max) ------------------------------------------------
__device__ __forceinline__ uint32_t max_u16x2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t d;
  asm("max.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#else
  return __vmaxu2(a, b);
#endif
}
__device__ __forceinline__ uint32_t abs2(uint32_t w) { return w & 0x7fff7fffu; }
// Packed |.| max of the 8 bf16 in v.
__device__ __forceinline__ uint32_t absmax8_packed(const uint4& v) {
  return max_u16x2(max_u16x2(abs2(v.x), abs2(v.y)), max_u16x2(abs2(v.z), abs2(v.w)));
}
// Folds a packed pair into one u16 amax (bf16 bits, sign clear).
__device__ __forceinline__ uint32_t fold16(uint32_t p) { return max(p & 0xffffu, p >> 16); }
// bf16 amax bits -> the same value as fp32.
__device__ __forceinline__ float amax16_to_float(uint32_t a16) { return __uint_as_float(a16 << 16); }
// The same amax over 8 bf16 with the half-precision min/max unit: max.NaN.xorsign.abs.bf16x2 gives max(|a|, |b|)
// per half (any NaN -> the canonical NaN 0x7fff; the sign is the xor of the inputs' signs, masked off at the end).
// Returns the fp32 bits of the amax (bf16 in the top half, low half and sign zero). For non-NaN inputs this is
// exactly amax16_to_float(fold16(absmax8_packed(v))) (|bf16| orders like its bit pattern); for a NaN input both
// give a NaN (with different payloads, which no caller distinguishes: a NaN block amax only ever reaches
// __fmul_rn and the satfinite E4M3 conversion, which map every NaN alike). 5 instructions on the min/max unit and
// one logic op instead of 6 logic/min-max ops and a shift.
__device__ __forceinline__ uint32_t hmax_abs_bf16x2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("max.NaN.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
__device__ __forceinline__ uint32_t absmax8_f32bits(const uint4& v) {
  const uint32_t m = hmax_abs_bf16x2(hmax_abs_bf16x2(v.x, v.y), hmax_abs_bf16x2(v.z, v.w));
  return hmax_abs_bf16x2(m, __byte_perm(m, 0u, 0x1032)) & 0x7fff0000u;  // both halves hold the max
}

// ---- E8M0 (MXFP8) --------------------------------------------------------------------------------------------------
// emax_elem: exponent of the largest power of two <= fp8_max (8 for e4m3, 15 for e5m2). fp8_max = 1.75 * 2^emax.
// From the bf16 amax bits a16 (sign clear):
//   floor: code = clamp(E - emax, 0, 254)                            E = biased exponent field of amax
//   rceil: code = clamp(E - emax + (mantissa > 0.75), 0, 254)       exact ceil(log2(amax / (1.75 * 2^emax)))
//   non-finite amax (E == 255): 0xFF.
template <bool kRceil>
__device__ __forceinline__ uint32_t e8m0_code(uint32_t a16, int emax) {
  const int e = static_cast<int>(a16 >> 7);
  if (e == 0xff) return 0xffu;
  int c = e - emax;
  if (kRceil) c += ((a16 & 0x7fu) > 0x60u) ? 1 : 0;
  return static_cast<uint32_t>(min(max(c, 0), 254));
}
// Multiplier applied to the elements of a block with scale code c: 2^(127 - c); NaN for c == 0xFF (every element
// becomes NaN, 0x7F). Codes come from e8m0_code of a bf16 amax: 0..247 or 0xFF (254, whose multiplier 2^-127 would be
// an fp32 subnormal, needs a biased exponent of 262 and never occurs; tests/quantize checks the extreme exponents).
// Branch-free: the early-return form made ptxas open a divergent region (BSSY/BRA/BSYNC) per scale code, 16 per
// thread and tile in the MXFP8 "both" loop (bench/NOTES.md, session 7).
__device__ __forceinline__ float e8m0_quant_multiplier(uint32_t c) {
  return __uint_as_float(c == 0xffu ? 0x7fc00000u : (254u - c) << 23);
}
// Decoded scale 2^(c - 127): c == 0 is the fp32 subnormal 2^-127, c == 0xFF is NaN.
__device__ __forceinline__ float e8m0_decode(uint32_t c) {
  if (c == 0u) return __uint_as_float(0x00400000u);
  if (c == 0xffu) return __uint_as_float(0x7fc00000u);
  return __uint_as_float(c << 23);
}

// ---- FP8 conversions -------------------------------------------------------------------------------------------------
template <int kFmt>  // 0 = e4m3, 1 = e5m2
__device__ __forceinline__ uint32_t cvt2_fp8(float lo, float hi) {
  // cvt.rn.satfinite: RNE, finite overflow and +-Inf saturate to +-max, NaN -> 0x7F. lo lands in the low byte.
  return static_cast<uint32_t>(
      __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, kFmt == 0 ? __NV_E4M3 : __NV_E5M2));
}
template <int kFmt>
__device__ __forceinline__ float fp8_to_float(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte), kFmt == 0 ? __NV_E4M3 : __NV_E5M2);
  return __half2float(__half(h));
}
// Quantizes the 8 bf16 of v with multiplier s into 8 fp8 bytes (uint2, element 0 in the lowest byte).
template <int kFmt>
__device__ __forceinline__ uint2 quant8_fp8(const uint4& v, float s) {
  uint2 r;
  r.x = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.x), s), __fmul_rn(bf16_hi(v.x), s)) |
        (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.y), s), __fmul_rn(bf16_hi(v.y), s)) << 16);
  r.y = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.z), s), __fmul_rn(bf16_hi(v.z), s)) |
        (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.w), s), __fmul_rn(bf16_hi(v.w), s)) << 16);
  return r;
}

// FP8 quantization scale from an amax (torchao amax_to_scale): float(double(fp8_max) / max(double(amax), 1e-12)),
// NaN amax -> NaN; pow2: mantissa cleared (= exp2(floor(log2(scale))) for the normal scales this can produce).
__device__ __forceinline__ float fp8_scale_from_amax(float amax, double fp8_max, bool pow2) {
  const double a = static_cast<double>(amax);
  const double clamped = (a != a) ? a : (a > 1e-12 ? a : 1e-12);
  float s = __double2float_rn(__ddiv_rn(fp8_max, clamped));
  if (pow2 && s > 0.0f && s <= FLT_MAX) s = __uint_as_float(__float_as_uint(s) & 0xff800000u);
  return s;
}

// ---- NVFP4 -----------------------------------------------------------------------------------------------------------
// 8 bf16 -> 8 e2m1 nibbles (4 bytes, element 0 in the low nibble of the low byte): e2m1_math.h, whose formula
// the CPU tests check against the reference encoder.
// m512 must be 512 and come from a kernel parameter: ptxas cannot see its value, so t >> 23 stays one IMAD.HI with a
// constant-bank operand (a literal 512 would become a shift on the logic pipe; e2m1_math.h), at no per-call cost.
template <bool kClamp = true>
__device__ __forceinline__ uint32_t quant8_e2m1(const uint4& v, float s, uint32_t m512) {
  return e2m1_pack8<kClamp>(v.x, v.y, v.z, v.w, s, m512);
}
// Whether every element of a block with amax `block_amax` (>= 0 or NaN) and element multiplier s may take the
// unclamped encoder (e2m1_math.h): amax * s < 7, which is false for NaN, Inf and saturated (capped) multipliers.
__device__ __forceinline__ bool e2m1_unclamped_ok(float block_amax, float s) { return __fmul_rn(block_amax, s) < 7.0f; }
// S_enc from the global amax (TransformerEngine's compute_global_encode_scaling_factor_FP4).
// |amax|: a caller's negative global_amax_in gives the same (positive) scales on every path, so every block-scale
// code has a clear sign bit (the 1x16 table path relies on it).
__device__ __forceinline__ float nvfp4_global_encode_scale(float amax) {
  amax = fabsf(amax);
  float s = fminf(__fdiv_rn(448.0f * 6.0f, amax), FLT_MAX);  // fminf(NaN, FLT_MAX) = FLT_MAX
  if (amax == 0.0f || s == 0.0f) s = 1.0f;
  return s;
}
// Block decode scale byte (e4m3) and the element multiplier for one block.
struct Nvfp4BlockScale {
  uint32_t code;
  float rcp;
};
// The element multiplier of block-scale code `code`: 1 / (decode(code) * S_dec), IEEE (__frcp_rn = __fdiv_rn(1, x)),
// capped at FLT_MAX (code 0 -> +Inf -> FLT_MAX; the NaN code 0x7f -> NaN -> FLT_MAX, fminf).
__device__ __forceinline__ float nvfp4_element_multiplier(uint32_t code, float s_dec) {
  return fminf(__frcp_rn(__fmul_rn(fp8_to_float<0>(code), s_dec)), FLT_MAX);
}
__device__ __forceinline__ Nvfp4BlockScale nvfp4_block_scale(float block_amax, float s_enc_over6, float s_dec) {
  Nvfp4BlockScale r;
  r.code = cvt2_fp8<0>(__fmul_rn(block_amax, s_enc_over6), 0.0f) & 0xffu;
  r.rcp = nvfp4_element_multiplier(r.code, s_dec);
  return r;
}

// The same block scales through a per-block table (the 1x16 warp-window kernel, where the block scale is paid
// once per 16 elements). A block amax is >= +0 or NaN, so its E4M3 code has a clear sign bit (NaN -> 0x7f,
// satfinite): the element multiplier is a function of code & 0x7f and of the tensor's s_dec only, and the 128
// values are computed once per thread block instead of decode + IEEE reciprocal (~14 instructions) per block
// scale. Entries are exactly nvfp4_block_scale's rcp (both call nvfp4_element_multiplier).
struct Nvfp4ScaleTable {
  float rcp[128];
  float s_enc_over6;
};
// Called by every thread of the block (contains __syncthreads); blockDim.x >= 128. Thread 0 of block 0 writes
// the global decode scale to global_scale_inv when it is not null.
__device__ __forceinline__ void nvfp4_build_scale_table(Nvfp4ScaleTable& tab, const float* global_amax,
                                                        float* global_scale_inv) {
  if (threadIdx.x < 128) {
    const float s_enc = nvfp4_global_encode_scale(*global_amax);
    const float s_dec = __frcp_rn(s_enc);  // IEEE 1/x
    tab.rcp[threadIdx.x] = nvfp4_element_multiplier(threadIdx.x, s_dec);
    if (threadIdx.x == 0) {
      tab.s_enc_over6 = __fmul_rn(s_enc, 1.0f / 6.0f);
      if (blockIdx.x == 0 && global_scale_inv != nullptr) *global_scale_inv = s_dec;
    }
  }
  __syncthreads();
}
__device__ __forceinline__ Nvfp4BlockScale nvfp4_block_scale(float block_amax, const Nvfp4ScaleTable& tab) {
  Nvfp4BlockScale r;
  r.code = cvt2_fp8<0>(__fmul_rn(block_amax, tab.s_enc_over6), 0.0f) & 0x7fu;  // sign bit clear (see above)
  r.rcp = tab.rcp[r.code];
  return r;
}

// ---- output rounding -------------------------------------------------------------------------------------------------
// fp32 -> bf16, RNE; NaN -> 0x7FFF (canonical).
__device__ __forceinline__ uint32_t f32_to_bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ uint32_t f32_canonical_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return ((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fffffffu : u;
}

// Two floats -> packed bf16x2, RNE (hardware cvt.rn.bf16x2.f32; a in the low half). NaN -> 0x7FFF regardless of
// what the instruction produces for NaN, via the (rare) exact software path.
__device__ __forceinline__ uint32_t pack_bf16x2(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  uint32_t r;
  memcpy(&r, &h, 4);
  if (a != a || b != b) r = f32_to_bf16_bits(a) | (f32_to_bf16_bits(b) << 16);
  return r;
}

// 4 fp8 values (one word, element 0 in the low byte) -> 4 floats, exact: hardware fp8x2 -> f16x2, then f32.
template <int kFmt>
__device__ __forceinline__ void fp8x4_to_float(uint32_t w, float* f) {
  constexpr __nv_fp8_interpretation_t kI = kFmt == 0 ? __NV_E4M3 : __NV_E5M2;
  const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), kI);
  const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), kI);
  const float2 a = __half22float2(__half2(lo));
  const float2 b = __half22float2(__half2(hi));
  f[0] = a.x;
  f[1] = a.y;
  f[2] = b.x;
  f[3] = b.y;
}

// 4 e2m1 nibbles (low 16 bits, element 0 in the lowest nibble) -> the same 4 values as e4m3 bytes (exact: every
// e2m1 value is an e4m3 value). Magnitudes through a byte-permute table, sign bits through a second one.
__device__ __forceinline__ uint32_t e2m1x4_to_e4m3x4(uint32_t g) {
  // e4m3 codes of 0, 0.5, 1, 1.5 | 2, 3, 4, 6
  const uint32_t mag = __byte_perm(0x3c383000u, 0x4c484440u, g & 0x7777u);
  const uint32_t sgn = __byte_perm(0x00008000u, 0u, (g >> 3) & 0x1111u);
  return mag | sgn;
}

// ---- swizzled 128x4 scale layout -----------------------------------------------------------------------------------
__device__ __forceinline__ int64_t swz_offset(int64_t r, int64_t c, int64_t col_tiles) {
  return ((r >> 7) * col_tiles + (c >> 2)) * 512 + (r & 31) * 16 + ((r >> 5) & 3) * 4 + (c & 3);
}

// ---- loads ------------------------------------------------------------------------------------------------------------
// Streaming 16-byte load (read once: evict-first in L1/L2).
__device__ __forceinline__ uint4 ld_stream(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// ---- warp-window elementwise pattern -------------------------------------------------------------------------------
// For kernels over a flat sequence of 16-byte (or 8-/4-byte) vectors whose blocks are a few consecutive vectors:
// a block has kWindowThreads threads, warp w of block b owns the kWindowVecsPerWarp consecutive vectors starting at
// (b * warps + w) * kWindowVecsPerWarp, and lane l handles vectors u*32 + l (u < kWindowU). Every load and store
// instruction of a warp then covers 32 consecutive vectors (fully coalesced), all kWindowU loads are issued before
// the first use, and a block of G vectors is G adjacent lanes (G = 2, 4: combined with G-1 shuffles).
// Measured (bench/NOTES.md): 88-94% of the copy rate where the 128 x 128 tile kernels reached 65-81%.
constexpr int kWindowThreads = 256;
constexpr int kWindowU = 4;
constexpr int kWindowVecsPerWarp = 32 * kWindowU;
constexpr int64_t kWindowVecsPerBlock = int64_t(kWindowThreads / 32) * kWindowVecsPerWarp;

struct WarpWindow {
  int64_t w0;  // first vector of the warp's window
  int lane;
  __device__ __forceinline__ int64_t vec(int u) const { return w0 + u * 32 + lane; }
};
// reverse: windows are visited from the end of the tensor (block 0 takes the last window): a kernel that runs
// right after a pass over the same input then starts on the part of it still in L2.
__device__ __forceinline__ WarpWindow warp_window(bool reverse = false) {
  const int64_t b = reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  return WarpWindow{(b * (kWindowThreads / 32) + threadIdx.x / 32) * kWindowVecsPerWarp,
                    static_cast<int>(threadIdx.x & 31)};
}
inline unsigned window_grid(int64_t nvec) {
  return static_cast<unsigned>((nvec + kWindowVecsPerBlock - 1) / kWindowVecsPerBlock);
}

// ---- warp transpose-reductions ------------------------------------------------------------------------------------
// v[0..kN) is per-lane data for kN rows; lanes within a group of kLanes (power of two) hold different columns.
// After the call, v[0..kN/kLanes) of lane q (q = lane % kLanes) holds max over the group of the rows
//   row(q, j) = j + (kN/kLanes) * bitrev-free index where the lane bit for step s selects the upper half,
// precisely: row(q, j) = j + sum over steps (s = kLanes/2 ... 1) of (q & s ? half_size(s) : 0), with half_size(s)
// the size of the array at that step divided by two. Uses kN - kN/kLanes shuffles instead of kN*log2(kLanes).
template <int kN, int kLanes>
__device__ __forceinline__ void transpose_reduce_max(uint32_t (&v)[kN], int lane) {
  int n = kN;
#pragma unroll
  for (int s = kLanes / 2; s >= 1; s >>= 1) {
    const bool upper = (lane & s) != 0;
    const int h = n / 2;
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
      if (i < h) {
        const uint32_t send = upper ? v[i] : v[i + h];
        const uint32_t keep = upper ? v[i + h] : v[i];
        const uint32_t recv = __shfl_xor_sync(kFullMask, send, s);
        v[i] = max(keep, recv);
      }
    }
    n = h;
  }
}
// Row index held in slot j of lane q after transpose_reduce_max<kN, kLanes>.
template <int kN, int kLanes>
__device__ __forceinline__ int transpose_reduce_row(int q, int j) {
  int row = j;
  int n = kN;
#pragma unroll
  for (int s = kLanes / 2; s >= 1; s >>= 1) {
    n /= 2;
    if (q & s) row += n;
  }
  return row;
}

}  // namespace tpcomm::quant::detail
