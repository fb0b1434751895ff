// All-reduce on a loopback world (Communicator::create_loopback: W ranks as W threads on ONE GPU): every fast
// algorithm at W = 2, 3 and 4 (and a smoke run at W = 1 and 8), bf16/f16/f32, sum/max/min, odd sizes, in and out of
// place, misaligned pointers, zero copy, against the float64 reference and bitwise equal across ranks; graph capture
// and replay with new inputs; a rank that never calls (kTimeout naming it, within the limit, on the device and on
// the host); what a world without NCCL refuses; the grids divided so that every rank's grid is resident.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/all_reduce_ref.h"
#include "comm/comm_impl.h"
#include "common/test_util.h"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

constexpr int kDevice = 0;
constexpr std::size_t kGuard = 256;

// W communicators on device 0, one non-blocking stream per rank.
struct World {
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;
  explicit World(int W, const CommOptions& o = {}) : comms(Communicator::create_loopback(W, kDevice, o)) {
    cudaSetDevice(kDevice);
    streams.resize(W);
    for (auto& s : streams) cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  }
  ~World() {
    for (auto s : streams) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
  int size() const { return static_cast<int>(comms.size()); }
  Communicator& operator[](int r) const { return *comms[r]; }
};

// Runs fn(rank) on one thread per rank (collectives need every rank at once); returns each rank's exception text
// ("" when it returned normally).
std::vector<std::string> on_ranks(int W, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(W);
  std::vector<std::thread> ts;
  for (int r = 0; r < W; ++r) {
    ts.emplace_back([&, r] {
      try {
        cudaSetDevice(kDevice);
        fn(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
        if (errors[r].empty()) errors[r] = "exception without a message";
      }
    });
  }
  for (auto& t : ts) t.join();
  return errors;
}
void expect_no_errors(const std::vector<std::string>& errors, const std::string& what) {
  for (std::size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << what << ": rank " << r;
}

struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(std::size_t n) {
    if (cudaMalloc(&p, n) != cudaSuccess) throw std::runtime_error("cudaMalloc of " + std::to_string(n) + " bytes");
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  char* c() const { return static_cast<char*>(p); }
};

bool pinnable(const Communicator& comm, std::size_t bytes, AllReduceAlgo algo) {
  try {
    (void)resolve_all_reduce(comm, bytes, algo);
    return true;
  } catch (const Error&) {
    return false;
  }
}

struct Case {
  DType dtype;
  ReduceOp op;
  AllReduceAlgo algo;
  std::size_t count;
  bool in_place;
  std::size_t offset;  // bytes added to both pointers (one element: misaligned for 16-byte vectors)
  bool zero_copy = false;
  std::string str(int W) const {
    return "W=" + std::to_string(W) + " " + dtype_name(dtype) + " " + reduce_op_name(op) + " " +
           all_reduce_algo_name(algo) + (zero_copy ? "(zero-copy)" : "") + " count=" + std::to_string(count) +
           (in_place ? " in-place" : " out-of-place") + " offset=" + std::to_string(offset);
  }
};

// One registered buffer per rank for the zero-copy cases (registered once per world, collectively).
struct ZeroCopyArena {
  static constexpr std::size_t kBytes = std::size_t(8) << 20;
  std::vector<std::unique_ptr<DevBuf>> bufs;
  explicit ZeroCopyArena(World& w) {
    for (int r = 0; r < w.size(); ++r) bufs.push_back(std::make_unique<DevBuf>(kBytes));
    expect_no_errors(on_ranks(w.size(), [&](int r) { register_buffer(w[r], bufs[r]->p, kBytes); }), "register_buffer");
  }
};

// Runs one case on every rank and checks: each element within the tolerance of the float64 reference, the guards
// around the output untouched, the results bitwise identical on all ranks, the pinned algorithm the one that ran.
// Returns false (nothing run) when the pinned algorithm cannot take this size on this world.
bool run_case(World& w, const Case& c, ZeroCopyArena* arena = nullptr) {
  const int W = w.size();
  const std::size_t es = dtype_size(c.dtype), bytes = c.count * es;
  if (!pinnable(w[0], bytes, c.algo)) return false;
  SCOPED_TRACE(c.str(W));
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r) inputs[r] = test::make_input(c.count, c.dtype, seed, r);
  const std::vector<double> ref = test::reference_all_reduce(inputs, c.count, c.dtype, c.op);

  const std::size_t total = kGuard + c.offset + bytes + kGuard;
  std::vector<std::unique_ptr<DevBuf>> in_own(W), out(W);
  std::vector<char*> in_base(W);
  for (int r = 0; r < W; ++r) {
    if (c.zero_copy) {
      in_base[r] = arena->bufs[r]->c();
    } else {
      in_own[r] = std::make_unique<DevBuf>(total);
      in_base[r] = in_own[r]->c();
    }
    out[r] = std::make_unique<DevBuf>(total);
  }
  // Inputs and poisoned outputs, uploaded while no rank has work in flight (a synchronous copy waits for the
  // whole device, and on a loopback world the whole device is every rank).
  for (int r = 0; r < W; ++r) {
    std::vector<uint8_t> img_in(total, 0x5A), img_out(total, 0xFF);
    std::memcpy(img_in.data() + kGuard + c.offset, inputs[r].data(), bytes);
    EXPECT_EQ(cudaMemcpy(in_base[r], img_in.data(), total, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(out[r]->p, img_out.data(), total, cudaMemcpyHostToDevice), cudaSuccess);
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<AllReduceAlgo> ran(W, AllReduceAlgo::kAuto);
  expect_no_errors(on_ranks(W,
                            [&](int r) {
                              char* in_ptr = in_base[r] + kGuard + c.offset;
                              char* out_ptr = c.in_place ? in_ptr : out[r]->c() + kGuard + c.offset;
                              ran[r] = all_reduce(w[r], in_ptr, out_ptr, c.count, c.dtype, c.op, w.streams[r],
                                                  {c.algo, c.zero_copy});
                              w[r].synchronize(w.streams[r]);
                            }),
                   "all_reduce");
  std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(total));
  for (int r = 0; r < W; ++r)
    EXPECT_EQ(cudaMemcpy(got[r].data(), c.in_place ? in_base[r] : out[r]->p, total, cudaMemcpyDeviceToHost), cudaSuccess);
  const uint8_t guard_byte = c.in_place ? 0x5A : 0xFF;
  for (int r = 0; r < W; ++r) {
    if (c.algo != AllReduceAlgo::kAuto) EXPECT_EQ(ran[r], c.algo) << "rank " << r;
    EXPECT_NE(ran[r], AllReduceAlgo::kNccl) << "rank " << r;
    EXPECT_EQ(ran[r], ran[0]) << "ranks ran different algorithms";
    std::size_t bad_guard = 0;
    for (std::size_t i = 0; i < kGuard + c.offset; ++i) bad_guard += got[r][i] != guard_byte;
    for (std::size_t i = kGuard + c.offset + bytes; i < total; ++i) bad_guard += got[r][i] != guard_byte;
    EXPECT_EQ(bad_guard, 0u) << "rank " << r << ": bytes outside the output were written";
  }
  const uint8_t* res = got[0].data() + kGuard + c.offset;
  std::size_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < c.count; ++i) {
    const double x = test::load_element(res, i, c.dtype);
    const double err = std::fabs(x - ref[i]);
    if (!(err <= test::all_reduce_tolerance(ref[i], c.dtype, W))) {
      if (bad < 3) ADD_FAILURE() << "element " << i << ": got " << x << ", float64 reference " << ref[i];
      ++bad;
    }
    worst = std::max(worst, std::isnan(err) ? INFINITY : err);
  }
  EXPECT_EQ(bad, 0u) << "worst error " << worst;
  for (int r = 1; r < W; ++r)
    EXPECT_EQ(std::memcmp(got[r].data() + kGuard + c.offset, res, bytes), 0) << "rank " << r << " differs from rank 0";
  return true;
}

int gpus() { return test::cuda_device_count(); }

class AllReduceLoopbackMatrix : public ::testing::TestWithParam<int> {};

TEST_P(AllReduceLoopbackMatrix, EveryAlgorithmDtypeOpAndSize) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  const int W = GetParam();
  World w(W);
  ASSERT_TRUE(w[0].loopback());
  ZeroCopyArena arena(w);
  int ran = 0, idx = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    const std::size_t es = dtype_size(dt);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      // 1 and 7: below one vector; 1023: odd tail; 70001 / 300001: several blocks, 300001 x 2 bytes is the pipelined
      // barrier-free kernel (> 512 KiB); (1 << 20) + 3: above the barrier-free workspace.
      for (std::size_t count : {std::size_t(1), std::size_t(7), std::size_t(1023), std::size_t(70001),
                                std::size_t(300001), (std::size_t(1) << 20) + 3}) {
        for (AllReduceAlgo algo : {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                   AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE}) {
          ++idx;
          const bool in_place = idx % 2 == 0;
          const std::size_t off = idx % 3 == 0 ? es : 0;
          ran += run_case(w, {dt, op, algo, count, in_place, off});
        }
        // Zero copy: peers read each rank's registered buffer directly.
        if (count * es + 2 * kGuard <= ZeroCopyArena::kBytes)
          ran += run_case(w, {dt, op, AllReduceAlgo::kOneShot, count, false, 0, true}, &arena);
        if (HasFailure()) return;  // one broken case is enough to read; the rest would repeat it
      }
    }
  }
  EXPECT_GT(ran, 150);
  const CommStats st = w[0].stats();
  EXPECT_EQ(st.nccl_calls, 0u);
  EXPECT_EQ(st.nccl_fallbacks, 0u);
  EXPECT_GT(st.fast_calls, 150u);
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, AllReduceLoopbackMatrix, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "W" + std::to_string(info.param); });

