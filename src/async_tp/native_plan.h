// Host logic of the native async-TP GEMM (src/async_tp/native_gemm.h), separate from the CUTLASS kernel so it is
// tested on the CPU: the tile schedule (which output tile a CTA computes for each work index, which chunks of A a
// tile waits for, the pivot rotation) and the argument/support checks. The schedule functions are __host__
// __device__: the kernel's tile scheduler (native_scheduler.cuh) calls exactly these.
//
// Schedule. Output tiles are tile_m x tile_n; CTAs run in clusters of cluster_m (= 2) that share one n tile (B is
// multicast between them) and take consecutive m tiles of the visiting order. The visiting order of the m tiles is
// rotated: it starts at first_tile, the first m tile whose rows start at or after the pivot chunk's first row (so it
// lies in the pivot chunk whenever a chunk holds at least one tile: the local shard), and wraps around. A "group" is
// the cluster_m m tiles one cluster computes together; a work unit is (group, n tile). Work units are numbered band by
// band, a band being `band` consecutive groups of the visiting order, and inside a band n-major (raster along N): unit
// w of band b is group b*band + w % size, n tile w / size. Cluster i of G runs units i, i+G, i+2G, ... (a static
// persistent schedule: the same sequence on every warp of the CTA, only the A-loading warp waits on signals).
// Positions past the last m tile (tiles_m odd) are phantom tiles with an m index >= tiles_m: their rows lie beyond M,
// so TMA loads zeros, stores are clipped, and they wait for nothing.
#pragma once

#include <cstdint>
#include <string>

#include "async_tp/native_gemm.h"

#if defined(__CUDACC__)
#define TPCOMM_NATIVE_HD __host__ __device__ __forceinline__
#else
#define TPCOMM_NATIVE_HD inline
#endif

namespace tpcomm::detail {

// Tile configuration of one compiled native kernel (native_gemm.cu instantiates exactly these).
struct NativeTileShape {
  int m, n, k, cluster_m;
};
// bf16 default: 128x128x64 ping-pong (each consumer warpgroup computes a whole tile, the two alternate so one's
// epilogue overlaps the other's mainloop), cluster 2x1x1. Measured on nvidia-h200 against tile_config 1 (PyTorch's
// _async_input_mm configuration: 128x256x64 cooperative, cluster 2x1x1) and cuBLASLt, all signals preset, CUDA-event
// medians interleaved (tests/async_tp/native_gemm_gpu_test.cu, TimingVsCublasLtSignalsPreset): 4096x3584x8192
// 328.6 us vs 344.8 us (cuBLASLt 318.8: the 128x256 tiles make 3.4 waves on 132 SMs), 8192x14336x8192 2843 vs 2862 us
// (cuBLASLt 2797). A 256x128x64 cooperative tile measured no better than 128x256 (343.6 / 2726 us in its own run).
constexpr NativeTileShape kNativeTileBf16Pingpong{128, 128, 64, 2};
// bf16, tile_config 1: 128x256x64 cooperative (two consumer warpgroups of 64 rows each), cluster 2x1x1.
constexpr NativeTileShape kNativeTileBf16Coop{128, 256, 64, 2};
// FP8: 128x128 output tiles with a 128-deep K step (128 bytes of e4m3 per row, the 128-byte swizzle's width, as for
// bf16's 64). Not 128x256: CUTLASS's accurate FP8 mainloop keeps a second (per-k-block) accumulator set beside the
// fp32 one, and at 128x256 the two need 2 x 128 registers per consumer thread: ptxas spilled ~860 bytes per thread.
constexpr NativeTileShape kNativeTileFp8{128, 128, 128, 2};
// Default groups per raster band. On nvidia-h200 the band made no measurable difference for the 128x256 tiles at
// 4096x3584x8192 and 8192x14336x8192 (bands 1, 2, 4, 8, 16 within 1.5%, no order), so it is a middle value.
constexpr int kNativeDefaultBand = 4;

struct NativeSchedule {
  int64_t M = 0;           // rows of A / D
  int64_t chunk_rows = 0;  // M / num_chunks
  int32_t num_chunks = 1;
  int32_t tile_m = 128;
  int32_t cluster_m = 2;
  int32_t tiles_m = 0;     // ceil(M / tile_m)
  int32_t tiles_n = 0;     // ceil(N / tile_n)
  int32_t groups = 0;      // ceil(tiles_m / cluster_m)
  int32_t band = 1;        // groups per raster band, 1..groups
  int32_t first_tile = 0;  // the m tile visited first
  int32_t num_work = 0;    // groups * tiles_n (cluster work units)
};

struct NativeTile {
  int32_t m;  // m tile index; >= tiles_m for a phantom tile
  int32_t n;  // n tile index
};

// The tile that CTA `cta_in_cluster` of a cluster computes for work unit `work` (0 <= work < num_work).
TPCOMM_NATIVE_HD NativeTile native_tile_of(const NativeSchedule& s, int32_t work, int32_t cta_in_cluster) {
  const int32_t band_units = s.band * s.tiles_n;
  const int32_t b = work / band_units;
  const int32_t g0 = b * s.band;
  const int32_t rest = s.groups - g0;
  const int32_t size = rest < s.band ? rest : s.band;
  const int32_t within = work - b * band_units;
  NativeTile t;
  t.n = within / size;
  const int32_t g = g0 + (within - t.n * size);
  const int32_t j = g * s.cluster_m + cta_in_cluster;  // position in the visiting order
  t.m = j < s.tiles_m ? (s.first_tile + j) % s.tiles_m : j;
  return t;
}

// The chunks whose rows m tile `m_tile` (< tiles_m) covers: [*first, *last].
TPCOMM_NATIVE_HD void native_tile_chunks(const NativeSchedule& s, int32_t m_tile, int32_t* first, int32_t* last) {
  const int64_t r0 = static_cast<int64_t>(m_tile) * s.tile_m;
  int64_t r1 = r0 + s.tile_m;
  if (r1 > s.M) r1 = s.M;
  *first = static_cast<int32_t>(r0 / s.chunk_rows);
  *last = static_cast<int32_t>((r1 - 1) / s.chunk_rows);
}

// The schedule of a launch (params already validated). band <= 0 picks kNativeDefaultBand.
NativeSchedule make_native_schedule(int64_t M, int64_t N, int num_chunks, int pivot_chunk, const NativeTileShape& tile,
                                    int band);

// The tile shape the kernel for these params uses.
NativeTileShape native_tile_shape(const NativeAgGemmParams& p);

// Empty when p is well-formed, else "<field>: <what is wrong>" (launch throws kInvalidArgument with it).
std::string native_invalid_argument(const NativeAgGemmParams& p);
// For well-formed p: empty when a built kernel can run it (device aside), else the reason (kUnsupported).
std::string native_unsupported_host(const NativeAgGemmParams& p);

}  // namespace tpcomm::detail
