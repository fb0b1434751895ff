// FP8 (e4m3 / e5m2) quantization with float32 scales: amax reduction, tensorwise cast, rowwise (one block per
// row, the row held in registers), colwise (one pass over a column strip held by a thread-block cluster, or a
// column amax pass + cast pass when the strip does not fit), and the 1x128 / 128x128 block
// formats on the 128 x 128 tile of tile.cuh.
#pragma once

#include <cstdint>

#include "common/pdl.cuh"
#include "quantize/colwise_plan.h"
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

// Quantizes 8 consecutive bf16 of one row, element j with its column's multiplier qs[j].
template <int kFmt>
__device__ __forceinline__ uint2 quant8_fp8_cols(const uint4& v, const float (&qs)[8]) {
  uint2 o;
  o.x = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.x), qs[0]), __fmul_rn(bf16_hi(v.x), qs[1])) |
        (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.y), qs[2]), __fmul_rn(bf16_hi(v.y), qs[3])) << 16);
  o.y = cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.z), qs[4]), __fmul_rn(bf16_hi(v.z), qs[5])) |
        (cvt2_fp8<kFmt>(__fmul_rn(bf16_lo(v.w), qs[6]), __fmul_rn(bf16_hi(v.w), qs[7])) << 16);
  return o;
}

// Transposed output (Fp8QuantizeParams::transpose_output): load(i) returns 8 consecutive bf16 (columns col ..
// col+7) of row r + i, i < 16; column col + j of the input is row col + j of the (cols, rows) output, and its
// bytes r .. r+15 are one 16-byte store. Same products and conversions as quant8_fp8_cols (the same bits), paired by
// column instead of by row: cvt2_fp8 packs rows i (low byte) and i + 1. Rows are loaded four at a time, columns
// done in two halves (16 rows x 8 columns at once spilled at the 80-register cap of the cluster kernel). Only rows < nvalid are stored (byte stores
// when nvalid < 16; with rows % 16 == 0 required and slices starting at multiples of 16 that does not happen).
template <int kFmt, class Load>
__device__ __forceinline__ void cast_cols_transposed16(const Load& load, const float (&qs)[8], uint8_t* out_t,
                                                       int64_t rows, int64_t col, int64_t r, int nvalid) {
#pragma unroll
  for (int jh = 0; jh < 8; jh += 4) {  // columns in two halves (each row loaded twice): no spills at 80 registers
    uint32_t w[4][4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint4 x[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = 4 * q + i < nvalid ? load(4 * q + i) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float m = qs[jh + j];
        const uint32_t lo = cvt2_fp8<kFmt>(__fmul_rn(bf16_elem(x[0], jh + j), m), __fmul_rn(bf16_elem(x[1], jh + j), m));
        const uint32_t hi = cvt2_fp8<kFmt>(__fmul_rn(bf16_elem(x[2], jh + j), m), __fmul_rn(bf16_elem(x[3], jh + j), m));
        w[j][q] = lo | (hi << 16);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint8_t* dst = out_t + (col + jh + j) * rows + r;
      if (nvalid >= 16) {
        *reinterpret_cast<uint4*>(dst) = make_uint4(w[j][0], w[j][1], w[j][2], w[j][3]);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i)
          if (i < nvalid) dst[i] = static_cast<uint8_t>(w[j][i >> 2] >> (8 * (i & 3)));
      }
    }
  }
}

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

template <int kFmt, bool kT>
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
  if constexpr (kT) {
    // Transposed output: warp w casts 16-row groups w, w + 8, ... of the slice (rows_per_block % 16 == 0); the
    // block's 8 warps write 128 consecutive bytes of each output row about together.
    for (int64_t r = r_begin + 16 * w; r < r_end; r += 16 * (kColThreads / 32)) {
      const int n = r_end - r < 16 ? static_cast<int>(r_end - r) : 16;
      const uint16_t* src = p.in + r * p.cols + col;
      uint4 x[16];  // all 16 loads in flight at once (the cast reads each row twice; no register cap here)
#pragma unroll
      for (int i = 0; i < 16; ++i) x[i] = i < n ? ld_stream(src + i * p.cols) : make_uint4(0u, 0u, 0u, 0u);
      cast_cols_transposed16<kFmt>([&](int i) { return x[i]; }, qs, p.out, p.rows, col, r, n);
    }
    return;
  }
  auto cast = [&](const uint4& v) { return quant8_fp8_cols<kFmt>(v, qs); };
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