// The smallest and the largest world: every algorithm once (bf16 sum and f32 max, odd size).
TEST(AllReduceLoopback, WorldSizesOneAndEight) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  for (int W : {1, 8}) {
    World w(W);
    int ran = 0;
    for (AllReduceAlgo algo : {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                               AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE}) {
      ran += run_case(w, {DType::kBFloat16, ReduceOp::kSum, algo, 100003, false, 0});
      ran += run_case(w, {DType::kFloat32, ReduceOp::kMax, algo, 4097, true, 4});
    }
    EXPECT_GE(ran, 8) << "W=" << W;
  }
}

// The generic-world kernels (W = 3..8) at W = 2 as well, on one GPU.
TEST(AllReduceLoopback, GenericWorldKernelsAtWorldTwo) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  World w(2);
  detail::set_force_generic_world_kernels(true);
  int ran = 0;
  for (AllReduceAlgo algo : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot,
                             AllReduceAlgo::kOneShotCE})
    for (std::size_t count : {std::size_t(1023), std::size_t(300001)})
      ran += run_case(w, {DType::kBFloat16, ReduceOp::kSum, algo, count, false, 2});
  detail::set_force_generic_world_kernels(false);
  EXPECT_GE(ran, 7);
}

// Every rank's grid of every all-reduce kernel is resident at once: the grids were divided by the world size.
TEST(AllReduceLoopback, GridsAreDividedSoAllRanksAreResident) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  int sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, kDevice));
  for (int W : {2, 4, 8}) {
    World w(W);
    const detail::CommImpl& c = w[0].impl();
    const int per_sm = detail::all_reduce_min_ctas_per_sm(c.threads);
    ASSERT_GE(per_sm, 1);
    EXPECT_LE(int64_t(c.blocks) * W, int64_t(per_sm) * sms) << "W=" << W;
    EXPECT_LE(int64_t(c.ll_blocks) * W, int64_t(per_sm) * sms) << "W=" << W;
    EXPECT_EQ(detail::loopback_max_ctas(c, per_sm), per_sm * sms / W);
    // One share stays free for the copy kernels of the copy-engine one-shot and other work.
    EXPECT_LE(int64_t(c.blocks) * (W + 1), int64_t(per_sm) * sms) << "W=" << W;
    for (int r = 1; r < W; ++r) {
      EXPECT_EQ(w[r].impl().blocks, c.blocks);  // the grid is part of the cross-rank protocol
      EXPECT_EQ(w[r].impl().ll_blocks, c.ll_blocks);
    }
  }
}

