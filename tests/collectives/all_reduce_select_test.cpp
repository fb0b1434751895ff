// CPU tests of the all-reduce algorithm choice (no GPU).
#include <gtest/gtest.h>

#include <cstdlib>

#include "collectives/all_reduce_args.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"

using namespace tpcomm;

namespace {
constexpr std::size_t K = 1024, M = 1024 * 1024;
const std::size_t kBig = std::size_t(1) << 40;
}  // namespace

TEST(AllReduceSelect, FollowsTheTableAndTheWorkspaceCaps) {
  AllReduceTable t{512 * K, 2 * M, 64 * M, 0, "test"};
  EXPECT_EQ(select_all_reduce(t, 8 * K, true, kBig, kBig, kBig), AllReduceAlgo::kOneShotLL);
  EXPECT_EQ(select_all_reduce(t, 512 * K, true, kBig, kBig, kBig), AllReduceAlgo::kOneShotLL);
  EXPECT_EQ(select_all_reduce(t, 512 * K + 2, true, kBig, kBig, kBig), AllReduceAlgo::kOneShot);
  EXPECT_EQ(select_all_reduce(t, 2 * M + 2, true, kBig, kBig, kBig), AllReduceAlgo::kTwoShot);
  EXPECT_EQ(select_all_reduce(t, 64 * M + 2, true, kBig, kBig, kBig), AllReduceAlgo::kNccl);
  // A smaller workspace moves the choice on to the next algorithm, never past the cap.
  EXPECT_EQ(select_all_reduce(t, 300 * K, true, 256 * K, kBig, kBig), AllReduceAlgo::kOneShot);
  EXPECT_EQ(select_all_reduce(t, 1 * M, true, 256 * K, 512 * K, kBig), AllReduceAlgo::kTwoShot);
  EXPECT_EQ(select_all_reduce(t, 8 * M, true, kBig, kBig, 4 * M), AllReduceAlgo::kNccl);
  // Copy engine from its threshold up, within its workspace.
  AllReduceTable ce = t;
  ce.copy_engine_min = 16 * M;
  EXPECT_EQ(select_all_reduce(ce, 8 * M, true, kBig, kBig, kBig, 64 * M), AllReduceAlgo::kTwoShot);
  EXPECT_EQ(select_all_reduce(ce, 16 * M, true, kBig, kBig, kBig, 64 * M), AllReduceAlgo::kOneShotCE);
  EXPECT_EQ(select_all_reduce(ce, 128 * M, true, kBig, kBig, kBig, 64 * M), AllReduceAlgo::kNccl);
  EXPECT_EQ(select_all_reduce(ce, 32 * M, true, kBig, kBig, kBig, 0), AllReduceAlgo::kTwoShot);
  // No peer memory: NCCL whatever the size.
  EXPECT_EQ(select_all_reduce(t, 8 * K, false, kBig, kBig, kBig), AllReduceAlgo::kNccl);
}

TEST(AllReduceSelect, BuiltinTablesForEveryWorldSize) {
  unsetenv("TPCOMM_AR_TABLE");
  for (int w = 1; w <= 8; ++w) {
    const AllReduceTable t = default_all_reduce_table(w);
    EXPECT_LE(t.one_shot_ll_max, t.one_shot_max) << w;
    EXPECT_LE(t.one_shot_max, t.two_shot_max) << w;
    EXPECT_GT(t.one_shot_ll_max, 0u) << w;
    EXPECT_EQ(t.source.rfind("builtin:", 0), 0u) << t.source;
  }
  // One-shot reads W-1 full copies: its limit must not grow with the world size.
  EXPECT_GE(default_all_reduce_table(2).one_shot_max, default_all_reduce_table(4).one_shot_max);
  EXPECT_GE(default_all_reduce_table(4).one_shot_max, default_all_reduce_table(8).one_shot_max);
}

TEST(AllReduceSelect, EnvironmentOverride) {
  setenv("TPCOMM_AR_TABLE", "ll=64K,one=1M,two=8M", 1);
  const AllReduceTable t = default_all_reduce_table(2);
  EXPECT_EQ(t.one_shot_ll_max, 64 * K);
  EXPECT_EQ(t.one_shot_max, 1 * M);
  EXPECT_EQ(t.two_shot_max, 8 * M);
  EXPECT_EQ(t.source, "env:TPCOMM_AR_TABLE");
  setenv("TPCOMM_AR_TABLE", "ll=64Q", 1);
  EXPECT_THROW(default_all_reduce_table(2), Error);
  setenv("TPCOMM_AR_TABLE", "three=1M", 1);
  EXPECT_THROW(default_all_reduce_table(2), Error);
  unsetenv("TPCOMM_AR_TABLE");
}

