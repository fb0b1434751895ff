// FP8 (e4m3 / e5m2) quantization with float32 scales: amax reduction, tensorwise cast, rowwise (one block per
// row, the row held in registers), colwise (column amax pass + cast pass), and the 1x128 / 128x128 block
// formats on the 128 x 128 tile of tile.cuh.
#pragma once

#include <cstdint>

#include "common/pdl.cuh"
#include "quantize/quant_common.cuh"
#include "quantize/tile.cuh"

namespace tpcomm::quant::detail {

// ---- amax of a whole tensor --------------------------------------------------------------------------------------
constexpr int kAmaxThreads = 512;
constexpr int kAmaxUnroll = 4;

__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide max of a u32 over blockDim.x threads (multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t s_part[32];
  __shared__ uint32_t s_res;
  v = warp_max(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) s_part[w] = v;
  __syncthreads();
  if (w == 0) {
    uint32_t r = lane < static_cast<int>(blockDim.x >> 5) ? s_part[lane] : 0u;
    r = warp_max(r);
    if (lane == 0) s_res = r;
  }
  __syncthreads();
  return s_res;
}

// Zeroes n words before an atomicMax pass. A kernel rather than cudaMemsetAsync: a memset node between two
// kernels would break the PDL chain (common/pdl.h), so the amax kernel could not launch during this one.
__global__ void __launch_bounds__(256) zero_words_kernel(uint32_t* __restrict__ p, int64_t n) {
  ::tpcomm::detail::pdl_prologue();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = 0u;
}

// out_bits (zeroed beforehand) receives atomicMax of the fp32 bit pattern of |x| (non-negative floats order like
// their bit patterns; NaN patterns exceed Inf).
// Loads are plain (L2 evict-normal), not streaming: the cast pass that follows reads the same input from its end
// (reverse order), which is what this grid-stride pass read last, so up to an L2's worth of it is re-read from
// L2 instead of HBM.
__global__ void __launch_bounds__(kAmaxThreads) amax_kernel(const uint4* __restrict__ in, int64_t nchunks,
                                                            uint32_t* __restrict__ out_bits) {
  ::tpcomm::detail::pdl_prologue();
  uint32_t a = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kAmaxUnroll - 1) * stride < nchunks; i += kAmaxUnroll * stride) {
    uint4 v[kAmaxUnroll];
#pragma unroll
    for (int u = 0; u < kAmaxUnroll; ++u) v[u] = __ldg(in + i + u * stride);
#pragma unroll
    for (int u = 0; u < kAmaxUnroll; ++u) a = max_u16x2(a, absmax8_packed(v[u]));
  }
  for (; i < nchunks; i += stride) a = max_u16x2(a, absmax8_packed(__ldg(in + i)));
  const uint32_t m = block_max(fold16(a));
  if (threadIdx.x == 0 && m != 0u) atomicMax(out_bits, m << 16);
}

// ---- tensorwise cast -------------------------------------------------------------------------------------------------
constexpr int kCastThreads = 256;
constexpr int kCastChunksPerThread = 4;

struct Fp8TensorParams {
  const uint4* in;
  int64_t nchunks;       // 8-element chunks
  uint2* out;
  const float* amax;     // device scalar
  float* scale_inv;      // device scalar
  double fp8_max;
  bool pow2;
  bool reverse;  // the amax pass just read the input: blocks start from its end (see amax_kernel)
};

template <int kFmt>
__global__ void __launch_bounds__(kCastThreads) fp8_tensor_cast_kernel(const __grid_constant__ Fp8TensorParams p) {
  ::tpcomm::detail::pdl_prologue();
  // Data loads first, so their latency overlaps the scalar amax load and the scale computation.
  const int64_t b = p.reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int64_t base = b * (kCastThreads * kCastChunksPerThread) + threadIdx.x;
  uint4 v[kCastChunksPerThread];
#pragma unroll
  for (int u = 0; u < kCastChunksPerThread; ++u) {
    const int64_t i = base + u * kCastThreads;
    v[u] = i < p.nchunks ? ld_stream(p.in + i) : make_uint4(0u, 0u, 0u, 0u);
  }
  __shared__ float s_scale;
  if (threadIdx.x == 0) {
    const float qs0 = fp8_scale_from_amax(*p.amax, p.fp8_max, p.pow2);
    s_scale = qs0;
    if (blockIdx.x == 0) *p.scale_inv = __fdiv_rn(1.0f, qs0);
  }
  __syncthreads();
  const float qs = s_scale;
#pragma unroll
  for (int u = 0; u < kCastChunksPerThread; ++u) {
    const int64_t i = base + u * kCastThreads;
    if (i < p.nchunks) p.out[i] = quant8_fp8<kFmt>(v[u], qs);
  }
}

// ---- rowwise: one block per row ----------------------------------------------------------------------------------
constexpr int kRowChunksPerThread = 8;

struct Fp8RowParams {
  const uint16_t* in;
  int64_t rows;
  int64_t cols;
  uint8_t* out;
  float* scale_inv;  // [rows]
  double fp8_max;
  bool pow2;
};

