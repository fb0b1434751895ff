// CPU tests of the loopback world's in-process host exchange (src/comm/loopback_hub.h): all-gather semantics over
// many rounds with ranks at different speeds, barriers, a rank that never arrives (kTimeout naming it, within the
// limit, for the waiting ranks and the late one), disagreeing ranks (kMismatch), abort, and bad arguments.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "comm/loopback_hub.h"
#include "common/test_util.h"
#include "tpcomm/error.h"

using namespace tpcomm;
using tpcomm::detail::LoopbackHub;
using namespace std::chrono_literals;

namespace {

// Runs fn(rank) on W threads; returns each rank's exception message ("" when none) and error code.
struct Outcome {
  std::string what;
  ErrorCode code = ErrorCode::kInternal;
  bool threw = false;
};
std::vector<Outcome> on_ranks(int W, const std::function<void(int)>& fn) {
  std::vector<Outcome> out(W);
  std::vector<std::thread> ts;
  for (int r = 0; r < W; ++r) {
    ts.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const Error& e) {
        out[r].threw = true;
        out[r].code = e.code();
        out[r].what = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(LoopbackHub, AllGatherPlacesEveryRanksBytesAtItsSlotOverManyRounds) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (int W : {1, 2, 3, 5, 8}) {
    LoopbackHub hub(W);
    constexpr int kRounds = 200;
    std::atomic<int> bad{0};
    const auto res = on_ranks(W, [&](int r) {
      test::SplitMix64 jitter(seed ^ (uint64_t(r) << 32));
      for (int round = 0; round < kRounds; ++round) {
        // Sizes change every round (all ranks agree); ranks run at different speeds.
        const std::size_t bytes = 1 + (round * 37) % 300;
        std::vector<uint8_t> send(bytes), recv(bytes * W, 0xEE);
        for (std::size_t i = 0; i < bytes; ++i) send[i] = static_cast<uint8_t>(r * 31 + round * 7 + i);
        if (jitter.next() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(jitter.next() % 300));
        hub.all_gather(r, send.data(), recv.data(), bytes, 5s);
        for (int q = 0; q < W; ++q)
          for (std::size_t i = 0; i < bytes; ++i)
            if (recv[q * bytes + i] != static_cast<uint8_t>(q * 31 + round * 7 + i)) bad++;
      }
    });
    for (int r = 0; r < W; ++r) EXPECT_FALSE(res[r].threw) << "W=" << W << " rank " << r << ": " << res[r].what;
    EXPECT_EQ(bad.load(), 0) << "W=" << W;
    EXPECT_EQ(hub.generation(), uint64_t(kRounds)) << "W=" << W;
    EXPECT_FALSE(hub.broken());
  }
}

TEST(LoopbackHub, BarrierReleasesNoRankBeforeTheLastArrives) {
  constexpr int W = 4, kRounds = 50;
  LoopbackHub hub(W);
  std::atomic<int> entered{0};
  std::atomic<int> early{0};
  const auto res = on_ranks(W, [&](int r) {
    for (int round = 0; round < kRounds; ++round) {
      if (r == round % W) std::this_thread::sleep_for(200us);  // a different rank is last each round
      entered++;
      hub.barrier(r, 5s);
      // Everyone of this round has entered before anyone leaves it.
      if (entered.load() < (round + 1) * W) early++;
      hub.barrier(r, 5s);  // keeps the next round's increments out of this round's check
    }
  });
  for (int r = 0; r < W; ++r) EXPECT_FALSE(res[r].threw) << res[r].what;
  EXPECT_EQ(early.load(), 0);
  EXPECT_EQ(hub.generation(), uint64_t(2 * kRounds));
}

TEST(LoopbackHub, MissingRankTimesOutNamingItAndTheLateRankFailsToo) {
  constexpr int W = 3, kMissing = 1;
  LoopbackHub hub(W);
  const auto t0 = std::chrono::steady_clock::now();
  const auto res = on_ranks(W, [&](int r) {
    uint32_t v = r, all[W];
    hub.all_gather(r, &v, all, sizeof(v), 5s);  // one good round first
    if (r == kMissing) {
      std::this_thread::sleep_for(600ms);  // arrives after the others gave up
      hub.all_gather(r, &v, all, sizeof(v), 300ms);
      return;
    }
    hub.all_gather(r, &v, all, sizeof(v), 300ms);
  });
  const double took = seconds_since(t0);
  for (int r = 0; r < W; ++r) {
    ASSERT_TRUE(res[r].threw) << "rank " << r << " returned from a round rank " << kMissing << " never joined";
    EXPECT_EQ(res[r].code, ErrorCode::kTimeout) << res[r].what;
    EXPECT_NE(res[r].what.find("rank 1 did not arrive within 0.3 s"), std::string::npos) << res[r].what;
    EXPECT_NE(res[r].what.find("host_all_gather"), std::string::npos) << res[r].what;
  }
  EXPECT_LT(took, 0.6 + 2.0) << "the waiting ranks did not give up within the limit";
  EXPECT_TRUE(hub.broken());
  // Every later call fails at once instead of waiting for ranks that gave up.
  const auto t1 = std::chrono::steady_clock::now();
  try {
    hub.barrier(0, 10s);
    ADD_FAILURE() << "a broken hub accepted a barrier";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
  }
  EXPECT_LT(seconds_since(t1), 1.0);
}

TEST(LoopbackHub, SeveralMissingRanksAreAllNamed) {
  constexpr int W = 4;
  LoopbackHub hub(W);
  const auto res = on_ranks(2, [&](int r) {  // only ranks 0 and 1 come (ranks 2 and 3 never call)
    hub.barrier(r, 200ms);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(res[r].threw);
    EXPECT_EQ(res[r].code, ErrorCode::kTimeout);
    EXPECT_NE(res[r].what.find("host_barrier: rank 2 did not arrive"), std::string::npos) << res[r].what;
    EXPECT_NE(res[r].what.find("also missing: rank 3"), std::string::npos) << res[r].what;
  }
}

TEST(LoopbackHub, DifferentByteCountsOrOperationsAreAMismatchNamingTheRanks) {
  {
    LoopbackHub hub(2);
    const auto res = on_ranks(2, [&](int r) {
      uint64_t v[2] = {1, 2}, all[4];
      if (r == 1) std::this_thread::sleep_for(50ms);  // rank 0 is first: rank 1 disagrees with it
      hub.all_gather(r, v, all, r == 0 ? 8 : 16, 5s);
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(res[r].threw);
      EXPECT_EQ(res[r].code, ErrorCode::kMismatch) << res[r].what;
      EXPECT_NE(res[r].what.find("rank 1 passed 16 bytes, rank 0 8"), std::string::npos) << res[r].what;
    }
  }
  {
    LoopbackHub hub(2);
    const auto res = on_ranks(2, [&](int r) {
      uint32_t v = 0, all[2];
      if (r == 1) {
        std::this_thread::sleep_for(50ms);
        hub.barrier(r, 5s);
      } else {
        hub.all_gather(r, &v, all, sizeof(v), 5s);
      }
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(res[r].threw);
      EXPECT_EQ(res[r].code, ErrorCode::kMismatch) << res[r].what;
      EXPECT_NE(res[r].what.find("rank 1 called host_barrier while rank 0 called host_all_gather"), std::string::npos)
          << res[r].what;
    }
  }
}

TEST(LoopbackHub, AbortWakesWaitingRanksAtOnce) {
  constexpr int W = 3;
  LoopbackHub hub(W);
  const auto t0 = std::chrono::steady_clock::now();
  const auto res = on_ranks(W, [&](int r) {
    if (r == 2) {
      std::this_thread::sleep_for(100ms);
      hub.abort("rank 2 failed during setup: out of memory");
      return;
    }
    hub.barrier(r, 30s);
  });
  EXPECT_LT(seconds_since(t0), 5.0) << "waiting ranks were not woken by abort()";
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(res[r].threw);
    EXPECT_EQ(res[r].code, ErrorCode::kInvalidState);
    EXPECT_NE(res[r].what.find("rank 2 failed during setup: out of memory"), std::string::npos) << res[r].what;
  }
}

TEST(LoopbackHub, BadArgumentsAreNamed) {
  EXPECT_THROW(LoopbackHub(0), Error);
  LoopbackHub hub(2);
  uint32_t v = 0, all[2];
  try {
    hub.all_gather(2, &v, all, 4, 1s);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("rank: 2 is outside [0, 2)"), std::string::npos) << e.what();
  }
  try {
    hub.all_gather(0, &v, all, 0, 1s);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bytes"), std::string::npos) << e.what();
  }
  try {
    hub.all_gather(0, nullptr, all, 4, 1s);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("send"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(hub.broken());  // argument errors are the caller's, before the exchange: the hub stays usable
}

TEST(LoopbackHub, OneRankEnteringARoundTwiceIsAnError) {
  LoopbackHub hub(2);
  std::thread other([&] {
    try {
      hub.barrier(0, 2s);
    } catch (const Error&) {
    }
  });
  std::this_thread::sleep_for(50ms);
  try {
    hub.barrier(0, 2s);  // rank 0 again, from a second thread
    ADD_FAILURE() << "a second entry of rank 0 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidState);
    EXPECT_NE(std::string(e.what()).find("rank 0 entered one host exchange twice"), std::string::npos) << e.what();
  }
  other.join();
}

}  // namespace
