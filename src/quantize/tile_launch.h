// Host side of the 128 x 128 tile kernels (tile.cuh): grid sizing of the persistent, pipelined form.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "common/check.h"
#include "common/pdl.h"
#include "quantize/tile.cuh"
#include "quantize/validate.h"

namespace tpcomm::quant::detail {

// Measurement switch (A/B in bench/NOTES.md): TPCOMM_QUANT_ONE_TILE_PER_BLOCK=1 launches the one-tile-per-block
// kernel where the persistent one is the default (MXFP8 rowwise + colwise). Read once.
inline bool one_tile_per_block() {
  static const bool v = [] {
    const char* e = std::getenv("TPCOMM_QUANT_ONE_TILE_PER_BLOCK");
    return e != nullptr && e[0] == '1';
  }();
  return v;
}

// Resident blocks per SM of a persistent tile kernel with its kStageBytes of dynamic shared memory (computed once
// per kernel; the opt-in is needed because static + dynamic shared memory can exceed 48 KiB).
template <auto Kernel>
int persistent_blocks_per_sm() {
  static const int n = [] {
    TPCOMM_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStageBytes));
    int b = 0;
    TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, Kernel, kTileThreads, kStageBytes));
    return std::max(b, 1);
  }();
  return n;
}

// Launches a persistent tile kernel: min(tiles, resident blocks) blocks, each walking tiles with stride gridDim.x.
template <auto Kernel, class Params>
void launch_persistent(const Params& kp, int64_t tiles, cudaStream_t stream) {
  const int64_t grid = std::min<int64_t>(tiles, int64_t(persistent_blocks_per_sm<Kernel>()) * sm_count());
  ::tpcomm::detail::launch_kernel_waves(Kernel, static_cast<unsigned>(grid), kTileThreads, kStageBytes, stream, kp);
}

}  // namespace tpcomm::quant::detail
