// Soak of all_reduce on a loopback world (Communicator::create_loopback: W ranks as threads on one GPU): a long
// run of calls, each with a new algorithm (auto, one_shot_ll, one_shot, two_shot, one_shot_ce where it has a
// workspace), dtype, op, size and element offset, all ranks issuing the same sequence, with no host
// synchronization between checks. Every N-th call writes into a poisoned check buffer; then every rank
// synchronizes, and the results must be within the float64 reference's tolerance (tests/collectives/
// all_reduce_ref.h) and bitwise identical on all ranks. Device memory (cudaMemGetInfo) may not shrink between the
// end of the first window and the end of the run.
//
//   TPCOMM_SOAK_CALLS=<n>        calls per rank (default 2000; scripts/soak.sh runs 100000)
//   TPCOMM_SOAK_CHECK_EVERY=<n>  N (default 50)
//   TPCOMM_SOAK_WORLD=<W>        ranks (default 2; 2..8)
//   TPCOMM_SOAK_SEED=<n|0xhex>   replays a run (printed on failure)
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "collectives/all_reduce_ref.h"
#include "common/test_util.h"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

#define CK(expr)                                                                                            \
  do {                                                                                                      \
    cudaError_t e_ = (expr);                                                                                \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

constexpr int kDevice = 0;
constexpr std::size_t kMaxCount = std::size_t(1) << 18;  // elements per call (1 MiB of f32): inside every workspace
constexpr std::size_t kMaxOffset = 7;                     // elements added to both pointers (misaligned vectors)
const DType kDtypes[] = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};

int64_t env_int(const char* name, int64_t def) {
  const char* e = std::getenv(name);
  if (e == nullptr || e[0] == '\0') return def;
  const long long v = std::strtoll(e, nullptr, 0);
  return v > 0 ? v : def;
}

struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(std::size_t n) { CK(cudaMalloc(&p, n)); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  char* c() const { return static_cast<char*>(p); }
};

// Call i of the sequence (the same on every rank).
struct Call {
  AllReduceAlgo algo;
  int dtype;  // index into kDtypes
  ReduceOp op;
  std::size_t count, offset;
};

Call make_call(uint64_t seed, int64_t i, const Communicator& comm) {
  test::SplitMix64 rng(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1)));
  auto u = [&](uint64_t n) { return rng.next() % n; };
  Call c;
  static const AllReduceAlgo algos[] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                        AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE};
  c.dtype = static_cast<int>(u(3));
  c.op = static_cast<ReduceOp>(u(3));
  // Sizes over five decades, so every algorithm's small, medium and pipelined paths come up.
  const int decade = static_cast<int>(u(5));
  const std::size_t hi = std::min<std::size_t>(kMaxCount, std::size_t(16) << (3 * decade));
  c.count = 1 + u(hi);
  c.offset = u(4) == 0 ? 1 + u(kMaxOffset) : 0;
  c.algo = algos[u(5)];
  const std::size_t bytes = c.count * dtype_size(kDtypes[c.dtype]);
  try {
    (void)resolve_all_reduce(comm, bytes, c.algo);
  } catch (const Error&) {
    c.algo = AllReduceAlgo::kAuto;  // no workspace for this pin (e.g. the copy engine at W > 2)
  }
  return c;
}

std::string describe(const Call& c, int64_t i) {
  return "call " + std::to_string(i) + ": " + all_reduce_algo_name(c.algo) + " " + dtype_name(kDtypes[c.dtype]) + " " +
         reduce_op_name(c.op) + " count " + std::to_string(c.count) + " offset " + std::to_string(c.offset);
}

size_t free_bytes() {
  size_t f = 0, t = 0;
  CK(cudaMemGetInfo(&f, &t));
  return f;
}