TEST(AllReduceLoopback, TopologyAndWhatAWorldWithoutNcclRefuses) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  World w(3);
  for (int r = 0; r < 3; ++r) {
    const Topology& t = w[r].topology();
    EXPECT_TRUE(t.loopback);
    EXPECT_TRUE(t.fast_path);
    EXPECT_TRUE(t.probe_ok);
    EXPECT_TRUE(t.peer_access);
    EXPECT_FALSE(t.nvlink);
    EXPECT_EQ(t.reason, "");
    EXPECT_EQ(t.world_size, 3);
    EXPECT_EQ(w[r].rank(), r);
    EXPECT_EQ(w[r].world_size(), 3);
    EXPECT_EQ(w[r].device(), kDevice);
    try {
      (void)w[r].nccl();
      ADD_FAILURE() << "nccl() returned on a loopback world";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("loopback world has no NCCL communicator"), std::string::npos) << e.what();
    }
  }
  DevBuf b(4096);
  try {
    all_reduce(w[0], b.p, b.p, 16, DType::kFloat32, ReduceOp::kSum, w.streams[0], {AllReduceAlgo::kNccl, false});
    ADD_FAILURE() << "pinned NCCL ran on a loopback world";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("nccl"), std::string::npos) << e.what();
  }
  // kAuto never picks NCCL: up to the largest workspace a fast algorithm, beyond it an error naming count.
  const CommOptions& o = w[0].options();
  const std::size_t largest = std::max({o.two_shot_max_bytes, o.one_shot_max_bytes, o.lamport_max_bytes});
  for (std::size_t bytes : {std::size_t(16), std::size_t(1) << 20, std::size_t(8) << 20, largest})
    EXPECT_NE(resolve_all_reduce(w[0], bytes), AllReduceAlgo::kNccl) << bytes;
  try {
    resolve_all_reduce(w[0], largest + 16);
    ADD_FAILURE() << "a message above every workspace resolved";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("count"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::to_string(largest)), std::string::npos) << e.what();
  }
}

