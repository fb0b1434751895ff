// The 128 x 128 tile every block-scaled quantization kernel works on (MXFP8, NVFP4, FP8 1x128 / 128x128).
//
// A block owns rows [n0, n0+128) x columns [k0, k0+128) of one (rows x cols) bf16 matrix (one expert of a 3-D
// tensor). Every thread holds one 16-byte column chunk (8 columns, k0 + 8c) of kR consecutive rows; a warp covers
// one 32-row group. Two mappings (TileMap<kR>):
//   * kR = 16, 128 threads (4 warps): warp w = row group w, lane l: c = l % 16, rows 32w + 16(l / 16) + i.
//     A warp's load instruction reads 2 rows x 256 contiguous bytes; a 16-row group (NVFP4 16x16) is one thread.
//   * kR = 8, 256 threads (8 warps): warp w = row group w % 4 and column half w / 4, lane l: c = 8(w / 4) + l % 8,
//     rows 32(w % 4) + 8(l / 8) + i. A load instruction reads 4 rows x 128 contiguous bytes. Half the registers
//     per thread for the tile, twice the warps per tile: the form for the kernels whose register count kept
//     occupancy low (bench/NOTES.md, session 6).
// In both: all kR loads of a thread are issued before the first use; a 32-row group (MXFP8 colwise block) is
// one warp (kR rows in-thread plus shuffles across the lanes stacked along rows); 1xG row blocks (G = 16, 32; and
// 128 for kR = 16) are G/8 adjacent lanes (transpose-reduced, quant_common.cuh).
// Tiles are numbered over all experts at once (no per-expert launch or descriptor): tile t covers column tile
// t % col_tiles of row tile t / col_tiles, and row tiles never straddle an expert (tiles_per_expert =
// ceil(rows/128)), so E = 1 and E = 128 run the same code with the same efficiency.
#pragma once

#include <cstdint>

#include "quantize/fast_div.h"
#include "quantize/quant_common.cuh"