TEST(AllReduceSoakLoopback, ManyMixedCallsCheckedEveryN) {
  const int64_t calls = env_int("TPCOMM_SOAK_CALLS", 2000);
  const int64_t every = env_int("TPCOMM_SOAK_CHECK_EVERY", 50);
  const int W = static_cast<int>(std::min<int64_t>(8, std::max<int64_t>(2, env_int("TPCOMM_SOAK_WORLD", 2))));
  const uint64_t seed = static_cast<uint64_t>(env_int("TPCOMM_SOAK_SEED", static_cast<int64_t>(test::fresh_seed() >> 1)));
  SCOPED_TRACE("TPCOMM_SOAK_SEED=" + std::to_string(seed) + " W=" + std::to_string(W));
  CK(cudaSetDevice(kDevice));
  auto comms = Communicator::create_loopback(W, kDevice);

  // Per rank and dtype: one input of kMaxCount + kMaxOffset elements (host copy kept for the reference); per rank a
  // scratch and a check output.
  const std::size_t slot_elems = kMaxCount + kMaxOffset;
  std::vector<std::vector<std::vector<uint8_t>>> in_h(W, std::vector<std::vector<uint8_t>>(3));
  std::vector<std::vector<std::unique_ptr<DevBuf>>> in_d(W);
  std::vector<std::unique_ptr<DevBuf>> scratch(W), check(W);
  for (int r = 0; r < W; ++r) {
    for (int d = 0; d < 3; ++d) {
      in_h[r][d] = test::make_input(slot_elems, kDtypes[d], seed + d, r);
      in_d[r].push_back(std::make_unique<DevBuf>(in_h[r][d].size()));
      CK(static_cast<cudaError_t>(test::copy_to_device(in_d[r][d]->p, in_h[r][d].data(), in_h[r][d].size())));
    }
    scratch[r] = std::make_unique<DevBuf>(slot_elems * 4);
    check[r] = std::make_unique<DevBuf>(slot_elems * 4);
  }

  std::vector<std::vector<uint8_t>> results(W);
  std::atomic<int64_t> checks{0}, bad_elements{0}, rank_mismatches{0};
  std::mutex mu;
  std::string first_problem;
  size_t free_after_first = 0, free_end = 0;
  auto note = [&](const std::string& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_problem.empty()) first_problem = s;
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> errors(W);
  std::vector<std::thread> ts;
  for (int r = 0; r < W; ++r) {
    ts.emplace_back([&, r] {
      try {
        CK(cudaSetDevice(kDevice));
        Communicator& comm = *comms[r];
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        for (int64_t i = 0; i < calls; ++i) {
          const Call c = make_call(seed, i, comm);
          const DType dt = kDtypes[c.dtype];
          const std::size_t es = dtype_size(dt);
          const bool verify = i % every == every - 1 || i == calls - 1;
          char* out = (verify ? check[r] : scratch[r])->c() + c.offset * es;
          if (verify) CK(cudaMemsetAsync(check[r]->p, 0xcd, slot_elems * 4, st));
          all_reduce(comm, in_d[r][c.dtype]->c() + c.offset * es, out, c.count, dt, c.op, st, {c.algo});
          if (!verify) continue;
          comm.synchronize(st);
          results[r].resize(c.count * es);
          CK(cudaMemcpyAsync(results[r].data(), out, c.count * es, cudaMemcpyDeviceToHost, st));
          CK(cudaStreamSynchronize(st));
          comm.host_barrier();
          if (r == 0) {
            std::vector<std::vector<uint8_t>> ins(W);
            for (int q = 0; q < W; ++q)
              ins[q].assign(in_h[q][c.dtype].begin() + c.offset * es, in_h[q][c.dtype].begin() + (c.offset + c.count) * es);
            const std::vector<double> want = test::reference_all_reduce(ins, c.count, dt, c.op);
            int64_t bad = 0;
            for (std::size_t k = 0; k < c.count; ++k)
              bad += !(std::fabs(test::load_element(results[0].data(), k, dt) - want[k]) <=
                       test::all_reduce_tolerance(want[k], dt, W));
            if (bad) note(describe(c, i) + ": " + std::to_string(bad) + " elements off the reference");
            bad_elements += bad;
            for (int q = 1; q < W; ++q)
              if (results[q] != results[0]) {
                ++rank_mismatches;
                note(describe(c, i) + ": rank " + std::to_string(q) + " differs from rank 0");
              }
            ++checks;
            if (i == std::min(every, calls) - 1) free_after_first = free_bytes();
            if (i == calls - 1) free_end = free_bytes();
          }
          comm.host_barrier();
        }
        comm.synchronize(st);
        CK(cudaStreamDestroy(st));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int r = 0; r < W; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  EXPECT_EQ(bad_elements.load(), 0) << first_problem;
  EXPECT_EQ(rank_mismatches.load(), 0) << first_problem;
  EXPECT_GE(checks.load(), calls / every);
  EXPECT_GE(free_end + (size_t(2) << 20), free_after_first)
      << "device memory grew by " << (free_after_first - free_end) << " bytes over " << calls << " calls";
  std::printf("[ soak     ] all_reduce loopback W=%d: %lld calls per rank in %.1f s, %lld checked, %lld elements off, "
              "%lld rank mismatches; free device memory %zu -> %zu bytes (seed %llu)\n",
              W, static_cast<long long>(calls), secs, static_cast<long long>(checks.load()),
              static_cast<long long>(bad_elements.load()), static_cast<long long>(rank_mismatches.load()),
              free_after_first, free_end, static_cast<unsigned long long>(seed));
  for (auto& c : comms) c->destroy();
}

}  // namespace
