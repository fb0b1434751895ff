// NVFP4 quantization (e2m1 elements, e4m3 block scales, fp32 global scale) on the 128 x 128 tile of tile.cuh.
// 1x16: a block is 2 adjacent lanes of one row; 16x16: a block is 2 adjacent lanes x the 16 rows of one thread
// (kR = 16) or of two threads (kR = 8: lanes l and l ^ 8).
#pragma once

#include <cstdint>

#include "common/pdl.cuh"
#include "quantize/quant_common.cuh"
#include "quantize/tile.cuh"

namespace tpcomm::quant::detail {

struct Nvfp4KernelParams {
  const uint16_t* in;
  int64_t rows;
  int64_t cols;
  int64_t col_tiles;
  uint8_t* out;           // (rows, cols/2)
  uint8_t* scales;        // e4m3
  const float* global_amax;
  float* global_scale_inv;  // may be null
  bool swizzled;
  uint32_t e2m1_m512;  // 512, from the host (quant8_e2m1)
  TileDivs divs;       // persistent form: (column tiles, row tiles) and their product
  int64_t tiles;
};

// One 128 x 128 tile whose bf16 the thread holds in x (tile.cuh layout). s_enc_over6 / s_dec: the global scale.
template <bool k16x16, int kR, bool kFull>
__device__ __forceinline__ void nvfp4_tile(const Nvfp4KernelParams& p, const TileCoord& t, const uint4 (&x)[kR],
                                           float s_enc_over6, float s_dec) {
  const ThreadSlot s = thread_slot<kR>();
  const int64_t N = p.rows, K = p.cols;
  __shared__ uint32_t s_sc[kTileRows * 2];  // [row][8 blocks of 16 columns] bytes
  uint8_t* sc_bytes = reinterpret_cast<uint8_t*>(s_sc);
  const int blk = s.c >> 1;  // 16-column block inside the tile
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = kFull || col < K;
  const int64_t row0 = t.n0 + s.rl0;
  uint8_t* out = p.out + row0 * (K / 2) + col / 2;
  auto store_row = [&](int i, float rcp) {
    const uint32_t v = quant8_e2m1(x[i], rcp, p.e2m1_m512);
    if (kFull || (col_ok && row0 + i < N)) *reinterpret_cast<uint32_t*>(out + i * (K / 2)) = v;
  };

  if constexpr (!k16x16) {
    // After the xor-1 transpose-reduction lane parity b holds the amax of rows (kR/2) b + j, j < kR/2; the element
    // multiplier of row j (kR/2 + j) is then this lane's (the partner's) value for b = 0 and the other way round.
    constexpr int kHalf = kR / 2;
    uint32_t ra[kR];
#pragma unroll
    for (int i = 0; i < kR; ++i) ra[i] = fold16(absmax8_packed(x[i]));
    transpose_reduce_max<kR, 2>(ra, s.lane);
    const int b = s.lane & 1;
#pragma unroll
    for (int j = 0; j < kHalf; ++j) {
      const Nvfp4BlockScale bs = nvfp4_block_scale(amax16_to_float(ra[j]), s_enc_over6, s_dec);
      sc_bytes[(s.rl0 + kHalf * b + j) * 8 + blk] = static_cast<uint8_t>(bs.code);
      const float other = __shfl_xor_sync(kFullMask, bs.rcp, 1);
      store_row(j, b == 0 ? bs.rcp : other);
      store_row(kHalf + j, b == 0 ? other : bs.rcp);
    }
  } else {
    uint32_t a = 0;
#pragma unroll
    for (int i = 0; i < kR; ++i) a = max_u16x2(a, absmax8_packed(x[i]));
    uint32_t a16 = fold16(a);
    a16 = max(a16, __shfl_xor_sync(kFullMask, a16, 1));
    // kR = 8: the other 8 rows of the 16-row block are in lane ^ 8 (h ^ 1: rows 32g + 8h, h = lane / 8).
    if constexpr (kR == 8) a16 = max(a16, __shfl_xor_sync(kFullMask, a16, 8));
    const float bamax = amax16_to_float(a16);
    const Nvfp4BlockScale bs = nvfp4_block_scale(bamax, s_enc_over6, s_dec);
    if ((s.lane & 1) == 0) {
#pragma unroll
      for (int i = 0; i < kR; ++i) sc_bytes[(s.rl0 + i) * 8 + blk] = static_cast<uint8_t>(bs.code);
    }
    // The unclamped encoder when every block of the warp allows it (warp-uniform: both forms give the same bits).
    if (__all_sync(kFullMask, e2m1_unclamped_ok(bamax, bs.rcp))) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const uint32_t v = quant8_e2m1<false>(x[i], bs.rcp, p.e2m1_m512);
        if (kFull || (col_ok && row0 + i < N)) *reinterpret_cast<uint32_t*>(out + i * (K / 2)) = v;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kR; ++i) store_row(i, bs.rcp);
    }
  }
  __syncthreads();
  if (TileMap<kR>::kThreads > kTileRows && threadIdx.x >= kTileRows) return;  // kR = 8: 128 scale rows

  // Scales of row n0 + tid: 8 blocks = 2 words of 4 bytes. Rows/columns outside the tensor hold code 0 (their
  // inputs were loaded as zeros), which is also the swizzled layout's padding value.
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t n = t.n0 + tid;
  const int64_t gk = K / 16;
  const int64_t kg0 = t.k0 / 16;
  if (p.swizzled) {
    const int64_t gtiles = (gk + 3) / 4;
    const int64_t np = (N + 127) / 128 * 128;
    if (n < np) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t kg = kg0 + 4 * half;
        if (kg < gtiles * 4)
          *reinterpret_cast<uint32_t*>(p.scales + swz_offset(n, kg, gtiles)) = s_sc[tid * 2 + half];
      }
    }
  } else if (kFull || n < N) {
    uint8_t* dst = p.scales + n * gk + kg0;
    if ((gk & 7) == 0) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(s_sc[tid * 2], s_sc[tid * 2 + 1]);
    } else {
#pragma unroll
      for (int g = 0; g < 8; ++g)
        if (kg0 + g < gk) dst[g] = sc_bytes[tid * 8 + g];
    }
  }
}