TEST(AllReduceLoopback, CreationArgumentsAreChecked) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  auto expect_arg = [](const char* arg, const std::function<void()>& fn) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << arg;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
    }
  };
  expect_arg("world_size", [] { Communicator::create_loopback(0, kDevice); });
  expect_arg("world_size", [] { Communicator::create_loopback(9, kDevice); });
  expect_arg("device", [] { Communicator::create_loopback(2, 1000); });
  CommOptions o;
  o.force_nccl = true;
  expect_arg("force_nccl", [&] { Communicator::create_loopback(2, kDevice, o); });
  CommOptions t;
  t.timeout_s = -1;
  expect_arg("timeout_s", [&] { Communicator::create_loopback(2, kDevice, t); });  // fails on every rank, no hang
}

// Captured once per rank, replayed three times on fresh inputs (every algorithm this world can pin).
TEST(AllReduceLoopback, GraphCaptureAndReplayWithNewInputs) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  for (int W : {2, 4}) {
    World w(W);
    const std::size_t count = 70000 + 5;
    const DType dt = DType::kBFloat16;
    const std::size_t bytes = count * 2;
    std::vector<AllReduceAlgo> algos = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                        AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE};
    for (auto& a : algos)
      if (!pinnable(w[0], bytes, a)) a = AllReduceAlgo::kAuto;  // the copy-engine one-shot above W = 2
    const int A = static_cast<int>(algos.size());
    std::vector<std::unique_ptr<DevBuf>> in(W), outs(W);
    for (int r = 0; r < W; ++r) {
      in[r] = std::make_unique<DevBuf>(bytes);
      outs[r] = std::make_unique<DevBuf>(A * bytes);
      CUDA_OK(cudaMemset(in[r]->p, 0, bytes));
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<cudaGraph_t> g(W, nullptr);
    std::vector<cudaGraphExec_t> ge(W, nullptr);
    expect_no_errors(on_ranks(W,
                              [&](int r) {
                                auto s = w.streams[r];
                                for (int a = 0; a < A; ++a)  // eager warm-up
                                  all_reduce(w[r], in[r]->p, outs[r]->c() + a * bytes, count, dt, ReduceOp::kSum, s,
                                             {algos[a], false});
                                w[r].synchronize(s);
                                if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
                                  throw std::runtime_error("begin capture");
                                for (int a = 0; a < A; ++a)
                                  all_reduce(w[r], in[r]->p, outs[r]->c() + a * bytes, count, dt, ReduceOp::kSum, s,
                                             {algos[a], false});
                                if (cudaStreamEndCapture(s, &g[r]) != cudaSuccess) throw std::runtime_error("end capture");
                                if (cudaGraphInstantiate(&ge[r], g[r], 0) != cudaSuccess)
                                  throw std::runtime_error("instantiate");
                              }),
                     "capture");
    for (int round = 0; round < 3; ++round) {
      const uint64_t seed = test::fresh_seed();
      std::vector<std::vector<uint8_t>> inputs(W);
      for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
      const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
      for (int r = 0; r < W; ++r) {
        CUDA_OK(cudaMemcpy(in[r]->p, inputs[r].data(), bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemset(outs[r]->p, 0xFF, A * bytes));
      }
      CUDA_OK(cudaDeviceSynchronize());
      expect_no_errors(on_ranks(W,
                                [&](int r) {
                                  if (cudaGraphLaunch(ge[r], w.streams[r]) != cudaSuccess)
                                    throw std::runtime_error("graph launch");
                                  w[r].synchronize(w.streams[r]);
                                }),
                       "replay");
      std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(A * bytes));
      for (int r = 0; r < W; ++r)
        CUDA_OK(cudaMemcpy(got[r].data(), outs[r]->p, A * bytes, cudaMemcpyDeviceToHost));
      for (int a = 0; a < A; ++a) {
        std::size_t bad = 0;
        for (std::size_t i = 0; i < count; ++i)
          bad += !(std::fabs(test::load_element(got[0].data() + a * bytes, i, dt) - ref[i]) <=
                   test::all_reduce_tolerance(ref[i], dt, W));
        EXPECT_EQ(bad, 0u) << "W=" << W << " " << all_reduce_algo_name(algos[a]) << " replay " << round;
        for (int r = 1; r < W; ++r)
          EXPECT_EQ(std::memcmp(got[r].data() + a * bytes, got[0].data() + a * bytes, bytes), 0)
              << "W=" << W << " " << all_reduce_algo_name(algos[a]) << " rank " << r << " replay " << round;
      }
    }
    for (int r = 0; r < W; ++r) {
      cudaGraphExecDestroy(ge[r]);
      cudaGraphDestroy(g[r]);
    }
  }
}

