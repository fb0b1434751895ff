// Dequantization kernels: elementwise over the storage order of the quantized data. Each thread decodes one
// chunk (8 fp8 elements for FP8, 16 for MXFP8 and NVFP4, which never straddles a scale block), multiplies by
// its scale in fp32 and writes bf16 (RNE, NaN -> 0x7FFF) or fp32 (NaN -> 0x7FFFFFFF).
#pragma once

#include <cstdint>

#include "common/pdl.cuh"
#include "quantize/quant_common.cuh"

namespace tpcomm::quant::detail {

constexpr int kDequantThreads = 256;
constexpr int kDequantChunks = 4;  // chunks per thread, all loads issued before the first use

// a / b with a 32-bit division when both fit (the common case; 64-bit division is a long software sequence).
__device__ __forceinline__ int64_t fast_div(int64_t a, int64_t b) {
  if (((a | b) >> 32) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

template <bool kF32>
__device__ __forceinline__ void store_out(void* out, int64_t elem0, const float* v, int n) {
  if constexpr (kF32) {
    uint32_t* o = reinterpret_cast<uint32_t*>(out) + elem0;
    for (int j = 0; j < n; j += 4)
      *reinterpret_cast<uint4*>(o + j) = make_uint4(f32_canonical_bits(v[j]), f32_canonical_bits(v[j + 1]),
                                                    f32_canonical_bits(v[j + 2]), f32_canonical_bits(v[j + 3]));
  } else {
    uint16_t* o = reinterpret_cast<uint16_t*>(out) + elem0;
    for (int j = 0; j < n; j += 8) {
      uint4 w;
      w.x = pack_bf16x2(v[j + 0], v[j + 1]);
      w.y = pack_bf16x2(v[j + 2], v[j + 3]);
      w.z = pack_bf16x2(v[j + 4], v[j + 5]);
      w.w = pack_bf16x2(v[j + 6], v[j + 7]);
      *reinterpret_cast<uint4*>(o + j) = w;
    }
  }
}

// ---- FP8 with fp32 scales -------------------------------------------------------------------------------------------
struct Fp8DequantKernelParams {
  const uint8_t* in;
  int64_t rows;
  int64_t cols;
  int64_t nchunks;  // rows * cols / 8
  const float* scale_inv;
  int64_t scale_ld;
  int scaling;  // Fp8Scaling
  void* out;
};

template <int kFmt, bool kF32>
__global__ void __launch_bounds__(kDequantThreads)
    fp8_dequant_kernel(const __grid_constant__ Fp8DequantKernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kDequantThreads * kDequantChunks) + threadIdx.x;
  uint2 qs[kDequantChunks];
#pragma unroll
  for (int u = 0; u < kDequantChunks; ++u) {
    const int64_t i = base + u * kDequantThreads;
    qs[u] = i < p.nchunks ? *reinterpret_cast<const uint2*>(p.in + i * 8) : make_uint2(0u, 0u);
  }
#pragma unroll
  for (int u = 0; u < kDequantChunks; ++u) {
    const int64_t i = base + u * kDequantThreads;
    if (i >= p.nchunks) break;
    const uint2 q = qs[u];
    const int64_t e0 = i * 8;
    const int64_t row = fast_div(e0, p.cols);
    const int64_t col = e0 - row * p.cols;
    float f[8], v[8];
    fp8x4_to_float<kFmt>(q.x, f);
    fp8x4_to_float<kFmt>(q.y, f + 4);
    if (p.scaling <= 1) {  // one scale for the whole chunk
      const float s = p.scale_inv[p.scaling == 0 ? 0 : row];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = __fmul_rn(f[j], s);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float s;
        switch (p.scaling) {
          case 2: s = p.scale_inv[col + j]; break;
          case 3: s = p.scale_inv[((col + j) / 128) * p.scale_ld + row]; break;
          default: s = p.scale_inv[(row / 128) * p.scale_ld + (col + j) / 128]; break;
        }
        v[j] = __fmul_rn(f[j], s);
      }
    }
    store_out<kF32>(p.out, e0, v, 8);
  }
}

// ---- MXFP8 -------------------------------------------------------------------------------------------------------
struct Mxfp8DequantKernelParams {
  const uint8_t* in;
  const uint8_t* scales;
  int64_t rows;     // N
  int64_t cols;     // K
  int64_t nchunks;  // experts * N * K / 16
  bool colwise;
  bool swizzled;
  void* out;
};

template <int kFmt, bool kF32>
__global__ void __launch_bounds__(kDequantThreads)
    mxfp8_dequant_kernel(const __grid_constant__ Mxfp8DequantKernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kDequantThreads * kDequantChunks) + threadIdx.x;
  uint4 qs[kDequantChunks];
#pragma unroll
  for (int u = 0; u < kDequantChunks; ++u) {
    const int64_t i = base + u * kDequantThreads;
    qs[u] = i < p.nchunks ? *reinterpret_cast<const uint4*>(p.in + i * 16) : make_uint4(0u, 0u, 0u, 0u);
  }
#pragma unroll
  for (int u = 0; u < kDequantChunks; ++u) {
    const int64_t i = base + u * kDequantThreads;
    if (i >= p.nchunks) break;
    const uint4 q = qs[u];
    const int64_t e0 = i * 16;
    const int64_t N = p.rows, K = p.cols;
    const int64_t per_expert = N * K;
    const int64_t e = fast_div(e0, per_expert);
    const int64_t off = e0 - e * per_expert;
    int64_t sidx;
    if (!p.colwise) {
      // (E*N, K) row-major; logical scale matrix per expert [N][K/32].
      const int64_t n = fast_div(off, K), k = off - n * K;
      const int64_t gk = K / 32;
      if (!p.swizzled) {
        sidx = (e * N + n) * gk + k / 32;
      } else {
        const int64_t gt = (gk + 3) / 4;
        sidx = e * ((N + 127) / 128 * 128) * gt * 4 + swz_offset(n, k / 32, gt);
      }
    } else {
      // Column-major per expert: off = k * N + n; logical scale matrix per expert [K][N/32] (stored linear as
      // (N/32, K)).
      const int64_t k = fast_div(off, N), n = off - k * N;
      const int64_t gn = N / 32;
      if (!p.swizzled) {
        sidx = (e * gn + n / 32) * K + k;
      } else {
        const int64_t gt = (gn + 3) / 4;
        sidx = e * ((K + 127) / 128 * 128) * gt * 4 + swz_offset(k, n / 32, gt);
      }
    }
    const float s = e8m0_decode(p.scales[sidx]);
    float v[16];
    fp8x4_to_float<kFmt>(q.x, v);
    fp8x4_to_float<kFmt>(q.y, v + 4);
    fp8x4_to_float<kFmt>(q.z, v + 8);
    fp8x4_to_float<kFmt>(q.w, v + 12);
#pragma unroll
    for (int j = 0; j < 16; ++j) v[j] = __fmul_rn(v[j], s);
    store_out<kF32>(p.out, e0, v, 16);
  }
}

