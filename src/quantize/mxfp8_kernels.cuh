// MXFP8 quantization: rowwise 1x32 and/or colwise 32x1 from one read of a 2-D (E = 1) or 3-D (E experts)
// bf16 tensor. Tile mapping: tile.cuh.
//
// Colwise output is column-major per expert (element (e, n, k) at e*N*K + k*N + n). The 128 x 128 tile is
// quantized in registers, written transposed into shared memory (16-byte chunks, XOR-swizzled so that both the
// transposed write and the row read are bank-conflict free) and stored as 4 full 128-byte lines per warp
// instruction: out[e][k][n0 .. n0+127] for each of the tile's columns k.
#pragma once

#include <cstdint>

#include "common/pdl.cuh"
#include "quantize/quant_common.cuh"
#include "quantize/tile.cuh"

namespace tpcomm::quant::detail {

struct Mxfp8KernelParams {
  const uint16_t* in;   // (experts, rows, cols) bf16
  int64_t rows;         // N
  int64_t cols;         // K
  uint8_t* row_data;
  uint8_t* row_scales;
  uint8_t* col_data;
  uint8_t* col_scales;
  bool swizzled;
  int64_t tiles;        // experts * ceil(N / 128) * ceil(K / 128)
  int64_t experts;
  TileDivs divs;        // (ceil(K / 128) column tiles, ceil(N / 128) row tiles per expert)
};

// One 128 x 128 tile whose bf16 the thread holds in x (tile.cuh layout, kR rows per thread).
// kFmt: 0 = e4m3, 1 = e5m2. kRow / kCol: which outputs to produce. kFull: every tile inside the tensor (load_tile).
template <int kFmt, bool kRceil, bool kRow, bool kCol, int kR, bool kFull>
__device__ __forceinline__ void mxfp8_tile(const Mxfp8KernelParams& p, const TileCoord& t, uint4 (&x)[kR]) {
  constexpr int kEmax = kFmt == 0 ? 8 : 15;
  constexpr int kThreads = TileMap<kR>::kThreads;
  const ThreadSlot s = thread_slot<kR>();
  const int64_t N = p.rows, K = p.cols;
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = kFull || col < K;

  // Colwise: transposed tile (16-byte chunk (k, n/16) at [k][(n/16) ^ ((k/8) & 7)]), scale bytes [k][group].
  __shared__ uint4 s_col[kCol ? kTileCols * 8 : 1];
  __shared__ uint32_t s_colsc[kCol ? kTileCols : 1];
  // Rowwise scale bytes [row][group of 32 columns].
  __shared__ uint32_t s_rowsc[kRow ? kTileRows : 1];

  // Colwise scale codes of the thread's 8 columns and its chunk slot in s_col (set when kCol).
  uint32_t code[8];
  int phys = 0;
  if constexpr (kCol) {
    // amax of each of the thread's 8 columns over its kR rows, then over the rest of the 32-row group.
    uint32_t a[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < kR; ++i) {
      a[0] = max_u16x2(a[0], abs2(x[i].x));
      a[1] = max_u16x2(a[1], abs2(x[i].y));
      a[2] = max_u16x2(a[2], abs2(x[i].z));
      a[3] = max_u16x2(a[3], abs2(x[i].w));
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) a[q] = group_rows_max_u16x2<kR>(a[q]);

#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t a16 = (j & 1) ? (a[j >> 1] >> 16) : (a[j >> 1] & 0xffffu);
      code[j] = e8m0_code<kRceil>(a16, kEmax);
    }
    // The thread's kR bytes of column k = 8c + j are rows 32g + kR h ..: 16-byte chunk n/16 = (32g + kR h) / 16,
    // and for kR = 8 the half (h & 1) of it. Swizzle (c & 7): for one j, the lanes of an instruction hit distinct
    // chunks of their 128-byte rows (conflict-free: 16 B per lane for kR = 16, 8 B per lane in 2 wavefronts for 8).
    const int chunk = kR == 16 ? 2 * s.g + s.h : 2 * s.g + (s.h >> 1);
    phys = chunk ^ (s.c & 7);
    // Colwise only here; rowwise + colwise converts both together below (each element unpacked once).
#pragma unroll
    for (int j = 0; j < (kRow ? 0 : 8); ++j) {
      const float m = e8m0_quant_multiplier(code[j]);
      uint32_t o[kR / 4];
#pragma unroll
      for (int q = 0; q < kR / 4; ++q) {
        const uint32_t lo = cvt2_fp8<kFmt>(__fmul_rn(bf16_elem(x[4 * q + 0], j), m),
                                           __fmul_rn(bf16_elem(x[4 * q + 1], j), m));
        const uint32_t hi = cvt2_fp8<kFmt>(__fmul_rn(bf16_elem(x[4 * q + 2], j), m),
                                           __fmul_rn(bf16_elem(x[4 * q + 3], j), m));
        o[q] = lo | (hi << 16);
      }
      if constexpr (kR == 16) {
        s_col[(8 * s.c + j) * 8 + phys] = make_uint4(o[0], o[1], o[2], o[3]);
      } else {
        reinterpret_cast<uint2*>(s_col)[((8 * s.c + j) * 8 + phys) * 2 + (s.h & 1)] = make_uint2(o[0], o[1]);
      }
    }
    if (!p.swizzled) {
      // Linear scales (E, N/32, K): 8 consecutive bytes per thread, 64 or 128 contiguous bytes per warp.
      if (s.h == 0 && (kFull || (col_ok && t.n0 + 32 * s.g < N))) {
        const int64_t g = t.e * (N / 32) + t.n0 / 32 + s.g;
        uint2 v;
        v.x = code[0] | (code[1] << 8) | (code[2] << 16) | (code[3] << 24);
        v.y = code[4] | (code[5] << 8) | (code[6] << 16) | (code[7] << 24);
        *reinterpret_cast<uint2*>(p.col_scales + g * K + col) = v;
      }
    } else if (s.h == 0) {
      // Rows/columns outside the tensor were loaded as zeros and get code 0, which is also the padding value.
      uint8_t* b = reinterpret_cast<uint8_t*>(s_colsc);
#pragma unroll
      for (int j = 0; j < 8; ++j) b[(8 * s.c + j) * 4 + s.g] = static_cast<uint8_t>(code[j]);
    }
  }