// kCached: the row fits in registers (cols/8 <= blockDim.x * 8) and is read once; otherwise it is read twice
// (the second read mostly hits L2).
template <int kFmt, bool kCached>
__global__ void __launch_bounds__(1024) fp8_rowwise_kernel(const __grid_constant__ Fp8RowParams p) {
  ::tpcomm::detail::pdl_prologue();
  const int64_t row = blockIdx.x;
  const int64_t nchunks = p.cols / 8;
  const uint4* in = reinterpret_cast<const uint4*>(p.in + row * p.cols);
  uint2* out = reinterpret_cast<uint2*>(p.out + row * p.cols);
  const int T = static_cast<int>(blockDim.x);
  const int tid = static_cast<int>(threadIdx.x);
  uint4 x[kCached ? kRowChunksPerThread : 1];
  uint32_t a = 0;
  if constexpr (kCached) {
#pragma unroll
    for (int j = 0; j < kRowChunksPerThread; ++j) {
      const int64_t i = tid + static_cast<int64_t>(j) * T;
      x[j] = i < nchunks ? ld_stream(in + i) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int j = 0; j < kRowChunksPerThread; ++j) a = max_u16x2(a, absmax8_packed(x[j]));
  } else {
    for (int64_t i = tid; i < nchunks; i += T) a = max_u16x2(a, absmax8_packed(in[i]));
  }
  const uint32_t a16 = block_max(fold16(a));
  const float qs = fp8_scale_from_amax(amax16_to_float(a16), p.fp8_max, p.pow2);
  if (tid == 0) p.scale_inv[row] = __fdiv_rn(1.0f, qs);
  if constexpr (kCached) {
#pragma unroll
    for (int j = 0; j < kRowChunksPerThread; ++j) {
      const int64_t i = tid + static_cast<int64_t>(j) * T;
      if (i < nchunks) out[i] = quant8_fp8<kFmt>(x[j], qs);
    }
  } else {
    for (int64_t i = tid; i < nchunks; i += T) out[i] = quant8_fp8<kFmt>(in[i], qs);
  }
}

// ---- colwise: column amax, then cast with one scale per column ------------------------------------------------
// Block: 8 warps; a warp covers 256 columns (lane = 8 columns), the warps of a block interleave rows; the block
// covers rows [blockIdx.y * rows_per_block, +rows_per_block). Every block of the grid is resident at once and
// walks its slice top-down in the amax pass (plain loads, L2 evict-normal); the cast pass walks each slice
// bottom-up, so it starts on the rows the amax pass read last, the ones most likely still in L2.
constexpr int kColThreads = 256;

struct Fp8ColParams {
  const uint16_t* in;
  int64_t rows;
  int64_t cols;
  int64_t rows_per_block;
  uint8_t* out;
  uint32_t* amax_bits;  // [cols], fp32 bit patterns
  float* scale_inv;     // [cols]
  double fp8_max;
  bool pow2;
};

__global__ void __launch_bounds__(kColThreads) fp8_colamax_kernel(const __grid_constant__ Fp8ColParams p) {
  ::tpcomm::detail::pdl_prologue();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * 32 + lane) * 8;
  const bool col_ok = col < p.cols;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * p.rows_per_block;
  const int64_t r_end = min(p.rows, r_begin + p.rows_per_block);
  uint32_t a[4] = {0u, 0u, 0u, 0u};
  if (col_ok) {
    int64_t r = r_begin + w;
    for (; r + 24 < r_end; r += 32) {
      uint4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = __ldg(reinterpret_cast<const uint4*>(p.in + (r + 8 * u) * p.cols + col));
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        a[0] = max_u16x2(a[0], abs2(v[u].x));
        a[1] = max_u16x2(a[1], abs2(v[u].y));
        a[2] = max_u16x2(a[2], abs2(v[u].z));
        a[3] = max_u16x2(a[3], abs2(v[u].w));
      }
    }
    for (; r < r_end; r += 8) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p.in + r * p.cols + col));
      a[0] = max_u16x2(a[0], abs2(v.x));
      a[1] = max_u16x2(a[1], abs2(v.y));
      a[2] = max_u16x2(a[2], abs2(v.z));
      a[3] = max_u16x2(a[3], abs2(v.w));
    }
  }
  __shared__ uint4 s_part[8][32];
  s_part[w][lane] = make_uint4(a[0], a[1], a[2], a[3]);
  __syncthreads();
  if (w == 0 && col_ok) {
#pragma unroll
    for (int k = 1; k < 8; ++k) {
      const uint4 v = s_part[k][lane];
      a[0] = max_u16x2(a[0], v.x);
      a[1] = max_u16x2(a[1], v.y);
      a[2] = max_u16x2(a[2], v.z);
      a[3] = max_u16x2(a[3], v.w);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t a16 = (j & 1) ? (a[j >> 1] >> 16) : (a[j >> 1] & 0xffffu);
      if (a16 != 0u) atomicMax(p.amax_bits + col + j, a16 << 16);
    }
  }
}

