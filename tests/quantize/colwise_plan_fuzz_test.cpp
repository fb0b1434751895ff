// Property test of the one-pass FP8 colwise launch plan (src/quantize/colwise_plan.h), CPU only: random shapes
// (every row count the validators accept, 1 .. 2^31 - 1), strip budgets (the 1..200 KiB of
// TPCOMM_QUANT_COLWISE_BLOCK_KB), forced widths and register rows, 16-row alignment (the transposed output) and SM
// counts. Each candidate must be a shape fp8_colwise_cluster_kernel can run:
//   * width 32, 64 or 128 (128 only when forced; the forced width only), at most 16 blocks per cluster;
//   * the blocks' row slices cover every row, in multiples of row_align; with a 16-row-aligned plan and rows % 16
//     == 0 every block's slice is whole 16-row groups (the transposed cast stores 16-byte runs);
//   * shared memory = the rows not held in registers x W x 2 bytes, within the budget plus the rounding to
//     row_align, and below the kernel's 200 KiB opt-in (fp8.cu) whenever the budget is;
//   * rows per block fit the kernel's int row counters; registers 0 or kColRegRows (forced, or chosen for grids
//     of more than three blocks per SM);
//   * no candidate exactly when not even the narrowest strip fits 16 blocks (the launcher then runs two passes).
// A failure prints the seed and the case index (TPCOMM_FUZZ_SEED replays the run).
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>

#include "common/fuzz_util.h"
#include "common/test_util.h"
#include "quantize/colwise_plan.h"