// A rank that never calls: the others' kernels give up within the timeout and the error names it (each algorithm,
// on a fresh world: a timeout leaves the communicators unusable, and says so).
TEST(AllReduceLoopback, MissingRankTimesOutNamingItWithinTheLimit) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  for (int W : {2, 3}) {
    for (AllReduceAlgo algo : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot,
                               AllReduceAlgo::kOneShotCE}) {
      CommOptions o;
      o.timeout_s = 0.5;
      World w(W, o);
      if (!pinnable(w[0], 8192, algo)) continue;
      SCOPED_TRACE("W=" + std::to_string(W) + " " + all_reduce_algo_name(algo));
      const int missing = W - 1;
      std::vector<std::unique_ptr<DevBuf>> b(W);
      for (int r = 0; r < W; ++r) {
        b[r] = std::make_unique<DevBuf>(1 << 20);
        CUDA_OK(cudaMemset(b[r]->p, 0, 1 << 20));
      }
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<std::string> what(W);
      std::vector<int> code(W, 0);
      std::vector<double> secs(W, 0);
      on_ranks(W, [&](int r) {
        if (r == missing) return;
        const auto t0 = std::chrono::steady_clock::now();
        all_reduce(w[r], b[r]->p, b[r]->c() + (1 << 19), 4096, DType::kBFloat16, ReduceOp::kSum, w.streams[r],
                   {algo, false});
        try {
          w[r].synchronize(w.streams[r]);
        } catch (const Error& e) {
          what[r] = e.what();
          code[r] = static_cast<int>(e.code());
        }
        secs[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      });
      for (int r = 0; r < W; ++r) {
        if (r == missing) continue;
        EXPECT_EQ(code[r], static_cast<int>(ErrorCode::kTimeout)) << "rank " << r << ": " << what[r];
        EXPECT_NE(what[r].find("rank " + std::to_string(missing) + " did not arrive"), std::string::npos) << what[r];
        EXPECT_LT(secs[r], o.timeout_s + 2.0) << "rank " << r;
        EXPECT_THROW(all_reduce(w[r], b[r]->p, b[r]->p, 16, DType::kFloat32, ReduceOp::kSum, w.streams[r]), Error);
      }
    }
  }
}