// ---- colwise in one pass: a thread-block cluster holds a column strip on chip --------------------------------
// A column's scale needs the amax of the whole column before any element of it can be cast, so the two-pass form
// above reads the input twice: ~5 bytes of traffic per 3 logical bytes, a ceiling near 60% of copy (measured
// 49-51%). Here a cluster of C blocks (C <= 16; above 8 needs the non-portable opt-in) owns a strip of kW columns
// over all rows, small enough to sit on the cluster's chip (colwise_plan.h: <= 64 KiB of strip per block, in
// shared memory alone or with 4 rows per thread in registers):
//   1. block k loads rows [k * rows_per_block, +rows_per_block) of the strip into its shared memory and reduces
//      their column amax. A thread owns the 16-byte slots it loads and later casts (thread-private: no
//      __syncthreads between load and cast, no bank conflicts; cp.async.wait_group makes a thread's own copies
//      visible to it);
//   2. kW / 8 threads store the block's partial amax into the shared memory of every block of the cluster (DSMEM);
//      cluster barrier (arrive.release / wait.acquire: every partial is visible to every block after it). The
//      stores target peers' shared memory, which exists only once the peer has started: every block arrives on a
//      first cluster barrier phase at its start (arrive.relaxed: it publishes nothing) and waits for that phase
//      just before its first remote store, so no block writes into a block that has not begun (the CUDA
//      programming guide's rule for distributed shared memory; without it compute-sanitizer racecheck reports
//      "invalid __shared__ write ... in a block that might not have entered yet"). The wait comes after the
//      loads and the block amax, so the co-scheduled peers have long arrived and it costs next to nothing;
//   3. the same threads combine the C partials from their own shared memory into the column scales (the same
//      fp8_scale_from_amax as the two-pass form, so the bits are the same); block 0 of the cluster writes
//      scale_inv and amax_out;
//   4. every block casts its rows from shared memory and writes them once.
// Input read once, output written once. No DSMEM access after the barrier, so a block may exit while its peers
// still cast. The barrier cannot hang: the hardware co-schedules the C blocks of a cluster and every thread
// arrives at it (no early return).
// Loads: every load of a thread is issued at once as cp.async into its slots (A/B in bench/NOTES.md, session 8:
// loading through registers 8 at a time measured 57% of copy at 8192x8192 against 73%; a persistent form with two
// buffers, the next strip's loads in flight during this one's cast, 50%: it needs 128 KiB per block, one block per
// SM, and then nothing overlaps the cluster barrier).

struct Fp8ColClusterParams {
  const uint16_t* in;
  int64_t rows;
  int64_t cols;
  int64_t rows_per_block;  // rows of the strip held by one block of the cluster
  uint8_t* out;
  uint32_t* amax_bits;  // [cols], fp32 bit patterns (as the two-pass form leaves them)
  float* scale_inv;     // [cols]
  double fp8_max;
  bool pow2;
};

// Arrival that orders no memory access: "this block has started" (see step 2 of the colwise kernel).
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait_acquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_size() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  return n;
}
// Stores 16 bytes at the same shared-memory offset as `local`, in the shared memory of cluster block `rank`
// (fire and forget; made visible to that block by the next cluster barrier's release/acquire).
__device__ __forceinline__ void st_dsmem(uint4* local, uint32_t rank, const uint4& v) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(local)), remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(a), "r"(rank));
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(remote), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
}
__device__ __forceinline__ uint4 max_u16x8(const uint4& a, const uint4& b) {
  return make_uint4(max_u16x2(a.x, b.x), max_u16x2(a.y, b.y), max_u16x2(a.z, b.z), max_u16x2(a.w, b.w));
}
__device__ __forceinline__ uint4 abs_u16x8(const uint4& v) { return make_uint4(abs2(v.x), abs2(v.y), abs2(v.z), abs2(v.w)); }

// The per-thread view of one strip: this thread's column chunk, its rows, its slots.
template <int kW>
struct ColStripThread {
  static constexpr int kChunks = kW / 8;                             // 16-byte chunks per strip row
  static constexpr int kRowsPerStep = kColClusterThreads / kChunks;  // strip rows the block covers per step
  static constexpr int kUnroll = 8;
  static_assert(kW % 8 == 0 && 32 % kChunks == 0, "a row of the strip is a power-of-two share of a warp");
  int chunk, r_first, nr;  // nr: rows of the strip this block holds
  int i_smem;              // this thread's first row kept in shared memory (rows before it: registers)
  int64_t r0, step;        // first row of the block; elements between a thread's rows