namespace tpcomm::quant::detail {

constexpr int kTileRows = 128;
constexpr int kTileCols = 128;

template <int kR>
struct TileMap {
  static_assert(kR == 16 || kR == 8, "rows per thread: 16 or 8");
  static constexpr int kRows = kR;                                   // rows per thread
  static constexpr int kThreads = kTileRows * kTileCols / (8 * kR);  // 128 or 256
  static constexpr int kLaneCols = kR;  // lanes of a warp along the columns (16 B each): 16 (256 B) or 8 (128 B)
  static constexpr int kStageBytes = kR * kThreads * 16;              // the tile: 32 KiB
};

// The original mapping's names, for the kernels that only use it (FP8 1x128 needs 16 lanes per row).
constexpr int kTileThreads = TileMap<16>::kThreads;
constexpr int kRowsPerThread = 16;

struct TileCoord {
  int64_t e;   // expert
  int64_t n0;  // first row of the tile inside its expert
  int64_t k0;  // first column
};

// Tile numbers, col_tiles and tiles_per_expert are < 2^31 (a larger tensor would exceed any GPU's memory by
// orders of magnitude), so the divisions are 32-bit (a 64-bit division is a long software sequence).
__device__ __forceinline__ TileCoord tile_coord(int64_t tile, int64_t col_tiles, int64_t tiles_per_expert) {
  TileCoord t;
  const uint32_t tl = static_cast<uint32_t>(tile), ct = static_cast<uint32_t>(col_tiles);
  const uint32_t tpe = static_cast<uint32_t>(tiles_per_expert);
  const uint32_t rt = tl / ct;
  t.k0 = static_cast<int64_t>(tl - rt * ct) * kTileCols;
  const uint32_t e = rt / tpe;
  t.e = e;
  t.n0 = static_cast<int64_t>(rt - e * tpe) * kTileRows;
  return t;
}

// The same with the launch's divisors precomputed on the host (fast_div.h): a multiply-high and a shift per
// division instead of a software division (the MXFP8 kernels).
__device__ __forceinline__ TileCoord tile_coord(int64_t tile, const TileDivs& dv) {
  TileCoord t;
  const uint32_t tl = static_cast<uint32_t>(tile);
  const uint32_t rt = dv.col_tiles.div(tl);
  t.k0 = static_cast<int64_t>(tl - rt * dv.col_tiles.d) * kTileCols;
  const uint32_t e = dv.tiles_per_expert.div(rt);
  t.e = e;
  t.n0 = static_cast<int64_t>(rt - e * dv.tiles_per_expert.d) * kTileRows;
  return t;
}

struct ThreadSlot {
  int g;     // 32-row group of the tile (= the warp for kR = 16)
  int lane;
  int c;     // 16-byte column chunk 0..15
  int h;     // position of the thread's kR rows inside the 32-row group: 0..32/kR-1
  int rl0;   // first tile-local row of the thread: 32g + kR h
};

template <int kR = 16>
__device__ __forceinline__ ThreadSlot thread_slot() {
  ThreadSlot s;
  const int w = static_cast<int>(threadIdx.x) >> 5;
  s.lane = static_cast<int>(threadIdx.x) & 31;
  if constexpr (kR == 16) {
    s.g = w;
    s.c = s.lane & 15;
    s.h = s.lane >> 4;
  } else {
    s.g = w & 3;
    s.c = 8 * (w >> 2) + (s.lane & 7);
    s.h = s.lane >> 3;
  }
  s.rl0 = s.g * 32 + s.h * kR;
  return s;
}

// Max over the lanes of a 32-row group that hold the same columns (lane bits >= log2(kLaneCols)).
template <int kR>
__device__ __forceinline__ uint32_t group_rows_max_u16x2(uint32_t v) {
#pragma unroll
  for (int m = TileMap<kR>::kLaneCols; m < 32; m <<= 1) v = max_u16x2(v, __shfl_xor_sync(kFullMask, v, m));
  return v;
}

// Loads the thread's kR x 8 bf16 (rows outside [0, rows) or columns outside [0, cols) read as +0).
// `in` points at the (rows x cols) matrix of the tile's expert; cols % 8 == 0.
// kFull: the launcher checked rows % 128 == 0 and cols % 128 == 0, so every tile lies inside the matrix: no bounds
// checks, no zero fill, and the row addresses are one base plus i * cols. (The checked form spends about a tenth of
// the MXFP8 "both" kernel's instructions on 64-bit row addresses, compares and selects; bench/NOTES.md session 6.)
template <int kR, bool kFull = false>
__device__ __forceinline__ void load_tile(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                          const TileCoord& t, const ThreadSlot& s, uint4 (&x)[kR]) {
  if constexpr (kFull) {
    const uint16_t* src = in + (t.n0 + s.rl0) * cols + t.k0 + 8 * s.c;
#pragma unroll
    for (int i = 0; i < kR; ++i) x[i] = ld_stream(src + i * cols);
    return;
  }
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < cols;
  const int64_t r0 = t.n0 + s.rl0;
#pragma unroll
  for (int i = 0; i < kR; ++i) {
    if (col_ok && r0 + i < rows) {
      x[i] = ld_stream(in + (r0 + i) * cols + col);
    } else {
      x[i] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// ---- persistent, software-pipelined tile loop ---------------------------------------------------------------------
// One-tile-per-block kernels run load -> convert -> store with nothing in flight while they convert, and their last
// wave leaves most SMs idle. The persistent form keeps a grid of (blocks per SM x SMs) blocks; each block walks the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ... and, as soon as it has taken tile i out of shared memory into
// registers, issues the cp.async loads of tile i + gridDim.x into the same shared stage, so the next tile's HBM
// reads overlap this tile's conversion and stores.
//
// The stage is thread-private: thread tid's chunk i lives at stage[i * threads + tid] (a warp reads 512
// contiguous bytes per instruction: conflict-free) and only that thread writes (cp.async) and reads it, so the
// stage needs no barrier; cp.async.wait_group 0 makes the thread's own copies visible to it. Write-after-read (the
// next cp.async overwrites what this thread just read): the shared-memory address of the next copies is made to
// depend on every register just loaded (an XOR of them, masked with a zero the compiler cannot see), so the copies
// cannot be issued before all of those shared loads have returned.
constexpr int kStageBytes = TileMap<16>::kStageBytes;  // 32 KiB per block, either mapping
static_assert(TileMap<8>::kStageBytes == kStageBytes);

// 16-byte cp.async (L1 bypass) with zero fill: `bytes` is 16 or 0 (0 writes 16 zero bytes and reads nothing).
// No L2 cache-policy operand: with `.L2::cache_hint` (an evict-first policy from createpolicy) and the 249-register
// MXFP8 "both" body, ptxas 13.0 emitted the cp.async with its memory descriptor in an unset, odd-numbered uniform
// register (desc[UR1]) and the kernel died with "illegal instruction" on its first cp.async (compute-sanitizer,
// session 5; the crash left unexplained under "Tried 1" in bench/NOTES.md). Without the operand the code is correct.
__device__ __forceinline__ void cp_async16(uint32_t saddr, const void* g, uint32_t bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr), "l"(g), "r"(bytes) : "memory");
}
// 0 at run time (the dynamic shared memory of these kernels is < 1 MiB), opaque to the compiler.
__device__ __forceinline__ uint32_t opaque_zero() {
  uint32_t v;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
  return v >> 20;
}

// Issues the thread's kR chunks of tile t into its stage slots (out-of-range rows/columns read as +0, like
// load_tile) and commits them as one group. `in` points at the tile's expert. kFull: as load_tile.
template <int kR, bool kFull>
__device__ __forceinline__ void prefetch_tile(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                              const TileCoord& t, const ThreadSlot& s, uint32_t slot_saddr) {
  if constexpr (kFull) {
    const uint16_t* src = in + (t.n0 + s.rl0) * cols + t.k0 + 8 * s.c;
#pragma unroll
    for (int i = 0; i < kR; ++i)
      cp_async16(slot_saddr + static_cast<uint32_t>(i * TileMap<kR>::kThreads * 16), src + i * cols, 16u);
    asm volatile("cp.async.commit_group;" ::: "memory");
    return;
  }
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < cols;
  const int64_t r0 = t.n0 + s.rl0;
#pragma unroll
  for (int i = 0; i < kR; ++i) {
    const bool ok = col_ok && r0 + i < rows;
    cp_async16(slot_saddr + static_cast<uint32_t>(i * TileMap<kR>::kThreads * 16),
               ok ? in + (r0 + i) * cols + col : in, ok ? 16u : 0u);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// The persistent loop over the tiles of an (experts, rows, cols) input; body(tile, t, x) gets the tile's kR x 8
// bf16 of this thread in registers (as load_tile gives them) and may use __syncthreads(); the loop adds one barrier
// between tiles so that a body's shared buffers can be reused. (Alternating two sets of shared buffers instead, so
// that this barrier can go, measured within noise: session 6, bench/NOTES.md.)
template <int kR, bool kFull, class Body>
__device__ __forceinline__ void for_each_tile_pipelined(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                                        const TileDivs& dv, int64_t ntiles, Body&& body) {
  extern __shared__ __align__(16) uint4 tile_stage[];
  const ThreadSlot s = thread_slot<kR>();
  const uint32_t slot = static_cast<uint32_t>(__cvta_generic_to_shared(tile_stage)) + threadIdx.x * 16u;
  const uint32_t zero = opaque_zero();
  const int64_t per_expert = rows * cols;
  int64_t tile = blockIdx.x;
  if (tile >= ntiles) return;
  // Coordinates of the tile being processed; those of the next one are computed once, for its prefetch.
  TileCoord tc = tile_coord(tile, dv);
  prefetch_tile<kR, kFull>(in + tc.e * per_expert, rows, cols, tc, s, slot);
  for (bool first = true; tile < ntiles; tile += gridDim.x, first = false) {
    if (!first) __syncthreads();
    uint4 x[kR];
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    uint32_t dep = 0;
#pragma unroll
    for (int i = 0; i < kR; ++i) {
      x[i] = tile_stage[i * TileMap<kR>::kThreads + threadIdx.x];
      dep ^= x[i].x;
    }
    const int64_t next = tile + gridDim.x;
    TileCoord tn = tc;
    if (next < ntiles) {
      tn = tile_coord(next, dv);
      prefetch_tile<kR, kFull>(in + tn.e * per_expert, rows, cols, tn, s, slot + (dep & zero));
    }
    body(tile, tc, x);
    tc = tn;
  }
}

}  // namespace tpcomm::quant::detail