  if constexpr (kRow) {
    // Row amax over 32 columns = 4 adjacent lanes; after the transpose-reduction lane q (= lane & 3) holds the
    // amax of the kR/4 rows transpose_reduce_row<kR, 4>(q, j), j < kR/4: row i of the thread is in lane
    // q = 2 ((i / (kR/2)) & 1) + ((i / (kR/4)) & 1), slot i % (kR/4).
    constexpr int kPer = kR / 4;
    uint32_t ra[kR];
#pragma unroll
    for (int i = 0; i < kR; ++i) ra[i] = fold16(absmax8_packed(x[i]));
    transpose_reduce_max<kR, 4>(ra, s.lane);
    const int q = s.lane & 3;
    uint32_t mine = 0;
#pragma unroll
    for (int j = 0; j < kPer; ++j) mine |= e8m0_code<kRceil>(ra[j], kEmax) << (8 * j);
    {
      uint8_t* b = reinterpret_cast<uint8_t*>(s_rowsc);
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int r = s.rl0 + transpose_reduce_row<kR, 4>(q, j);
        b[r * 4 + (s.c >> 2)] = static_cast<uint8_t>(mine >> (8 * j));
      }
    }
    uint32_t codes[4];
#pragma unroll
    for (int src = 0; src < 4; ++src) codes[src] = __shfl_sync(kFullMask, mine, (s.lane & ~3) | src);
    uint8_t* out = p.row_data + (t.e * N + t.n0 + s.rl0) * K + col;
    auto row_code = [&](int i) {
      const int src = (((i / (kR / 2)) & 1) << 1) | ((i / kPer) & 1);
      return (codes[src] >> (8 * (i % kPer))) & 0xffu;
    };
    if constexpr (!kCol) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const uint2 v = quant8_fp8<kFmt>(x[i], e8m0_quant_multiplier(row_code(i)));
        if (kFull || (col_ok && t.n0 + s.rl0 + i < N)) *reinterpret_cast<uint2*>(out + i * K) = v;
      }
    } else {
      // Rowwise + colwise from one unpacking of each element: rows i, i+1 at a time; for the bf16 pair of word w
      // (columns 2w, 2w+1) of both rows, the rowwise pairs are (row i: 2w, 2w+1) and (row i+1: 2w, 2w+1) with the
      // rows' multipliers, the colwise pairs (column 2w: rows i, i+1) and (column 2w+1: rows i, i+1) with the
      // columns' multipliers. Column j's kR bytes accumulate in oc[j] (byte r of word r / 4 = row r), as the
      // colwise-only loop above builds them. Same products and conversions as the single-output paths, so the
      // same bits; 4 instead of 8 unpacks per 4 elements.
      float mc[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) mc[j] = e8m0_quant_multiplier(code[j]);
      uint32_t oc[8][kR / 4];
#pragma unroll
      for (int i = 0; i < kR; i += 2) {
        const float mr0 = e8m0_quant_multiplier(row_code(i));
        const float mr1 = e8m0_quant_multiplier(row_code(i + 1));
        uint32_t r0[2], r1[2];
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const uint32_t wa = word_of(x[i], w), wb = word_of(x[i + 1], w);
          const float alo = bf16_lo(wa), ahi = bf16_hi(wa), blo = bf16_lo(wb), bhi = bf16_hi(wb);
          const uint32_t ra = cvt2_fp8<kFmt>(__fmul_rn(alo, mr0), __fmul_rn(ahi, mr0));
          const uint32_t rb = cvt2_fp8<kFmt>(__fmul_rn(blo, mr1), __fmul_rn(bhi, mr1));
          const uint32_t clo = cvt2_fp8<kFmt>(__fmul_rn(alo, mc[2 * w]), __fmul_rn(blo, mc[2 * w]));
          const uint32_t chi = cvt2_fp8<kFmt>(__fmul_rn(ahi, mc[2 * w + 1]), __fmul_rn(bhi, mc[2 * w + 1]));
          if (w & 1) {
            r0[w >> 1] |= ra << 16;
            r1[w >> 1] |= rb << 16;
          } else {
            r0[w >> 1] = ra;
            r1[w >> 1] = rb;
          }
          if ((i >> 1) & 1) {
            oc[2 * w][i >> 2] |= clo << 16;
            oc[2 * w + 1][i >> 2] |= chi << 16;
          } else {
            oc[2 * w][i >> 2] = clo;
            oc[2 * w + 1][i >> 2] = chi;
          }
        }
        if (kFull || (col_ok && t.n0 + s.rl0 + i < N))
          *reinterpret_cast<uint2*>(out + i * K) = make_uint2(r0[0], r0[1]);
        if (kFull || (col_ok && t.n0 + s.rl0 + i + 1 < N))
          *reinterpret_cast<uint2*>(out + (i + 1) * K) = make_uint2(r1[0], r1[1]);
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if constexpr (kR == 16) {
          s_col[(8 * s.c + j) * 8 + phys] = make_uint4(oc[j][0], oc[j][1], oc[j][2], oc[j][3]);
        } else {
          reinterpret_cast<uint2*>(s_col)[((8 * s.c + j) * 8 + phys) * 2 + (s.h & 1)] = make_uint2(oc[j][0], oc[j][1]);
        }
      }
    }
  }

  __syncthreads();  // shared transposed tile and staged scale bytes are complete

  const int tid = static_cast<int>(threadIdx.x);
  if constexpr (kCol) {
    const int cc = tid & 7;
    uint8_t* base = p.col_data + t.e * N * K;
#pragma unroll
    for (int pass = 0; pass < kTileCols * 8 / kThreads; ++pass) {
      const int kl = pass * (kThreads / 8) + (tid >> 3);
      const uint4 v = s_col[kl * 8 + (cc ^ ((kl >> 3) & 7))];
      const int64_t k = t.k0 + kl;
      const int64_t n = t.n0 + 16 * cc;
      if (kFull || (k < K && n < N)) *reinterpret_cast<uint4*>(base + k * N + n) = v;
    }
    if (p.swizzled && (kThreads == kTileCols || tid < kTileCols)) {
      // Per expert: transposed scale matrix [K rows][N/32 cols], padded to [roundup(K,128)][roundup(N/32,4)].
      const int64_t k = t.k0 + tid;
      const int64_t kp = (K + 127) / 128 * 128;
      const int64_t gtiles = (N / 32 + 3) / 4;
      if (k < kp) {
        const uint32_t v = (kFull || k < K) ? s_colsc[tid] : 0u;
        const int64_t off = t.e * kp * gtiles * 4 + swz_offset(k, t.n0 / 32, gtiles);
        *reinterpret_cast<uint32_t*>(p.col_scales + off) = v;
      }
    }
  }
  if constexpr (kRow) {
    if (kThreads == kTileRows || tid < kTileRows) {
      const int64_t n = t.n0 + tid;
      const int64_t gk = K / 32;
      const int64_t kg0 = t.k0 / 32;
      const uint32_t v = s_rowsc[tid];
      if (p.swizzled) {
        const int64_t np = (N + 127) / 128 * 128;
        const int64_t gtiles = (gk + 3) / 4;
        if (n < np && kg0 < gtiles * 4) {
          const int64_t off = t.e * np * gtiles * 4 + swz_offset(n, kg0, gtiles);
          *reinterpret_cast<uint32_t*>(p.row_scales + off) = v;
        }
      } else if (kFull || n < N) {
        uint8_t* dst = p.row_scales + (t.e * N + n) * gk + kg0;
        if ((gk & 3) == 0) {
          if (kg0 < gk) *reinterpret_cast<uint32_t*>(dst) = v;
        } else {
#pragma unroll
          for (int g = 0; g < 4; ++g)
            if (kg0 + g < gk) dst[g] = static_cast<uint8_t>(v >> (8 * g));
        }
      }
    }
  }
}