// Register caps (__launch_bounds__ minimum blocks): kR = 16: 5 blocks of 128 threads (<= 102 registers, 96 used);
// kR = 8: 4 blocks of 256 (<= 64).
template <bool k16x16, int kR, bool kFull>
__global__ void __launch_bounds__(TileMap<kR>::kThreads, kR == 16 ? 5 : 4)
    nvfp4_quantize_kernel(const __grid_constant__ Nvfp4KernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const TileCoord t = tile_coord(blockIdx.x, p.col_tiles, (p.rows + kTileRows - 1) / kTileRows);
  uint4 x[kR];
  load_tile<kR, kFull>(p.in, p.rows, p.cols, t, thread_slot<kR>(), x);
  const float s_enc = nvfp4_global_encode_scale(*p.global_amax);
  const float s_dec = __frcp_rn(s_enc);  // IEEE 1/x
  if (blockIdx.x == 0 && threadIdx.x == 0 && p.global_scale_inv != nullptr) *p.global_scale_inv = s_dec;
  nvfp4_tile<k16x16, kR, kFull>(p, t, x, __fmul_rn(s_enc, 1.0f / 6.0f), s_dec);
}

// 16x16, persistent and pipelined (tile.cuh): grid = resident blocks, each walks tiles with stride gridDim.x and
// prefetches the next one (kStageBytes of dynamic shared memory) while it converts this one. The global scale is
// computed once per block.
template <int kR, bool kFull>
__global__ void __launch_bounds__(TileMap<kR>::kThreads, kR == 16 ? 5 : 4)
    nvfp4_quantize_persistent_kernel(const __grid_constant__ Nvfp4KernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const float s_enc = nvfp4_global_encode_scale(*p.global_amax);
  const float s_dec = __frcp_rn(s_enc);  // IEEE 1/x
  const float s_enc_over6 = __fmul_rn(s_enc, 1.0f / 6.0f);
  if (blockIdx.x == 0 && threadIdx.x == 0 && p.global_scale_inv != nullptr) *p.global_scale_inv = s_dec;
  for_each_tile_pipelined<kR, kFull>(p.in, p.rows, p.cols, p.divs, p.tiles,
                                     [&](int64_t, const TileCoord& t, uint4(&x)[kR]) {
                                       nvfp4_tile<true, kR, kFull>(p, t, x, s_enc_over6, s_dec);
                                     });
}

}  // namespace tpcomm::quant::detail

namespace tpcomm::quant::detail {

// ---- 1x16, linear scales: warp-window kernel ------------------------------------------------------------------------
// With K % 16 == 0 the (rows, K) input is a flat sequence of 1x16 blocks of 2 consecutive 16-byte vectors, and the
// linear scale of block b is scales[b]. Warp-window pattern (quant_common.cuh): a block is 2 adjacent lanes (one
// shuffle), each lane stores its 8 nibbles as one 4-byte word (128 contiguous bytes per warp instruction).
struct Nvfp4RowwiseParams {
  const uint4* in;   // nvec 16-byte vectors of bf16
  int64_t nvec;      // even
  uint32_t* data;    // 8 nibbles per input vector
  uint8_t* scales;   // one byte per 2 vectors
  const float* global_amax;
  float* global_scale_inv;  // may be null
  bool reverse;      // the global amax pass just read the input: start from its end (warp_window)
  uint32_t e2m1_m512;  // 512, from the host (quant8_e2m1)
};

__global__ void __launch_bounds__(kWindowThreads) nvfp4_rowwise_kernel(const __grid_constant__ Nvfp4RowwiseParams p) {
  ::tpcomm::detail::pdl_prologue();
  const WarpWindow ww = warp_window(p.reverse);
  uint4 x[kWindowU];
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    x[u] = v < p.nvec ? ld_stream(p.in + v) : make_uint4(0u, 0u, 0u, 0u);
  }
  __shared__ Nvfp4ScaleTable tab;
  nvfp4_build_scale_table(tab, p.global_amax, p.global_scale_inv);  // overlaps the loads above
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    // Lane pairs are entirely inside or outside the tensor (nvec is even); all lanes shuffle.
    // Block amax with the half-precision min/max unit (absmax8_f32bits): +2 points of copy over the integer form
    // in the same run (bench/NOTES.md, session 5); the 16x16 tile kernel measured 0.7 points slower with it.
    uint32_t a = absmax8_f32bits(x[u]);
    a = max(a, __shfl_xor_sync(kFullMask, a, 1));  // non-negative fp32 bits order like their values, NaN last
    const Nvfp4BlockScale bs = nvfp4_block_scale(__uint_as_float(a), tab);
    // The unclamped encoder when every block of the warp allows it (warp-uniform: both forms give the same bits).
    const bool fast = __all_sync(kFullMask, e2m1_unclamped_ok(__uint_as_float(a), bs.rcp));
    if (v < p.nvec) {
      p.data[v] = fast ? quant8_e2m1<false>(x[u], bs.rcp, p.e2m1_m512) : quant8_e2m1(x[u], bs.rcp, p.e2m1_m512);
      if ((ww.lane & 1) == 0) p.scales[v >> 1] = static_cast<uint8_t>(bs.code);
    }
  }
}

}  // namespace tpcomm::quant::detail
