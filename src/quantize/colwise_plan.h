// Shape of the one-pass FP8 colwise launch (fp8_colwise_cluster_kernel, fp8_kernels.cuh): strip width, cluster
// size, rows per block, rows kept in registers, shared memory. Pure host arithmetic, CPU-tested
// (tests/quantize/colwise_plan_test.cpp); the launcher (fp8.cu) takes the first candidate whose clusters the GPU
// can hold.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <array>

namespace tpcomm::quant::detail {

constexpr int kColClusterThreads = 256;
constexpr int kColClusterMax = 16;  // the largest cluster Hopper schedules (non-portable above 8)
constexpr int kColRegRows = 4;      // rows per thread held in registers when registers are used

struct ColClusterPlan {
  int w = 0;                   // strip width in columns (kernel template kW)
  int regs = 0;                // rows per thread in registers (kernel template kRegs): 0 or kColRegRows
  unsigned c = 0;              // blocks per cluster
  int64_t rows_per_block = 0;  // strip rows one block holds
  std::size_t smem = 0;        // dynamic shared memory per block
};

struct ColPlanInputs {
  int64_t rows = 0, cols = 0;
  int64_t block_budget = int64_t(64) << 10;  // strip bytes per block (registers included)
  int forced_w = 0;                          // 0: choose
  int forced_regs = -1;                      // -1: choose
  int row_align = 1;                         // rows_per_block a multiple of this (16 for the transposed output)
  int sm_count = 132;
};

// Strip width: 64 columns (128-byte row segments) wherever the strip fits 16 blocks, else 32 (64-byte segments,
// measured 61% of copy against 73%); 128 only when forced (measured 73.4% against 76.2% at 4096x14336, level
// elsewhere; bench/NOTES.md session 8). C = ceil(rows * W * 2 / budget) blocks of ceil(rows / C) rows each.
// Registers: when the grid has more blocks than three per SM (several waves), kColRegRows rows per thread go to
// registers, so a block needs 48 instead of 64 KiB of shared memory and four blocks share an SM (8192x8192 76 ->
// 79%, 4096x14336 78 -> 80%). A grid of one wave or less keeps everything in shared memory: four per SM would
// crowd its blocks onto fewer SMs (2048x5120, 320 blocks: 12.1 -> 14.3 us with registers).
// Empty when no width fits (more than 16 x budget bytes per 32-column strip): the caller runs two passes.
// A fixed array, not a vector: this runs on every call (no host allocation on the hot path).
struct ColClusterCandidates {
  std::array<ColClusterPlan, 3> plan{};
  std::size_t n = 0;
  std::size_t size() const { return n; }
  bool empty() const { return n == 0; }
  const ColClusterPlan& operator[](std::size_t i) const { return plan[i]; }
  const ColClusterPlan* begin() const { return plan.data(); }
  const ColClusterPlan* end() const { return plan.data() + n; }
};

inline ColClusterCandidates col_cluster_candidates(const ColPlanInputs& in) {
  ColClusterCandidates out;
  for (int w : {64, 32, 128}) {
    if (in.forced_w != 0 ? w != in.forced_w : w == 128) continue;
    const int64_t c = std::max<int64_t>(1, (in.rows * w * 2 + in.block_budget - 1) / in.block_budget);
    if (c > kColClusterMax) continue;
    ColClusterPlan pl;
    pl.w = w;
    pl.c = static_cast<unsigned>(c);
    pl.rows_per_block = ((in.rows + c - 1) / c + in.row_align - 1) / in.row_align * in.row_align;
    const int64_t blocks = (in.cols + w - 1) / w * c;
    pl.regs = in.forced_regs >= 0 ? in.forced_regs : (blocks > int64_t(3) * in.sm_count ? kColRegRows : 0);
    const int64_t reg_rows = int64_t(pl.regs) * (kColClusterThreads / (w / 8));  // rows a block keeps in registers
    pl.smem = static_cast<std::size_t>(std::max<int64_t>(0, pl.rows_per_block - reg_rows) * w * 2);
    out.plan[out.n++] = pl;
  }
  return out;
}

}  // namespace tpcomm::quant::detail