  // Issues the cp.async loads of this thread's shared-memory rows of strip column `col` into `slots` (the slot of
  // row i_smem; the next ones are kRowsPerStep * kChunks apart) and commits them as one group (maybe empty).
  __device__ __forceinline__ void issue(const uint16_t* in, int64_t cols, int64_t col, bool col_ok, uint4* slots) const {
    if (col_ok) {
      const uint16_t* src = in + (r0 + i_smem) * cols + col;
      uint32_t sa = static_cast<uint32_t>(__cvta_generic_to_shared(slots));
      for (int i = i_smem; i < nr; i += kRowsPerStep, src += step, sa += kRowsPerStep * kChunks * 16) cp_async16(sa, src, 16u);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  // The transposed-output layout (kT): slot of (row i, chunk c) = (i * kChunks + c) ^ ((i / 16) & 7), an XOR
  // inside each 128-byte line, so that 8 lanes reading one chunk of 8 consecutive 16-row groups hit 8 different
  // 16-byte bank groups. `base`: the start of s_data.
  __device__ __forceinline__ static int swz(int i, int c) { return (i * kChunks + c) ^ ((i >> 4) & 7); }
  __device__ __forceinline__ void issue_swz(const uint16_t* in, int64_t cols, int64_t col, bool col_ok,
                                            const uint4* base) const {
    if (col_ok) {
      const uint16_t* src = in + (r0 + i_smem) * cols + col;
      const uint32_t sa = static_cast<uint32_t>(__cvta_generic_to_shared(base));
      for (int i = i_smem; i < nr; i += kRowsPerStep, src += step) cp_async16(sa + 16u * swz(i, chunk), src, 16u);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  __device__ __forceinline__ uint4 fold_swz(const uint4* base) const {
    uint4 a = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll 8
    for (int i = i_smem; i < nr; i += kRowsPerStep) a = max_u16x8(a, abs_u16x8(base[swz(i, chunk)]));
    return a;
  }
  // amax over this thread's slots.
  __device__ __forceinline__ uint4 fold(const uint4* slots) const {
    uint4 a = make_uint4(0u, 0u, 0u, 0u);
    int i = i_smem;
    const uint4* s = slots;
    for (; i + (kUnroll - 1) * kRowsPerStep < nr; i += kUnroll * kRowsPerStep, s += kUnroll * kRowsPerStep * kChunks) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) a = max_u16x8(a, abs_u16x8(s[u * kRowsPerStep * kChunks]));
    }
    for (; i < nr; i += kRowsPerStep, s += kRowsPerStep * kChunks) a = max_u16x8(a, abs_u16x8(*s));
    return a;
  }
  // Casts this thread's slots with its 8 column multipliers and stores them.
  template <int kFmt>
  __device__ __forceinline__ void cast(const uint4* slots, uint8_t* out, int64_t cols, int64_t col,
                                       const float (&qs)[8]) const {
    uint8_t* dst = out + (r0 + i_smem) * cols + col;
    int i = i_smem;
    const uint4* s = slots;
    for (; i + (kUnroll - 1) * kRowsPerStep < nr;
         i += kUnroll * kRowsPerStep, s += kUnroll * kRowsPerStep * kChunks, dst += kUnroll * step) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        *reinterpret_cast<uint2*>(dst + u * step) = quant8_fp8_cols<kFmt>(s[u * kRowsPerStep * kChunks], qs);
    }
    for (; i < nr; i += kRowsPerStep, s += kRowsPerStep * kChunks, dst += step)
      *reinterpret_cast<uint2*>(dst) = quant8_fp8_cols<kFmt>(*s, qs);
  }
};

// Block amax of every strip column: lanes of a warp with the same chunk, then the warps; threads t < kChunks
// return chunk t's amax (others: unspecified). Contains one __syncthreads.
template <int kW>
__device__ __forceinline__ uint4 col_block_amax(uint4 a, uint4 (*s_warp)[kW / 8]) {
  constexpr int kChunks = kW / 8;
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
#pragma unroll
  for (int off = kChunks; off < 32; off <<= 1) {
    uint4 o;
    o.x = __shfl_xor_sync(0xffffffffu, a.x, off);
    o.y = __shfl_xor_sync(0xffffffffu, a.y, off);
    o.z = __shfl_xor_sync(0xffffffffu, a.z, off);
    o.w = __shfl_xor_sync(0xffffffffu, a.w, off);
    a = max_u16x8(a, o);
  }
  if (lane < kChunks) s_warp[w][lane] = a;
  __syncthreads();
  uint4 m = make_uint4(0u, 0u, 0u, 0u);
  if (t < kChunks) {
#pragma unroll
    for (int k = 0; k < kColClusterThreads / 32; ++k) m = max_u16x8(m, s_warp[k][t]);
  }
  return m;
}

// Threads t < kW / 8 turn the column amax m of their 8 columns into multipliers in s_qs, and (cluster block 0)
// write scale_inv and the amax bits. strip_col0: the strip's first column.
template <int kW>
__device__ __forceinline__ void col_scales(const Fp8ColClusterParams& p, const uint4& m, uint32_t crank,
                                           int64_t strip_col0, float* s_qs) {
  const int t = threadIdx.x;
  const uint32_t words[4] = {m.x, m.y, m.z, m.w};
  const int64_t c0 = strip_col0 + t * 8;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t bits = ((j & 1) ? (words[j >> 1] >> 16) : (words[j >> 1] & 0xffffu)) << 16;
    const float qs = fp8_scale_from_amax(__uint_as_float(bits), p.fp8_max, p.pow2);
    s_qs[t * 8 + j] = qs;
    if (crank == 0 && c0 < p.cols) {
      p.scale_inv[c0 + j] = __fdiv_rn(1.0f, qs);
      p.amax_bits[c0 + j] = bits;
    }
  }
}