// Resident blocks per SM each kernel is compiled for (__launch_bounds__), i.e. its register cap:
// kR = 16: rowwise + colwise holds the tile and both outputs in registers: 2 blocks (230 registers, no spills;
// at 3 blocks it spilled); one output: 5 blocks (<= 102 registers). kR = 8 (256 threads): 2 blocks for
// both outputs (<= 128 registers), 4 for one (<= 64).
template <bool kBoth, int kR>
constexpr int mxfp8_min_blocks() {
  return kR == 16 ? (kBoth ? 2 : 5) : (kBoth ? 2 : 4);
}

// One tile per block (grid = tiles).
template <int kFmt, bool kRceil, bool kRow, bool kCol, int kR, bool kFull>
__global__ void __launch_bounds__(TileMap<kR>::kThreads, (mxfp8_min_blocks<kRow && kCol, kR>()))
    mxfp8_quantize_kernel(const __grid_constant__ Mxfp8KernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  const TileCoord t = tile_coord(blockIdx.x, p.divs);
  uint4 x[kR];
  load_tile<kR, kFull>(p.in + t.e * p.rows * p.cols, p.rows, p.cols, t, thread_slot<kR>(), x);
  mxfp8_tile<kFmt, kRceil, kRow, kCol, kR, kFull>(p, t, x);
}

