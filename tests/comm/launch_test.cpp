// CPU tests of tpcomm-launch's process handling (launch_local): a failing rank stops its peers instead of
// leaving them waiting, timeouts fire, "skipped" propagates, and each child sees its own rank.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "tpcomm/error.h"
#include "tpcomm/launch.h"

using namespace tpcomm;

namespace {

int run_sh(const std::string& script, int nproc, double timeout_s = 0) {
  LaunchOptions o;
  o.nproc = nproc;
  o.timeout_s = timeout_s;
  return launch_local({"/bin/sh", "-c", script}, o);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(Launch, EveryRankSucceeds) {
  // Each child checks that it got its own rank and the shared world size and NCCL id.
  EXPECT_EQ(run_sh("[ \"$WORLD_SIZE\" = 3 ] && [ \"$RANK\" -lt 3 ] && [ \"$LOCAL_RANK\" = \"$RANK\" ] && [ -n \"$TPCOMM_NCCL_ID\" ]", 3), 0);
}

TEST(Launch, AFailingRankStopsItsPeersQuickly) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_sh("if [ \"$RANK\" = 1 ]; then exit 3; else exec sleep 60; fi", 3);
  EXPECT_EQ(rc, 3);
  EXPECT_LT(seconds_since(t0), 10.0) << "peers of the failed rank were left running";
}

TEST(Launch, TimeoutKillsEveryRank) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run_sh("exec sleep 60", 2, 0.5), 124);
  EXPECT_LT(seconds_since(t0), 10.0);
}

TEST(Launch, SkippedOnlyWhenEveryRankSkips) {
  EXPECT_EQ(run_sh("exit 77", 2), 77);
  EXPECT_EQ(run_sh("[ \"$RANK\" = 0 ] && exit 77; exit 0", 2), 0);
}

TEST(Launch, BadCommandIsAnError) {
  EXPECT_THROW(launch_local({}, {}), Error);
  LaunchOptions o;
  o.nproc = 1;
  EXPECT_THROW(launch_local({"/nonexistent/tpcomm-no-such-binary"}, o), Error);
}

TEST(Launch, RanksThatIgnoreTermAreKilled) {
  const auto t0 = std::chrono::steady_clock::now();
  // sh ignores TERM and waits on its child: only the escalation to KILL ends it. The orphaned sleep gets no
  // stdout/stderr, so it cannot hold the test runner's output pipe open.
  EXPECT_EQ(run_sh("trap '' TERM; if [ \"$RANK\" = 0 ]; then exit 5; fi; sleep 20 </dev/null >/dev/null 2>&1; exit 0", 2), 5);
  EXPECT_LT(seconds_since(t0), 15.0);
}