__device__ __forceinline__ void load_qs8(const float* s_qs, int chunk, float (&qs)[8]) {
  const float4 q0 = *reinterpret_cast<const float4*>(&s_qs[chunk * 8]);
  const float4 q1 = *reinterpret_cast<const float4*>(&s_qs[chunk * 8 + 4]);
  qs[0] = q0.x, qs[1] = q0.y, qs[2] = q0.z, qs[3] = q0.w, qs[4] = q1.x, qs[5] = q1.y, qs[6] = q1.z, qs[7] = q1.w;
}

// The partials travel by push: each block stores its partial into every peer's s_all before the barrier (fire
// and forget), reads them locally after it, and so needs no barrier after its last DSMEM access (pulling them over
// DSMEM after the barrier, with a trailing barrier keeping each block's partial alive for its peers, measured
// 1-3 points slower: bench/NOTES.md session 8).
// kRegs: a thread's first kRegs rows stay in registers (4 KiB per block per row), the rest in shared memory, so a
// block holds the same data in 48 instead of 64 KiB of shared memory and four blocks fit an SM instead of three;
// built for four blocks per SM with kRegs > 0 (<= 64 registers), else three.
// kT: transposed output (rows_per_block % 16 == 0, kRegs == 0): the strip is stored swizzled (issue_swz), and
// after the scales the cast reads it in 16-row x 8-column pieces (any thread may read any slot after the
// __syncthreads of step 3), 8 consecutive pieces of one chunk per 8 lanes, so a warp's stores for one column
// are 128-byte runs. (The unswizzled form, lane = row group * kW/8 + chunk, stored 64-byte runs at W = 64 and
// measured 4-7% slower: bench/NOTES.md session 10.)
template <int kFmt, int kW, int kRegs, bool kT = false>
__global__ void __launch_bounds__(kColClusterThreads, kRegs > 0 ? 4 : 3)
    fp8_colwise_cluster_kernel(const __grid_constant__ Fp8ColClusterParams p) {
  static_assert(!kT || kRegs == 0, "the transposed cast reads every row from shared memory");
  using S = ColStripThread<kW>;
  constexpr int kChunks = S::kChunks;
  extern __shared__ uint4 s_data[];  // [rows_per_block - kRegs * kRowsPerStep][kChunks]
  __shared__ uint4 s_warp[kColClusterThreads / 32][kChunks];
  // Column amax partials (bf16 |x| bit patterns) of the cluster's blocks, [cluster block][chunk], written by them.
  __shared__ uint4 s_all[kColClusterMax][kChunks];
  __shared__ __align__(16) float s_qs[kW];

  // Phase 0 of the cluster barrier: this block has started (waited on before the first DSMEM store, step 2).
  // Before the PDL wait, so that it overlaps the predecessor's tail too. Every thread arrives (.aligned: no
  // thread of the block returns early anywhere in this kernel).
  cluster_arrive_relaxed();
  ::tpcomm::detail::pdl_prologue();
  const uint32_t csize = cluster_size(), crank = cluster_rank();
  const int t = threadIdx.x;
  S th;
  th.chunk = t % kChunks;
  th.r_first = t / kChunks;
  th.i_smem = th.r_first + kRegs * S::kRowsPerStep;
  th.r0 = static_cast<int64_t>(crank) * p.rows_per_block;
  const int64_t left = p.rows - th.r0;
  th.nr = left <= 0 ? 0 : static_cast<int>(left < p.rows_per_block ? left : p.rows_per_block);
  th.step = static_cast<int64_t>(S::kRowsPerStep) * p.cols;
  uint4* const slots = s_data + th.r_first * kChunks + th.chunk;
  const int64_t strip_col0 = static_cast<int64_t>(blockIdx.x / csize) * kW;
  const int64_t col = strip_col0 + th.chunk * 8;
  const bool col_ok = col < p.cols;

  // 1. Load and keep this block's rows of the strip; column amax.
  uint4 reg[kRegs > 0 ? kRegs : 1];
  if constexpr (kRegs > 0) {
    const uint16_t* src = p.in + (th.r0 + th.r_first) * p.cols + col;
#pragma unroll
    for (int u = 0; u < kRegs; ++u)
      reg[u] = (col_ok && th.r_first + u * S::kRowsPerStep < th.nr) ? ld_stream(src + u * th.step)
                                                                     : make_uint4(0u, 0u, 0u, 0u);
  }
  uint4 a;
  if constexpr (kT) {
    th.issue_swz(p.in, p.cols, col, col_ok, s_data);
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    a = col_ok ? th.fold_swz(s_data) : make_uint4(0u, 0u, 0u, 0u);
  } else {
    th.issue(p.in, p.cols, col, col_ok, slots);
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    a = col_ok ? th.fold(slots) : make_uint4(0u, 0u, 0u, 0u);
  }
  if constexpr (kRegs > 0) {
#pragma unroll
    for (int u = 0; u < kRegs; ++u) a = max_u16x8(a, abs_u16x8(reg[u]));  // rows past the end hold +0
  }
  // 2. Block partial to the cluster, cluster barrier.
  const uint4 part = col_block_amax<kW>(a, s_warp);
  cluster_wait();  // phase 0: every block of the cluster has started, so its shared memory may be written
  if (t < kChunks)
    for (uint32_t k = 0; k < csize; ++k) st_dsmem(&s_all[crank][t], k, part);
  cluster_arrive_release();
  cluster_wait_acquire();
  // 3. Column scales from the cluster's partials.
  if (t < kChunks) {
    uint4 m = make_uint4(0u, 0u, 0u, 0u);
    for (uint32_t k = 0; k < csize; ++k) m = max_u16x8(m, s_all[k][t]);
    col_scales<kW>(p, m, crank, strip_col0, s_qs);
  }
  __syncthreads();
  if constexpr (kT) {
    // 4T. Transposed cast of the block's rows from the swizzled strip: a warp takes 8 consecutive 16-row groups
    // (lane & 7) x 4 chunks (lane >> 3), so for each column it stores 128 contiguous bytes (8 groups x 16 rows)
    // per chunk, and each 8-lane phase of a 16-byte shared load reads one chunk of 8 groups: 8 different bank
    // groups through the swizzle (issue_swz).
    constexpr int kCw = 4, kParts = kChunks / kCw;
    const int lane = t & 31, gw = lane & 7, cl = lane >> 3;
    const int ngroups = (th.nr + 15) / 16;
    const int nitems = (ngroups + 7) / 8 * kParts;
    for (int item = t >> 5; item < nitems; item += kColClusterThreads / 32) {
      const int g = item / kParts * 8 + gw, c = item % kParts * kCw + cl;
      const int64_t colc = strip_col0 + c * 8;
      if (g >= ngroups || colc >= p.cols) continue;
      float qs[8];
      load_qs8(s_qs, c, qs);
      const int n = min(16, th.nr - 16 * g);
      cast_cols_transposed16<kFmt>([&](int i) { return s_data[S::swz(16 * g + i, c)]; }, qs, p.out, p.rows, colc,
                                   th.r0 + 16 * g, n);
    }
    return;
  }
  // 4. Cast the rows held in registers and shared memory.
  if (col_ok) {
    float qs[8];
    load_qs8(s_qs, th.chunk, qs);
    if constexpr (kRegs > 0) {
      uint8_t* dst = p.out + (th.r0 + th.r_first) * p.cols + col;
#pragma unroll
      for (int u = 0; u < kRegs; ++u)
        if (th.r_first + u * S::kRowsPerStep < th.nr)
          *reinterpret_cast<uint2*>(dst + u * th.step) = quant8_fp8_cols<kFmt>(reg[u], qs);
    }
    th.template cast<kFmt>(slots, p.out, p.cols, col, qs);
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