namespace tpcomm::quant {
namespace {

using detail::col_cluster_candidates;
using detail::ColClusterPlan;
using detail::ColPlanInputs;
using detail::kColClusterMax;
using detail::kColClusterThreads;
using detail::kColRegRows;

ColPlanInputs gen_inputs(test::SplitMix64& rng) {
  auto u = [&](uint64_t n) { return rng.next() % n; };
  ColPlanInputs in;
  const uint64_t r = u(100);
  if (r < 40) in.rows = 1 + static_cast<int64_t>(u(4096));
  else if (r < 75) in.rows = 1 + static_cast<int64_t>(u(40000));  // around the 16-block limit
  else if (r < 90) in.rows = 16 * (1 + static_cast<int64_t>(u(4096)));
  else in.rows = 1 + static_cast<int64_t>(rng.next() % ((uint64_t(1) << 31) - 1));
  in.cols = 8 * (1 + static_cast<int64_t>(u(r < 95 ? 4096 : (uint64_t(1) << 28))));
  in.block_budget = u(3) == 0 ? int64_t(64) << 10 : (1 + static_cast<int64_t>(u(200))) << 10;
  static const int widths[] = {0, 0, 0, 32, 64, 128};
  in.forced_w = widths[u(6)];
  static const int regs[] = {-1, -1, 0, kColRegRows};
  in.forced_regs = regs[u(4)];
  in.row_align = u(3) == 0 ? 16 : 1;
  in.sm_count = 1 + static_cast<int>(u(200));
  return in;
}

std::string describe(const ColPlanInputs& in) {
  char b[200];
  std::snprintf(b, sizeof b, "rows %lld cols %lld budget %lld forced_w %d forced_regs %d row_align %d sm %d",
                static_cast<long long>(in.rows), static_cast<long long>(in.cols),
                static_cast<long long>(in.block_budget), in.forced_w, in.forced_regs, in.row_align, in.sm_count);
  return b;
}

// What is wrong with candidate pl of inputs in ("" when nothing).
std::string check_plan(const ColPlanInputs& in, const ColClusterPlan& pl) {
  if (pl.w != 32 && pl.w != 64 && pl.w != 128) return "width " + std::to_string(pl.w);
  if (in.forced_w != 0 && pl.w != in.forced_w) return "not the forced width";
  if (in.forced_w == 0 && pl.w == 128) return "width 128 without being forced";
  if (pl.c < 1 || pl.c > static_cast<unsigned>(kColClusterMax)) return "cluster of " + std::to_string(pl.c);
  if (pl.rows_per_block < 1 || pl.rows_per_block > INT_MAX) return "rows per block " + std::to_string(pl.rows_per_block);
  if (pl.rows_per_block % in.row_align != 0) return "rows per block not a multiple of row_align";
  if (pl.rows_per_block * static_cast<int64_t>(pl.c) < in.rows) return "the blocks do not cover every row";
  if (in.row_align == 16 && in.rows % 16 == 0) {
    for (unsigned k = 0; k < pl.c; ++k) {
      const int64_t left = in.rows - static_cast<int64_t>(k) * pl.rows_per_block;
      const int64_t nr = left <= 0 ? 0 : std::min<int64_t>(left, pl.rows_per_block);
      if (nr % 16 != 0) return "block " + std::to_string(k) + " holds " + std::to_string(nr) + " rows (not 16-row groups)";
    }
  }
  if (in.forced_regs >= 0 && pl.regs != in.forced_regs) return "not the forced register rows";
  if (pl.regs != 0 && pl.regs != kColRegRows) return "register rows " + std::to_string(pl.regs);
  const int64_t blocks = (in.cols + pl.w - 1) / pl.w * pl.c;
  if (in.forced_regs < 0 && (pl.regs == kColRegRows) != (blocks > int64_t(3) * in.sm_count))
    return "register rows not chosen by the grid size";
  const int64_t reg_rows = int64_t(pl.regs) * (kColClusterThreads / (pl.w / 8));
  const int64_t want_smem = std::max<int64_t>(0, pl.rows_per_block - reg_rows) * pl.w * 2;
  if (static_cast<int64_t>(pl.smem) != want_smem) return "shared memory " + std::to_string(pl.smem) + ", rows need " + std::to_string(want_smem);
  // ceil(rows / c) rows fit the budget (c = ceil(rows * W * 2 / budget)); rounding up to row_align adds < row_align.
  const int64_t slack = int64_t(in.row_align) * pl.w * 2;
  if (pl.rows_per_block * pl.w * 2 > in.block_budget + slack) return "strip slice beyond the budget";
  if (in.block_budget + slack <= (int64_t(200) << 10) && pl.smem > (std::size_t(200) << 10))
    return "shared memory above the kernel's 200 KiB opt-in";
  return "";
}

TEST(ColwisePlanFuzz, EveryCandidateIsAShapeTheKernelRuns) {
  const uint64_t seed = test::fuzz_seed();
  const int64_t n = test::fuzz_cases(50000);
  int64_t plans = 0, empty = 0;
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 20; ++i) {
    test::SplitMix64 rng(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)));
    const ColPlanInputs in = gen_inputs(rng);
    const auto cands = col_cluster_candidates(in);
    std::string problem;
    int last_w = -1;
    for (const ColClusterPlan& pl : cands) {
      problem = check_plan(in, pl);
      if (problem.empty() && pl.w == last_w) problem = "width " + std::to_string(pl.w) + " twice";
      if (!problem.empty()) break;
      last_w = pl.w;
      ++plans;
    }
    // No candidate iff the narrowest width allowed needs more than 16 blocks.
    const int narrowest = in.forced_w != 0 ? in.forced_w : 32;
    const bool none = (in.rows * narrowest * 2 + in.block_budget - 1) / in.block_budget > kColClusterMax;
    if (problem.empty() && cands.empty() != none)
      problem = cands.empty() ? "no candidate although a strip fits" : "a candidate although no strip fits";
    if (problem.empty() && in.forced_w == 0 && !cands.empty() && cands[0].w == 32 &&
        (in.rows * 64 * 2 + in.block_budget - 1) / in.block_budget <= kColClusterMax)
      problem = "width 32 first although width 64 fits";
    if (cands.empty()) ++empty;
    if (!problem.empty()) {
      ++failures;
      ADD_FAILURE() << problem << "\n  case " << i << " of TPCOMM_FUZZ_SEED=" << seed << ": " << describe(in);
    }
  }
  EXPECT_GT(plans, n / 4);
  EXPECT_GT(empty, n / 100);
  std::printf("[ fuzz     ] col_cluster_candidates: %lld inputs, %lld candidates checked, %lld with none\n",
              static_cast<long long>(n), static_cast<long long>(plans), static_cast<long long>(empty));
}

}  // namespace
}  // namespace tpcomm::quant
