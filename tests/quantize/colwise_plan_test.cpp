// Launch shape of the one-pass FP8 colwise kernel (src/quantize/colwise_plan.h) for the bench shapes and the
// edges: strip width, cluster size, rows per block, registers vs shared memory, and when there is no one-pass shape.
#include <gtest/gtest.h>

#include <cstdint>

#include "quantize/colwise_plan.h"

namespace tpcomm::quant {
namespace {

using detail::col_cluster_candidates;
using detail::ColPlanInputs;

ColPlanInputs shape(int64_t rows, int64_t cols) {
  ColPlanInputs in;
  in.rows = rows;
  in.cols = cols;
  in.sm_count = 132;  // H200
  return in;
}

TEST(ColwisePlan, BenchShapes) {
  // 8192 rows: 64-column strips over 16 blocks of 512 rows; 2048 blocks (several waves) -> registers hold
  // 4 x 32 rows per block and shared memory the other 384 rows of 128 bytes.
  auto c = col_cluster_candidates(shape(8192, 8192));
  ASSERT_EQ(c.size(), 2u);  // W = 64, then W = 32 (W = 128 only when forced)
  EXPECT_EQ(c[0].w, 64);
  EXPECT_EQ(c[0].c, 16u);
  EXPECT_EQ(c[0].rows_per_block, 512);
  EXPECT_EQ(c[0].regs, 4);
  EXPECT_EQ(c[0].smem, std::size_t(384 * 128));
  EXPECT_EQ(c[1].w, 32);
  EXPECT_EQ(c[1].c, 8u);
  // 16384 rows do not fit 16 blocks of 64 KiB at W = 64: W = 32, 16 blocks of 1024 rows, 4 x 64 in registers.
  c = col_cluster_candidates(shape(16384, 7168));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].w, 32);
  EXPECT_EQ(c[0].c, 16u);
  EXPECT_EQ(c[0].rows_per_block, 1024);
  EXPECT_EQ(c[0].regs, 4);
  EXPECT_EQ(c[0].smem, std::size_t((1024 - 256) * 64));
  // 2048x5120: 80 strips x 4 blocks = 320 blocks, less than one wave of 3 x 132: everything in shared memory.
  c = col_cluster_candidates(shape(2048, 5120));
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c[0].w, 64);
  EXPECT_EQ(c[0].c, 4u);
  EXPECT_EQ(c[0].regs, 0);
  EXPECT_EQ(c[0].smem, std::size_t(512 * 128));
}

TEST(ColwisePlan, EdgesAndSwitches) {
  // Rows not a multiple of the cluster: the last block is short, shared memory sized for the full ones.
  auto c = col_cluster_candidates(shape(3001, 72));
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c[0].c, 6u);
  EXPECT_EQ(c[0].rows_per_block, 501);
  EXPECT_GE(c[0].rows_per_block * c[0].c, 3001);
  EXPECT_LT((c[0].rows_per_block) * (c[0].c - 1), 3001);
  // A few rows: one block per cluster; forced registers may leave no shared memory at all.
  ColPlanInputs in = shape(3, 70008);
  in.forced_regs = 4;
  c = col_cluster_candidates(in);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c[0].c, 1u);
  EXPECT_EQ(c[0].smem, 0u);
  // Too tall for 16 blocks even with 32-column strips: no one-pass shape (the launcher runs two passes).
  EXPECT_TRUE(col_cluster_candidates(shape(16385, 4096)).empty());
  EXPECT_FALSE(col_cluster_candidates(shape(16384, 4096)).empty());
  // A forced width is the only candidate; a larger budget takes taller matrices.
  in = shape(4096, 4096);
  in.forced_w = 128;
  c = col_cluster_candidates(in);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].w, 128);
  EXPECT_EQ(c[0].c, 16u);
  in = shape(32768, 4096);
  in.block_budget = int64_t(128) << 10;
  c = col_cluster_candidates(in);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c[0].w, 32);
  EXPECT_EQ(c[0].c, 16u);
}

}  // namespace
}  // namespace tpcomm::quant

namespace tpcomm::quant {
namespace {
// The transposed-output form: no rows in registers, slices of whole 16-row groups (16-byte output stores).
TEST(ColwisePlan, TransposedOutputSlicesAre16RowGroups) {
  for (int64_t rows : {16, 3008, 4000, 8192, 12000, 16384}) {
    ColPlanInputs in = shape(rows, 8192);
    in.forced_regs = 0;
    in.row_align = 16;
    for (const auto& pl : col_cluster_candidates(in)) {
      EXPECT_EQ(pl.regs, 0) << rows;
      EXPECT_EQ(pl.rows_per_block % 16, 0) << rows;
      EXPECT_GE(pl.rows_per_block * int64_t(pl.c), rows) << rows;
      EXPECT_LT(pl.rows_per_block * int64_t(pl.c - 1), rows) << rows << ": a block with no rows";
      EXPECT_EQ(pl.smem, std::size_t(pl.rows_per_block * pl.w * 2)) << rows;
    }
  }
  // 3008 rows at W = 64: 6 blocks; ceil(3008 / 6) = 502 rounds up to 512.
  ColPlanInputs in = shape(3008, 72);
  in.forced_regs = 0;
  in.row_align = 16;
  const auto c = col_cluster_candidates(in);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c[0].w, 64);
  EXPECT_EQ(c[0].c, 6u);
  EXPECT_EQ(c[0].rows_per_block, 512);
}
}  // namespace
}  // namespace tpcomm::quant
