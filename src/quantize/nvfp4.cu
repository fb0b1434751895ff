// NVFP4 quantize launcher: optional global-amax pass, then the warp-window kernel (1x16, linear scales) or the
// 128x128 tile kernel (16x16 blocks, 1x16 with swizzled scales), persistent for 16x16 on large tensors.
#include <cstdint>

#include "common/check.h"
#include "common/pdl.h"
#include "quantize/nvfp4_kernels.cuh"
#include "quantize/tile_launch.h"
#include "quantize/validate.h"
#include "tpcomm/quantize.h"

namespace tpcomm::quant {

using ::tpcomm::detail::launch_kernel;

void nvfp4_quantize(const Nvfp4QuantizeParams& p, cudaStream_t stream) {
  using namespace detail;
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  const float* amax = p.global_amax_in;
  if (amax == nullptr) {
    compute_amax(p.input, p.input_dtype, p.rows * p.cols, p.global_amax_out, stream);
    amax = p.global_amax_out;
  }
  if (p.block == Nvfp4Block::k1x16 && p.scale_layout == ScaleLayout::kLinear) {
    Nvfp4RowwiseParams rp{};
    rp.in = static_cast<const uint4*>(p.input);
    rp.nvec = p.rows * p.cols / 8;
    rp.data = static_cast<uint32_t*>(p.output);
    rp.scales = p.block_scales;
    rp.global_amax = amax;
    rp.global_scale_inv = p.global_scale_inv;
    rp.reverse = p.global_amax_in == nullptr;
    rp.e2m1_m512 = 512;
    launch_kernel(nvfp4_rowwise_kernel, window_grid(rp.nvec), kWindowThreads, 0, stream, rp);
    TPCOMM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  Nvfp4KernelParams kp{};
  kp.in = static_cast<const uint16_t*>(p.input);
  kp.rows = p.rows;
  kp.cols = p.cols;
  kp.col_tiles = (p.cols + kTileCols - 1) / kTileCols;
  kp.out = static_cast<uint8_t*>(p.output);
  kp.scales = p.block_scales;
  kp.global_amax = amax;
  kp.global_scale_inv = p.global_scale_inv;
  kp.swizzled = p.scale_layout == ScaleLayout::kSwizzled128x4;
  kp.e2m1_m512 = 512;
  const int64_t tiles = kp.col_tiles * ((p.rows + kTileRows - 1) / kTileRows);
  const unsigned grid = static_cast<unsigned>(tiles);
  // Tile mapping (tile.cuh), unless TPCOMM_QUANT_TILE_ROWS says otherwise: 8 rows x 256 threads when the grid
  // fits in one wave of the 16-row kernel, else 16 rows x 128 threads. A/B in one device call (nvidia-h200,
  // bench/NOTES.md session 6), 16x16: 2048x5120 (640 tiles, one wave) 56.4 -> 59.7% of copy with 8 rows; the
  // large shapes lose 1-1.6 points with 8 rows. In one wave a block's latency chain (load, convert, store) is the
  // kernel time, and 8 rows per thread halves it.
  const bool one_wave = ::tpcomm::detail::fits_one_wave(
      reinterpret_cast<const void*>(nvfp4_quantize_kernel<true, 16, false>), tiles, TileMap<16>::kThreads, 0);
  const bool r8 = tile_rows(one_wave ? 8 : 16) == 8;
  const bool full = full_tiles(p.rows, p.cols);
  const bool b16 = p.block == Nvfp4Block::k16x16;
  // The single place mapping (block, rows per thread, full tiles) to an instantiation.
  using Kernel = void (*)(Nvfp4KernelParams);
  const Kernel table[2][2][2] = {
      {{nvfp4_quantize_kernel<false, 16, false>, nvfp4_quantize_kernel<false, 16, true>},
       {nvfp4_quantize_kernel<false, 8, false>, nvfp4_quantize_kernel<false, 8, true>}},
      {{nvfp4_quantize_kernel<true, 16, false>, nvfp4_quantize_kernel<true, 16, true>},
       {nvfp4_quantize_kernel<true, 8, false>, nvfp4_quantize_kernel<true, 8, true>}}};
  const unsigned threads = static_cast<unsigned>(r8 ? TileMap<8>::kThreads : TileMap<16>::kThreads);
  // 16x16 on tensors of more than two waves of tiles: the persistent, pipelined form (tile.cuh: each block
  // prefetches its next tile while it converts this one), 8 rows x 256 threads unless TPCOMM_QUANT_TILE_ROWS says
  // otherwise; TPCOMM_QUANT_ONE_TILE_PER_BLOCK=1 keeps one tile per block (A/B switch). Measured (nvidia-h200,
  // graph us, bench/NOTES.md session 10): 8192x8192 50.6 -> 48.5, 16384x7168 86.2 -> 83.1, 4096x14336 44.4 -> 43.6;
  // 2048x5120 (640 tiles, 1.2 waves) 9.7 -> 12.2 persistent, so short grids keep one tile per block.
  if (b16 && !one_tile_per_block()) {
    kp.divs = TileDivs(kp.col_tiles, (p.rows + kTileRows - 1) / kTileRows);
    kp.tiles = tiles;
    const bool pr8 = tile_rows(8) == 8;
    using PKernel = void (*)(Nvfp4KernelParams);
    const PKernel pk = pr8 ? (full ? nvfp4_quantize_persistent_kernel<8, true> : nvfp4_quantize_persistent_kernel<8, false>)
                           : (full ? nvfp4_quantize_persistent_kernel<16, true> : nvfp4_quantize_persistent_kernel<16, false>);
    const int per_sm = pr8 ? (full ? persistent_blocks_per_sm<nvfp4_quantize_persistent_kernel<8, true>, 256>()
                                   : persistent_blocks_per_sm<nvfp4_quantize_persistent_kernel<8, false>, 256>())
                           : (full ? persistent_blocks_per_sm<nvfp4_quantize_persistent_kernel<16, true>, 128>()
                                   : persistent_blocks_per_sm<nvfp4_quantize_persistent_kernel<16, false>, 128>());
    const int64_t resident = int64_t(per_sm) * sm_count();
    if (tiles > 2 * resident) {
      ::tpcomm::detail::launch_kernel(pk, static_cast<unsigned>(resident), pr8 ? 256u : 128u, kStageBytes, stream, kp);
      TPCOMM_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  launch_kernel(table[b16][r8][full], grid, threads, 0, stream, kp);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::quant