TEST(AllReduceSelect, AlgorithmNamesRoundTrip) {
  for (AllReduceAlgo a : {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot,
                          AllReduceAlgo::kNccl, AllReduceAlgo::kOneShotCE})
    EXPECT_EQ(parse_all_reduce_algo(all_reduce_algo_name(a)), a);
  try {
    parse_all_reduce_algo("ring");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("algo"), std::string::npos);
  }
}

// all_reduce()'s argument checks run before anything is enqueued; pointers here are never dereferenced.
namespace {
const void* ptr(uintptr_t a) { return reinterpret_cast<const void*>(a); }
std::string arg_error(const void* in, const void* out, std::size_t count, DType dt, ReduceOp op,
                      AllReduceOptions o = {}) {
  try {
    detail::check_all_reduce_args(in, out, count, dt, op, o);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}
// Error::what() is "<code name>: <argument>: <reason>"; the argument must come first after the code.
bool starts_with(const std::string& s, const std::string& p) {
  return s.rfind(std::string(error_code_name(ErrorCode::kInvalidArgument)) + ": " + p, 0) == 0;
}
}  // namespace

TEST(AllReduceArgs, EachBadArgumentIsNamed) {
  const uintptr_t a = 0x100000, b = 0x200000;
  const DType bf = DType::kBFloat16;
  const ReduceOp sum = ReduceOp::kSum;
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b), 16, DType::kFloat8E4M3, sum), "dtype:"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b), 16, bf, static_cast<ReduceOp>(7)), "op:"));
  EXPECT_TRUE(starts_with(arg_error(nullptr, ptr(b), 16, bf, sum), "input: null"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), nullptr, 16, bf, sum), "output: null"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a + 1), ptr(b), 16, bf, sum), "input: not aligned"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b + 2), 16, DType::kFloat32, sum), "output: not aligned"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(a + 2), 64, bf, sum), "output: partially overlaps"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a + 2), ptr(a), 64, bf, sum), "output: partially overlaps"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b), SIZE_MAX / 2 + 1, bf, sum), "count:"));
  // Zero copy: only pinned one_shot, never in place, 16-byte aligned input.
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b), 16, bf, sum, {AllReduceAlgo::kAuto, true}), "zero_copy:"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(b), 16, bf, sum, {AllReduceAlgo::kTwoShot, true}), "zero_copy:"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a), ptr(a), 16, bf, sum, {AllReduceAlgo::kOneShot, true}), "output: zero-copy"));
  EXPECT_TRUE(starts_with(arg_error(ptr(a + 2), ptr(b), 16, bf, sum, {AllReduceAlgo::kOneShot, true}), "input: zero-copy"));
}

TEST(AllReduceArgs, ValidCallsPassAndEmptyOnesAreNoOps) {
  const uintptr_t a = 0x100000, b = 0x200000;
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      EXPECT_TRUE(detail::check_all_reduce_args(ptr(a), ptr(b), 7, dt, op, {}));
      EXPECT_TRUE(detail::check_all_reduce_args(ptr(a), ptr(a), 1023, dt, op, {}));  // in place
    }
  // Adjacent, not overlapping; odd 2-byte offsets are fine outside zero copy.
  EXPECT_TRUE(detail::check_all_reduce_args(ptr(a + 2), ptr(a + 2 + 64), 32, DType::kBFloat16, ReduceOp::kSum, {}));
  EXPECT_TRUE(detail::check_all_reduce_args(ptr(a), ptr(b), 16, DType::kBFloat16, ReduceOp::kSum, {AllReduceAlgo::kOneShot, true}));
  // count == 0: nothing to do, null pointers accepted (as NCCL does); dtype and op are still checked.
  EXPECT_FALSE(detail::check_all_reduce_args(nullptr, nullptr, 0, DType::kBFloat16, ReduceOp::kSum, {}));
  EXPECT_TRUE(starts_with(arg_error(nullptr, nullptr, 0, DType::kFloat8E4M3, ReduceOp::kSum), "dtype:"));
}
