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

// ---- persistent, software-pipelined tile loop ---------------------------------------------------------------------
// One-tile-per-block kernels run load -> convert -> store with nothing in flight while they convert, and their last
// wave leaves most SMs idle. The persistent form keeps a grid of (blocks per SM x SMs) blocks; each block walks the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ... and, as soon as it has taken tile i out of shared memory into
// registers, issues the cp.async loads of tile i + gridDim.x into the same shared stage, so the next tile's HBM
// reads overlap this tile's conversion and stores.
//
// The stage is thread-private: thread tid's chunk i lives at stage[i * kTileThreads + tid] (a warp reads 512
// contiguous bytes per instruction: conflict-free) and only that thread writes (cp.async) and reads it, so the
// stage needs no barrier; cp.async.wait_group 0 makes the thread's own copies visible to it. Write-after-read (the
// next cp.async overwrites what this thread just read): the shared-memory address of the next copies is made to
// depend on every register just loaded (an XOR of them, masked with a zero the compiler cannot see), so the copies
// cannot be issued before all of those shared loads have returned.
constexpr int kStageBytes = kRowsPerThread * kTileThreads * 16;  // 32 KiB per block

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

// Issues the thread's 16 chunks of tile t into its stage slots (out-of-range rows/columns read as +0, like
// load_tile) and commits them as one group. `in` points at the tile's expert.
__device__ __forceinline__ void prefetch_tile(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                              const TileCoord& t, const ThreadSlot& s, uint32_t slot_saddr) {
  const int64_t col = t.k0 + 8 * s.c;
  const bool col_ok = col < cols;
  const int64_t r0 = t.n0 + s.rl0;
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const bool ok = col_ok && r0 + i < rows;
    cp_async16(slot_saddr + static_cast<uint32_t>(i * kTileThreads * 16), ok ? in + (r0 + i) * cols + col : in,
               ok ? 16u : 0u);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// The persistent loop over the tiles of an (experts, rows, cols) input; body(tile, t, x) gets the tile's 16 x 8
// bf16 of this thread in registers (as load_tile gives them) and may use __syncthreads(); the loop adds one barrier
// between tiles so that a body's shared buffers can be reused.
template <class Body>
__device__ __forceinline__ void for_each_tile_pipelined(const uint16_t* __restrict__ in, int64_t rows, int64_t cols,
                                                        int64_t col_tiles, int64_t tiles_per_expert, int64_t ntiles,
                                                        Body&& body) {
  extern __shared__ __align__(16) uint4 tile_stage[];
  const ThreadSlot s = thread_slot();
  const uint32_t slot = static_cast<uint32_t>(__cvta_generic_to_shared(tile_stage)) + threadIdx.x * 16u;
  const uint32_t zero = opaque_zero();
  const int64_t per_expert = rows * cols;
  int64_t tile = blockIdx.x;
  if (tile >= ntiles) return;
  {
    const TileCoord t = tile_coord(tile, col_tiles, tiles_per_expert);
    prefetch_tile(in + t.e * per_expert, rows, cols, t, s, slot);
  }
  for (bool first = true; tile < ntiles; tile += gridDim.x, first = false) {
    if (!first) __syncthreads();
    uint4 x[kRowsPerThread];
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    uint32_t dep = 0;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      x[i] = tile_stage[i * kTileThreads + threadIdx.x];
      dep ^= x[i].x;
    }
    const int64_t next = tile + gridDim.x;
    if (next < ntiles) {
      const TileCoord tn = tile_coord(next, col_tiles, tiles_per_expert);
      prefetch_tile(in + tn.e * per_expert, rows, cols, tn, s, slot + (dep & zero));
    }
    body(tile, tile_coord(tile, col_tiles, tiles_per_expert), x);
  }
}

}  // namespace tpcomm::quant::detail