// The host exchange has the same rule: a rank that does not come to a barrier is named within the timeout.
TEST(AllReduceLoopback, MissingRankAtAHostBarrierTimesOutNamingIt) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  CommOptions o;
  o.timeout_s = 0.5;
  World w(3, o);
  const auto t0 = std::chrono::steady_clock::now();
  const auto errors = on_ranks(3, [&](int r) {
    if (r != 1) w[r].host_barrier();
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int r : {0, 2}) {
    EXPECT_NE(errors[r].find("timeout"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("rank 1 did not arrive within 0.5 s"), std::string::npos) << errors[r];
  }
  EXPECT_EQ(errors[1], "");
  EXPECT_LT(secs, o.timeout_s + 2.0);
  // Rank 1 arriving late fails at once too (nobody is waiting for it any more).
  try {
    std::vector<uint32_t> all(3);
    uint32_t v = 1;
    w[1].host_all_gather(&v, all.data(), sizeof(v));
    ADD_FAILURE() << "the late rank's host exchange succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
  }
}

// Many back-to-back calls without host synchronization, sizes and algorithms changing every call (the grids and the
// per-block state of every algorithm interleave on one GPU), checked at the end.
TEST(AllReduceLoopback, ThousandMixedCallsNoHang) {
  if (gpus() < 1) GTEST_SKIP() << "no CUDA device";
  constexpr int W = 4;
  World w(W);
  const DType dt = DType::kBFloat16;
  const std::size_t counts[3] = {4096, 32771, 300001};
  const AllReduceAlgo algos[4] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                  AllReduceAlgo::kTwoShot};
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<std::vector<double>> refs(3);
  std::vector<std::vector<std::unique_ptr<DevBuf>>> ins(W), outs(W);
  for (int k = 0; k < 3; ++k) {
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(counts[k], dt, seed + k, r);
    refs[k] = test::reference_all_reduce(inputs, counts[k], dt, ReduceOp::kSum);
    for (int r = 0; r < W; ++r) {
      ins[r].push_back(std::make_unique<DevBuf>(counts[k] * 2));
      outs[r].push_back(std::make_unique<DevBuf>(counts[k] * 2 * 4));
      CUDA_OK(cudaMemcpy(ins[r][k]->p, inputs[r].data(), counts[k] * 2, cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemset(outs[r][k]->p, 0xFF, counts[k] * 2 * 4));
    }
  }
  CUDA_OK(cudaDeviceSynchronize());
  const auto t0 = std::chrono::steady_clock::now();
  expect_no_errors(on_ranks(W,
                            [&](int r) {
                              for (int it = 0; it < 1000; ++it) {
                                const int k = (it * 7 + it / 4) % 3;
                                const int a = it % 4;
                                all_reduce(w[r], ins[r][k]->p, outs[r][k]->c() + a * counts[k] * 2, counts[k], dt,
                                           ReduceOp::kSum, w.streams[r], {algos[a], false});
                              }
                              w[r].synchronize(w.streams[r]);
                            }),
                   "1000 calls");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
  std::size_t bad = 0;
  for (int k = 0; k < 3; ++k) {
    std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(counts[k] * 2 * 4));
    for (int r = 0; r < W; ++r) CUDA_OK(cudaMemcpy(got[r].data(), outs[r][k]->p, got[r].size(), cudaMemcpyDeviceToHost));
    for (int a = 0; a < 4; ++a)
      for (std::size_t i = 0; i < counts[k]; ++i)
        bad += !(std::fabs(test::load_element(got[0].data() + a * counts[k] * 2, i, dt) - refs[k][i]) <=
                 test::all_reduce_tolerance(refs[k][i], dt, W));
    for (int r = 1; r < W; ++r) EXPECT_EQ(got[r], got[0]) << "rank " << r << " size " << counts[k];
  }
  EXPECT_EQ(bad, 0u);
}

}  // namespace