// Persistent and pipelined (tile.cuh), dynamic shared memory kStageBytes plus the 18 KiB static transpose buffer of
// mxfp8_tile; used for rowwise + colwise only (bench/NOTES.md: it lost for the single-output kernels). 2 blocks per
// SM: 243-254 registers for kR = 16, 123-128 for kR = 8 (session 7), no spills (3-block builds spill: 224 bytes for kR = 16, which ran
// at 54% of copy; 176-208 bytes for kR = 8). Session 5: the colwise data goes through the shared-memory transpose
// (full 128-byte line stores) instead of straight from registers (32-byte segments): 72 -> 78-80% of copy with
// linear scales (bench/NOTES.md).
template <int kFmt, bool kRceil, bool kRow, bool kCol, int kR, bool kFull>
__global__ void __launch_bounds__(TileMap<kR>::kThreads, 2)
    mxfp8_quantize_persistent_kernel(const __grid_constant__ Mxfp8KernelParams p) {
  ::tpcomm::detail::pdl_prologue();
  for_each_tile_pipelined<kR, kFull>(p.in, p.rows, p.cols, p.divs, p.tiles,
                                     [&](int64_t, const TileCoord& t, uint4(&x)[kR]) {
                                       mxfp8_tile<kFmt, kRceil, kRow, kCol, kR, kFull>(p, t, x);
                                     });
}

// ---- Rowwise only, linear scales: elementwise kernel ---------------------------------------------------------------
// With K % 32 == 0 the (E*N, K) row-major input is a flat sequence of 1x32 blocks, block b = 4 consecutive 16-byte
// vectors, and its linear scale byte is row_scales[b]. Warp-window pattern (quant_common.cuh): the 4 lanes of a
// block combine their amax with two shuffles. No tile, no shared memory, no __syncthreads: the shape of the
// cast21 probe (96% of the copy rate). Measured on nvidia-h200-x2: 87.6-90.1% of the copy rate on the large
// shapes vs 77.8-81.5% for the 128 x 128 tile kernel (bench/NOTES.md).
struct Mxfp8RowwiseParams {
  const uint4* in;     // nvec 16-byte vectors of bf16
  int64_t nvec;        // multiple of 4
  uint2* data;         // 8 fp8 bytes per input vector
  uint8_t* scales;     // one byte per 4 vectors
};

template <int kFmt, bool kRceil>
__global__ void __launch_bounds__(kWindowThreads) mxfp8_rowwise_kernel(const __grid_constant__ Mxfp8RowwiseParams p) {
  ::tpcomm::detail::pdl_prologue();
  constexpr int kEmax = kFmt == 0 ? 8 : 15;
  const WarpWindow ww = warp_window();
  uint4 x[kWindowU];
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    x[u] = v < p.nvec ? ld_stream(p.in + v) : make_uint4(0u, 0u, 0u, 0u);
  }
#pragma unroll
  for (int u = 0; u < kWindowU; ++u) {
    const int64_t v = ww.vec(u);
    // Groups of 4 lanes are entirely inside or outside the tensor (nvec % 4 == 0); all lanes shuffle.
    uint32_t a = fold16(absmax8_packed(x[u]));
    a = max(a, __shfl_xor_sync(kFullMask, a, 1));
    a = max(a, __shfl_xor_sync(kFullMask, a, 2));
    const uint32_t code = e8m0_code<kRceil>(a, kEmax);
    if (v < p.nvec) {
      p.data[v] = quant8_fp8<kFmt>(x[u], e8m0_quant_multiplier(code));
      if ((ww.lane & 3) == 0) p.scales[v >> 2] = static_cast<uint8_t>(code);
    }
  }
}

}  // namespace tpcomm::quant::detail