// Rowwise, linear scales: the flat sequence of 1x32 blocks (K % 32 == 0), one block = 4 vectors of 8 elements, scale
// byte = flat block index. Warp-window pattern (quant_common.cuh): loads (data and the 4-lanes-shared scale byte)
// and stores are fully coalesced.
struct Mxfp8RowwiseDequantParams {
  const uint2* in;       // nvec vectors of 8 fp8 bytes
  const uint8_t* scales;
  int64_t nvec;
  void* out;
};

template <int kFmt, bool kF32>
__global__ void __launch_bounds__(kWindowThreads)
    mxfp8_rowwise_dequant_kernel(const __grid_constant__ Mxfp8RowwiseDequantParams p) {
  ::tpcomm::detail::pdl_prologue();
  const WarpWindow ww = warp_window();
  uint2 q[kWindowU];
  uint32_t c[kWindowU];
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    q[u] = v < p.nvec ? p.in[v] : make_uint2(0u, 0u);
    c[u] = v < p.nvec ? p.scales[v >> 2] : 0u;
  }
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    if (v >= p.nvec) break;
    const float s = e8m0_decode(c[u]);
    float f[8];
    fp8x4_to_float<kFmt>(q[u].x, f);
    fp8x4_to_float<kFmt>(q[u].y, f + 4);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = __fmul_rn(f[j], s);
    store_out<kF32>(p.out, v * 8, f, 8);
  }
}

// ---- NVFP4 -------------------------------------------------------------------------------------------------------
struct Nvfp4DequantKernelParams {
  const uint32_t* in;  // nvec vectors of 8 e2m1 nibbles
  const uint8_t* scales;
  const float* global_scale_inv;
  int64_t cols;
  int64_t nvec;        // rows * cols / 8
  bool swizzled;
  void* out;
};

// Warp-window pattern (quant_common.cuh); a 1x16 block is 2 vectors, its linear scale index the flat block index.
template <bool kF32>
__global__ void __launch_bounds__(kWindowThreads)
    nvfp4_dequant_kernel(const __grid_constant__ Nvfp4DequantKernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const WarpWindow ww = warp_window();
  const int64_t gk = p.cols / 16;
  uint32_t q[kWindowU], c[kWindowU];
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    q[u] = 0u;
    c[u] = 0u;
    if (v < p.nvec) {
      q[u] = p.in[v];
      const int64_t blk = v >> 1;
      int64_t sidx = blk;
      if (p.swizzled) {
        const int64_t n = fast_div(blk, gk);
        sidx = swz_offset(n, blk - n * gk, (gk + 3) / 4);
      }
      c[u] = p.scales[sidx];
    }
  }
  const float sg = *p.global_scale_inv;
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    if (v >= p.nvec) break;
    const float sb = fp8_to_float<0>(c[u]);
    float f[8];
    fp8x4_to_float<0>(e2m1x4_to_e4m3x4(q[u] & 0xffffu), f);
    fp8x4_to_float<0>(e2m1x4_to_e4m3x4(q[u] >> 16), f + 4);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = __fmul_rn(__fmul_rn(f[j], sb), sg);
    store_out<kF32>(p.out, v * 8, f, 8);
  }
}

}  // namespace tpcomm::quant::detail