template <int kFmt>
__global__ void __launch_bounds__(kColThreads) fp8_colcast_kernel(const __grid_constant__ Fp8ColParams p) {
  ::tpcomm::detail::pdl_prologue();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * 32 + lane) * 8;
  if (col >= p.cols) return;
  float qs[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) qs[j] = fp8_scale_from_amax(__uint_as_float(p.amax_bits[col + j]), p.fp8_max, p.pow2);
  if (blockIdx.y == 0 && w == 0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) p.scale_inv[col + j] = __fdiv_rn(1.0f, qs[j]);
  }
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * p.rows_per_block;
  const int64_t r_end = min(p.rows, r_begin + p.rows_per_block);
  auto cast = [&](const uint4& v) {
    uint2 o;
    o.x = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.x), qs[0]), __fmul_rn(bf16_hi(v.x), qs[1])) |
          (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.y), qs[2]), __fmul_rn(bf16_hi(v.y), qs[3])) << 16);
    o.y = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.z), qs[4]), __fmul_rn(bf16_hi(v.z), qs[5])) |
          (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.w), qs[6]), __fmul_rn(bf16_hi(v.w), qs[7])) << 16);
    return o;
  };
  // Bottom-up: loop index i covers [r_begin, r_end) as in the amax pass, row = mirror(i).
  const int64_t mirror = r_begin + r_end - 1;
  int64_t i = r_begin + w;
  for (; i + 24 < r_end; i += 32) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = ld_stream(p.in + (mirror - i - 8 * u) * p.cols + col);
#pragma unroll
    for (int u = 0; u < 4; ++u) *reinterpret_cast<uint2*>(p.out + (mirror - i - 8 * u) * p.cols + col) = cast(v[u]);
  }
  for (; i < r_end; i += 8) {
    const int64_t r = mirror - i;
    *reinterpret_cast<uint2*>(p.out + r * p.cols + col) = cast(ld_stream(p.in + r * p.cols + col));
  }
}

// ---- 1x128 and 128x128 blocks on the 128 x 128 tile ---------------------------------------------------------------
struct Fp8BlockParams {
  const uint16_t* in;
  int64_t rows;
  int64_t cols;
  int64_t col_tiles;
  uint8_t* out;
  float* scale_inv;
  int64_t scale_ld;
  double fp8_max;
  bool pow2;
};

template <int kFmt>
__global__ void __launch_bounds__(kTileThreads) fp8_block1x128_kernel(const __grid_constant__ Fp8BlockParams p) {
  ::tpcomm::detail::pdl_prologue();
  const ThreadSlot s = thread_slot();
  const TileCoord t = tile_coord(blockIdx.x, p.col_tiles, (p.rows + kTileRows - 1) / kTileRows);
  uint4 x[kRowsPerThread];
  load_tile<kRowsPerThread>(p.in, p.rows, p.cols, t, s, x);
  // Row amax over the 128 columns = the 16 lanes of a half-warp; lane c ends up with the amax of row c.
  uint32_t ra[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) ra[i] = fold16(absmax8_packed(x[i]));
  transpose_reduce_max<kRowsPerThread, 16>(ra, s.lane);
  const float qs_mine = fp8_scale_from_amax(amax16_to_float(ra[0]), p.fp8_max, p.pow2);
  const int64_t my_row = t.n0 + s.rl0 + s.c;
  if (my_row < p.rows) p.scale_inv[(t.k0 / 128) * p.scale_ld + my_row] = __fdiv_rn(1.0f, qs_mine);
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < p.cols;
  uint8_t* out = p.out + (t.n0 + s.rl0) * p.cols + col;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const float qs = __shfl_sync(kFullMask, qs_mine, (s.lane & 16) | i);
    const uint2 v = quant8_fp8<kFmt>(x[i], qs);
    if (col_ok && t.n0 + s.rl0 + i < p.rows) *reinterpret_cast<uint2*>(out + i * p.cols) = v;
  }
}

template <int kFmt>
__global__ void __launch_bounds__(kTileThreads) fp8_block128x128_kernel(const __grid_constant__ Fp8BlockParams p) {
  ::tpcomm::detail::pdl_prologue();
  const ThreadSlot s = thread_slot();
  const TileCoord t = tile_coord(blockIdx.x, p.col_tiles, (p.rows + kTileRows - 1) / kTileRows);
  uint4 x[kRowsPerThread];
  load_tile<kRowsPerThread>(p.in, p.rows, p.cols, t, s, x);
  uint32_t a = 0;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) a = max_u16x2(a, absmax8_packed(x[i]));
  const uint32_t a16 = block_max(fold16(a));
  const float qs = fp8_scale_from_amax(amax16_to_float(a16), p.fp8_max, p.pow2);
  if (threadIdx.x == 0) p.scale_inv[(t.n0 / 128) * p.scale_ld + t.k0 / 128] = __fdiv_rn(1.0f, qs);
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < p.cols;
  uint8_t* out = p.out + (t.n0 + s.rl0) * p.cols + col;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const uint2 v = quant8_fp8<kFmt>(x[i], qs);
    if (col_ok && t.n0 + s.rl0 + i < p.rows) *reinterpret_cast<uint2*>(out + i * p.cols) = v;
  }
}

}  // namespace tpcomm::quant::detail
