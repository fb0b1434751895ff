// MXFP8 quantize launcher: one kernel over all 128x128 tiles of all experts (mxfp8_kernels.cuh).
#include <cstdint>

#include "common/check.h"
#include "common/pdl.h"
#include "quantize/mxfp8_kernels.cuh"
#include "quantize/tile_launch.h"
#include "quantize/validate.h"
#include "tpcomm/quantize.h"

namespace tpcomm::quant {

using ::tpcomm::detail::launch_kernel;

namespace {

using namespace detail;

// Rowwise + colwise: persistent kernel (TPCOMM_QUANT_ONE_TILE_PER_BLOCK=1: one tile per block, for A/B);
// single outputs: one tile per block (their persistent form measured slower, sessions 4 and 6: not compiled).
// Tile mapping (tile.cuh): kDefaultRows (below) unless TPCOMM_QUANT_TILE_ROWS says otherwise.
template <int kFmt, bool kRceil, bool kRow, bool kCol, int kR, bool kFull>
void launch_mapped(const Mxfp8KernelParams& kp, int64_t tiles, cudaStream_t stream) {
  constexpr int kThreads = TileMap<kR>::kThreads;
  if constexpr (kRow && kCol) {
    if (!one_tile_per_block()) {
      launch_persistent<mxfp8_quantize_persistent_kernel<kFmt, kRceil, kRow, kCol, kR, kFull>, kThreads>(kp, tiles,
                                                                                                          stream);
      return;
    }
  }
  launch_kernel(mxfp8_quantize_kernel<kFmt, kRceil, kRow, kCol, kR, kFull>, static_cast<unsigned>(tiles), kThreads,
                0, stream, kp);
}

// Full tiles (load_tile's kFull): rows and cols multiples of 128; TPCOMM_QUANT_CHECKED_TILES=1 forces the checked
// form (A/B).
template <int kFmt, bool kRceil, bool kRow, bool kCol, int kR>
void launch_full_or_checked(const Mxfp8KernelParams& kp, int64_t tiles, cudaStream_t stream) {
  if (full_tiles(kp.rows, kp.cols)) launch_mapped<kFmt, kRceil, kRow, kCol, kR, true>(kp, tiles, stream);
  else launch_mapped<kFmt, kRceil, kRow, kCol, kR, false>(kp, tiles, stream);
}

// Default mapping: 8 rows x 256 threads for the kernels with colwise output. A/B in one device call
// (nvidia-h200, bench/NOTES.md session 6): colwise 2-D +0.4..+7 points of copy, rowwise + colwise +0.7..+3,
// 3-D colwise +0.2..+3.5 (most at E = 1..4), none slower by more than noise. Rowwise-only tiles (swizzled scales)
// were not measured and keep the original 16-row mapping.
template <bool kCol>
constexpr int kDefaultRows = kCol ? 8 : 16;

template <int kFmt, bool kRceil, bool kRow, bool kCol>
void launch_one(const Mxfp8KernelParams& kp, int64_t tiles, cudaStream_t stream) {
  if (tile_rows(kDefaultRows<kCol>) == 8) launch_full_or_checked<kFmt, kRceil, kRow, kCol, 8>(kp, tiles, stream);
  else launch_full_or_checked<kFmt, kRceil, kRow, kCol, 16>(kp, tiles, stream);
}

template <int kFmt, bool kRceil>
void launch_outputs(bool row, bool col, const Mxfp8KernelParams& kp, int64_t tiles, cudaStream_t stream) {
  if (row && col) launch_one<kFmt, kRceil, true, true>(kp, tiles, stream);
  else if (row && !kp.swizzled) {
    // Rowwise with linear scales: the elementwise kernel (the flat block sequence needs no padding).
    Mxfp8RowwiseParams rp;
    rp.in = reinterpret_cast<const uint4*>(kp.in);
    rp.nvec = kp.experts * kp.rows * kp.cols / 8;
    rp.data = reinterpret_cast<uint2*>(kp.row_data);
    rp.scales = kp.row_scales;
    launch_kernel(mxfp8_rowwise_kernel<kFmt, kRceil>, window_grid(rp.nvec), kWindowThreads, 0, stream, rp);
  } else if (row) launch_one<kFmt, kRceil, true, false>(kp, tiles, stream);
  else launch_one<kFmt, kRceil, false, true>(kp, tiles, stream);
}

// The single place mapping runtime choices (format x rounding) to kernel instantiations.
void dispatch(Fp8Format f, E8M0Rounding r, bool row, bool col, const Mxfp8KernelParams& kp, int64_t tiles,
              cudaStream_t stream) {
  const bool rceil = r == E8M0Rounding::kRceil;
  if (f == Fp8Format::kE4M3) {
    if (rceil) launch_outputs<0, true>(row, col, kp, tiles, stream);
    else launch_outputs<0, false>(row, col, kp, tiles, stream);
  } else if (f == Fp8Format::kE5M2) {
    if (rceil) launch_outputs<1, true>(row, col, kp, tiles, stream);
    else launch_outputs<1, false>(row, col, kp, tiles, stream);
  } else {
    throw Error(ErrorCode::kInvalidArgument, "format: unknown value " + std::to_string(static_cast<int>(f)));
  }
}

}  // namespace

void mxfp8_quantize(const Mxfp8QuantizeParams& p, cudaStream_t stream) {
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  const bool row = p.row_data != nullptr;
  const bool col = p.col_data != nullptr;
  Mxfp8KernelParams kp{};
  kp.in = static_cast<const uint16_t*>(p.input);
  kp.rows = p.rows;
  kp.cols = p.cols;
  kp.row_data = static_cast<uint8_t*>(p.row_data);
  kp.row_scales = p.row_scales;
  kp.col_data = static_cast<uint8_t*>(p.col_data);
  kp.col_scales = p.col_scales;
  kp.swizzled = p.scale_layout == ScaleLayout::kSwizzled128x4;
  const int64_t col_tiles = (p.cols + kTileCols - 1) / kTileCols;
  const int64_t tiles_per_expert = (p.rows + kTileRows - 1) / kTileRows;
  const int64_t tiles = p.experts * tiles_per_expert * col_tiles;
  kp.tiles = tiles;
  kp.experts = p.experts;
  kp.divs = TileDivs(col_tiles, tiles_per_expert);
  dispatch(p.format, p.rounding, row, col, kp, tiles, stream);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::quant
