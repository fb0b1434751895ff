// The 128 x 128 tile every block-scaled quantization kernel works on (MXFP8, NVFP4, FP8 1x128 / 128x128).
//
// A block of 128 threads (4 warps) owns rows [n0, n0+128) x columns [k0, k0+128) of one (rows x cols) bf16
// matrix (one expert of a 3-D tensor). Thread (warp w, lane l) owns the 8 columns k0 + 8c (c = l % 16, one
// 16-byte vector) of the 16 rows n0 + 32w + 16h + i (h = l / 16, i = 0..15):
//   * a warp's load instruction reads 2 rows x 256 contiguous bytes (fully coalesced), and all 16 loads of a
//     thread are issued before the first use (16 x 16 B in flight per thread);
//   * a 32-row group (MXFP8 colwise block) is one warp: 16 rows in-thread plus one shuffle (xor 16);
//   * a 16-row group (NVFP4 16x16 block) is one thread;
//   * 1xG row blocks (G = 16, 32, 128) are G/8 adjacent lanes (transpose-reduced, quant_common.cuh).
// Tiles are numbered over all experts at once (no per-expert launch or descriptor): tile t covers column tile
// t % col_tiles of row tile t / col_tiles, and row tiles never straddle an expert (tiles_per_expert =
// ceil(rows/128)), so E = 1 and E = 128 run the same code with the same efficiency.
#pragma once

#include <cstdint>

#include "quantize/quant_common.cuh"

namespace tpcomm::quant::detail {

constexpr int kTileRows = 128;
constexpr int kTileCols = 128;
constexpr int kTileThreads = 128;
constexpr int kRowsPerThread = 16;

struct TileCoord {
  int64_t e;   // expert
  int64_t n0;  // first row of the tile inside its expert
  int64_t k0;  // first column
};

__device__ __forceinline__ TileCoord tile_coord(int64_t tile, int64_t col_tiles, int64_t tiles_per_expert) {
  TileCoord t;
  const int64_t rt = tile / col_tiles;
  t.k0 = (tile - rt * col_tiles) * kTileCols;
  t.e = rt / tiles_per_expert;
  t.n0 = (rt - t.e * tiles_per_expert) * kTileRows;
  return t;
}

struct ThreadSlot {
  int w;     // warp = 32-row group of the tile
  int lane;
  int c;     // 16-byte column chunk 0..15
  int h;     // half of the 32-row group
  int rl0;   // first tile-local row of the thread: 32w + 16h
};

__device__ __forceinline__ ThreadSlot thread_slot() {
  ThreadSlot s;
  s.w = static_cast<int>(threadIdx.x) >> 5;
  s.lane = static_cast<int>(threadIdx.x) & 31;
  s.c = s.lane & 15;
  s.h = s.lane >> 4;
  s.rl0 = s.w * 32 + s.h * 16;
  return s;
}

// Loads the thread's 16 x 8 bf16 (rows outside [0, rows) or columns outside [0, cols) read as +0).
// `in` points at the (rows x cols) matrix of the tile's expert; cols % 8 == 0.
__device__ __forceinline__ void load_tile(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                          const TileCoord& t, const ThreadSlot& s, uint4 (&x)[kRowsPerThread]) {
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < cols;
  const int64_t r0 = t.n0 + s.rl0;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    if (col_ok && r0 + i < rows) {
      x[i] = ld_stream(in + (r0 + i) * cols + col);
    } else {
      x[i] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

}  // namespace tpcomm::quant::detail
