// CPU tests of kAuto on a loopback world (no NCCL): the table's fast choice where it has one, the largest fast
// algorithm whose workspace holds the message where the table says NCCL, kUnsupported naming `count` and the limit
// beyond every workspace.
#include <gtest/gtest.h>

#include <string>

#include "collectives/all_reduce_loopback.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"

using namespace tpcomm;
using tpcomm::detail::select_all_reduce_loopback;

namespace {
constexpr std::size_t K = 1024, M = 1024 * 1024;
}  // namespace

TEST(AllReduceLoopbackSelect, NeverNcclAndNeverPastAWorkspace) {
  AllReduceTable t{512 * K, 512 * K, 4 * M, 0, "test"};  // the W = 4 shape: NCCL above 4 MiB
  const std::size_t ll = 1 * M, one = 8 * M, two = 64 * M;
  EXPECT_EQ(select_all_reduce_loopback(t, 8 * K, ll, one, two), AllReduceAlgo::kOneShotLL);
  EXPECT_EQ(select_all_reduce_loopback(t, 2 * M, ll, one, two), AllReduceAlgo::kTwoShot);
  // Where the table says NCCL: two-shot while its workspace holds the message.
  EXPECT_EQ(select_all_reduce_loopback(t, 8 * M, ll, one, two), AllReduceAlgo::kTwoShot);
  EXPECT_EQ(select_all_reduce_loopback(t, 64 * M, ll, one, two), AllReduceAlgo::kTwoShot);
  // Two-shot's workspace smaller than one-shot's (the W = 2 defaults): one-shot takes what two-shot cannot.
  AllReduceTable t2{1 * M, 64 * M, 64 * M, 0, "test"};
  EXPECT_EQ(select_all_reduce_loopback(t2, 32 * M, ll, 64 * M, 16 * M), AllReduceAlgo::kOneShot);
  EXPECT_EQ(select_all_reduce_loopback(t2, 64 * M, ll, 64 * M, 16 * M), AllReduceAlgo::kOneShot);
  // Only the barrier-free workspace holds it.
  AllReduceTable tiny{0, 0, 0, 0, "test"};
  EXPECT_EQ(select_all_reduce_loopback(tiny, 100 * K, ll, 64 * K, 32 * K), AllReduceAlgo::kOneShotLL);
  // The copy-engine one-shot only where the table picks it.
  AllReduceTable ce = t;
  ce.copy_engine_min = 2 * M;
  EXPECT_EQ(select_all_reduce_loopback(ce, 4 * M, ll, one, two, 16 * M), AllReduceAlgo::kOneShotCE);
  EXPECT_EQ(select_all_reduce_loopback(t, 4 * M, ll, one, two, 16 * M), AllReduceAlgo::kTwoShot);
}

TEST(AllReduceLoopbackSelect, TooLargeIsUnsupportedNamingCountAndTheLimit) {
  AllReduceTable t{512 * K, 512 * K, 4 * M, 0, "test"};
  try {
    select_all_reduce_loopback(t, 64 * M + 2, 1 * M, 8 * M, 64 * M);
    ADD_FAILURE() << "a message above every workspace was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    const std::string w = e.what();
    EXPECT_NE(w.find("count: "), std::string::npos) << w;
    EXPECT_NE(w.find(std::to_string(64 * M + 2) + " bytes"), std::string::npos) << w;
    EXPECT_NE(w.find(std::to_string(64 * M) + " bytes, CommOptions::two_shot_max_bytes"), std::string::npos) << w;
    EXPECT_NE(w.find("no NCCL"), std::string::npos) << w;
  }
  try {  // the largest workspace is one-shot's: the message names that option
    select_all_reduce_loopback(t, 65 * M, 1 * M, 64 * M, 16 * M);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(64 * M) + " bytes, CommOptions::one_shot_max_bytes"),
              std::string::npos)
        << e.what();
  }
}
