// Host side of the 128 x 128 tile kernels (tile.cuh): grid sizing of the persistent, pipelined form.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/check.h"
#include "common/pdl.h"
#include "tpcomm/error.h"
#include "quantize/tile.cuh"
#include "quantize/validate.h"

namespace tpcomm::quant::detail {

// Measurement switch (A/B in bench/NOTES.md): TPCOMM_QUANT_ONE_TILE_PER_BLOCK=1 launches the one-tile-per-block
// kernel where the persistent one is the default (MXFP8 rowwise + colwise; NVFP4 16x16 beyond two waves). Read once.
inline bool one_tile_per_block() {
  static const bool v = [] {
    const char* e = std::getenv("TPCOMM_QUANT_ONE_TILE_PER_BLOCK");
    return e != nullptr && e[0] == '1';
  }();
  return v;
}

// Measurement switch (A/B in bench/NOTES.md, session 6): TPCOMM_QUANT_TILE_ROWS=16 or 8 launches the kernels
// that exist in both tile mappings (tile.cuh: 16 rows x 128 threads, 8 rows x 256 threads) in that mapping;
// unset, each launcher uses its measured default. Read once; any other value is an error.
inline int tile_rows_override() {
  static const int v = [] {
    const char* e = std::getenv("TPCOMM_QUANT_TILE_ROWS");
    if (e == nullptr || e[0] == '\0') return 0;
    const std::string s(e);
    if (s == "16") return 16;
    if (s == "8") return 8;
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_QUANT_TILE_ROWS: '" + s + "' is not 8 or 16");
  }();
  return v;
}
// Whether every 128 x 128 tile of a (rows x cols) matrix lies inside it (load_tile's kFull), unless
// TPCOMM_QUANT_CHECKED_TILES=1 (measurement switch: the bounds-checked form everywhere).
inline bool full_tiles(int64_t rows, int64_t cols) {
  static const bool checked = [] {
    const char* e = std::getenv("TPCOMM_QUANT_CHECKED_TILES");
    return e != nullptr && e[0] == '1';
  }();
  return !checked && rows % kTileRows == 0 && cols % kTileCols == 0;
}
inline int tile_rows(int default_rows) {
  const int o = tile_rows_override();
  return o != 0 ? o : default_rows;
}

// Resident blocks per SM of a persistent tile kernel of kThreads threads with its kStageBytes of dynamic shared
// memory (computed once per kernel; the opt-in is needed because static + dynamic shared memory can exceed 48 KiB).
template <auto Kernel, int kThreads>
int persistent_blocks_per_sm() {
  static const int n = [] {
    TPCOMM_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStageBytes));
    int b = 0;
    TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, Kernel, kThreads, kStageBytes));
    if (b < 1) throw Error(ErrorCode::kUnsupported, "persistent quantize kernel: no block fits an SM on this device");
    return b;
  }();
  return n;
}

// Launches a persistent tile kernel: min(tiles, resident blocks) blocks, each walking tiles with stride gridDim.x.
template <auto Kernel, int kThreads, class Params>
void launch_persistent(const Params& kp, int64_t tiles, cudaStream_t stream) {
  const int64_t grid =
      std::min<int64_t>(tiles, int64_t(persistent_blocks_per_sm<Kernel, kThreads>()) * sm_count());
  ::tpcomm::detail::launch_kernel(Kernel, static_cast<unsigned>(grid), kThreads, kStageBytes, stream, kp);
}

}  // namespace tpcomm::quant::detail
