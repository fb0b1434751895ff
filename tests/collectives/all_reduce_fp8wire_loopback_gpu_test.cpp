// The FP8-wire all-reduce (AllReduceWire::kFp8) on a loopback world (Communicator::create_loopback: W ranks as W
// threads on one GPU): every dtype, block size (32, 128) and all-gather wire (fp8, exact) at W = 2, 3, 4 (and
// 1, 8), sum/max/min, odd sizes, in and out of place, misaligned pointers, uniform and mixed-magnitude inputs with
// zero blocks, bit for bit against the CPU reference of the same math (tests/collectives/all_reduce_fp8wire_ref),
// within the documented bound of the float64 reduction and bitwise equal across ranks; the error against the exact
// sum reported next to the exact two-shot's; graph capture and replay; interleaving with the exact algorithms on
// the shared workspace; kAuto's choice; ranks that disagree on the wire (kMismatch) or never arrive (kTimeout);
// non-finite blocks; bad options.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/all_reduce_fp8wire.h"
#include "collectives/all_reduce_fp8wire_ref.h"
#include "collectives/all_reduce_ref.h"
#include "comm/comm_impl.h"
#include "common/test_util.h"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

constexpr int kDevice = 0;
constexpr std::size_t kGuard = 256;

#define SKIP_WITHOUT_GPU()                                                   \
  do {                                                                       \
    if (test::cuda_device_count() < 1) GTEST_SKIP() << "no CUDA device";     \
  } while (0)

struct World {
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;
  explicit World(int W, const CommOptions& o = {}) : comms(Communicator::create_loopback(W, kDevice, o)) {
    cudaSetDevice(kDevice);
    streams.resize(comms.size());
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

// fn(rank) on one thread per rank; each rank's exception text ("" when it returned normally).
std::vector<std::string> on_ranks(int W, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(W);
  std::vector<std::thread> ts;
  for (int r = 0; r < W; ++r)
    ts.emplace_back([&, r] {
      try {
        cudaSetDevice(kDevice);
        fn(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
        if (errors[r].empty()) errors[r] = "exception without a message";
      }
    });
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

AllReduceOptions fp8_options(int block, bool gather_fp8, AllReduceAlgo algo = AllReduceAlgo::kTwoShot) {
  AllReduceOptions o;
  o.algo = algo;
  o.wire = AllReduceWire::kFp8;
  o.fp8_block = block;
  o.gather_wire = gather_fp8 ? AllReduceWire::kFp8 : AllReduceWire::kExact;
  return o;
}

struct Case {
  DType dtype;
  ReduceOp op;
  int block;
  bool gather_fp8;
  std::size_t count;
  bool in_place = false;
  std::size_t offset = 0;  // bytes added to both pointers (one element: not 16-byte aligned)
  bool mixed = false;      // make_fp8_wire_input (mixed magnitudes, zero blocks) instead of uniform [-1, 1)
  AllReduceAlgo algo = AllReduceAlgo::kTwoShot;
  std::string str(int W) const {
    return "W=" + std::to_string(W) + " " + dtype_name(dtype) + " " + reduce_op_name(op) + " fp8 block " +
           std::to_string(block) + (gather_fp8 ? " gather fp8" : " gather exact") + " " + all_reduce_algo_name(algo) +
           " count=" + std::to_string(count) + (in_place ? " in-place" : " out-of-place") + " offset=" +
           std::to_string(offset) + (mixed ? " mixed inputs" : " uniform inputs");
  }
};

std::vector<std::vector<uint8_t>> make_inputs(int W, const Case& c, uint64_t seed) {
  std::vector<std::vector<uint8_t>> in(W);
  for (int r = 0; r < W; ++r)
    in[r] = c.mixed ? test::make_fp8_wire_input(c.count, c.dtype, seed, r) : test::make_input(c.count, c.dtype, seed, r);
  return in;
}

// Runs one case on every rank and checks it: the FP8 wire ran (plan and return value), the guards around the
// output are untouched, rank 0's result equals the CPU reference bit for bit and lies within the error bound of
// the float64 reduction, and every rank holds the same bytes. Returns rank 0's check.
test::Fp8WireCheck run_case(World& w, const Case& c) {
  const int W = w.size();
  const std::size_t es = dtype_size(c.dtype), bytes = c.count * es;
  SCOPED_TRACE(c.str(W));
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto inputs = make_inputs(W, c, seed);
  const AllReduceOptions o = fp8_options(c.block, c.gather_fp8, c.algo);
  const AllReducePlan plan = plan_all_reduce(w[0], c.count, c.dtype, o);
  EXPECT_EQ(plan.algo, AllReduceAlgo::kTwoShot);
  EXPECT_EQ(plan.wire, AllReduceWire::kFp8);

  const std::size_t total = kGuard + c.offset + bytes + kGuard;
  std::vector<std::unique_ptr<DevBuf>> in(W), out(W);
  const uint8_t in_guard = 0x5A, out_guard = 0xFF;  // 0xFF..: NaN poison in every float type
  for (int r = 0; r < W; ++r) {
    in[r] = std::make_unique<DevBuf>(total);
    out[r] = std::make_unique<DevBuf>(total);
    std::vector<uint8_t> img_in(total, in_guard), img_out(total, out_guard);
    std::memcpy(img_in.data() + kGuard + c.offset, inputs[r].data(), bytes);
    EXPECT_EQ(test::copy_to_device(in[r]->p, img_in.data(), total), 0);
    EXPECT_EQ(test::copy_to_device(out[r]->p, img_out.data(), total), 0);
  }
  std::vector<AllReduceAlgo> ran(W, AllReduceAlgo::kNccl);
  expect_no_errors(on_ranks(W,
                            [&](int r) {
                              char* ip = in[r]->c() + kGuard + c.offset;
                              char* op = c.in_place ? ip : out[r]->c() + kGuard + c.offset;
                              ran[r] = all_reduce(w[r], ip, op, c.count, c.dtype, c.op, w.streams[r], o);
                              w[r].synchronize(w.streams[r]);
                            }),
                   "all_reduce");
  std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(total));
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(ran[r], AllReduceAlgo::kTwoShot) << "rank " << r;
    EXPECT_EQ(cudaMemcpy(got[r].data(), c.in_place ? in[r]->p : out[r]->p, total, cudaMemcpyDeviceToHost), cudaSuccess);
    const uint8_t g = c.in_place ? in_guard : out_guard;
    std::size_t bad_guard = 0;
    for (std::size_t i = 0; i < kGuard + c.offset; ++i) bad_guard += got[r][i] != g;
    for (std::size_t i = kGuard + c.offset + bytes; i < total; ++i) bad_guard += got[r][i] != g;
    EXPECT_EQ(bad_guard, 0u) << "rank " << r << ": bytes outside the output were written";
  }
  const uint8_t* res = got[0].data() + kGuard + c.offset;
  const test::Fp8WireCheck chk = test::check_fp8_wire_result(res, inputs, c.count, c.dtype, c.op, c.block, c.gather_fp8);
  EXPECT_EQ(chk.mismatches, 0u) << "elements differing from the CPU reference: " << chk.first;
  EXPECT_EQ(chk.over_bound, 0u) << "elements beyond the error bound; max |err| " << chk.error.max_abs;
  for (int r = 1; r < W; ++r)
    EXPECT_EQ(std::memcmp(got[r].data() + kGuard + c.offset, res, bytes), 0) << "rank " << r << " differs from rank 0";
  return chk;
}

class Fp8WireLoopbackMatrix : public ::testing::TestWithParam<int> {};

TEST_P(Fp8WireLoopbackMatrix, EveryDtypeBlockGatherWireSizeAndLayout) {
  SKIP_WITHOUT_GPU();
  const int W = GetParam();
  World w(W);
  ASSERT_EQ(w.size(), W);
  const std::size_t odd = 128 * static_cast<std::size_t>(W) * 3 + 17;  // owners with full, partial and no blocks
  int ran = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (int B : {32, 128})
      for (bool g : {true, false}) {
        int k = 0;
        for (std::size_t count : {std::size_t(1), std::size_t(33), odd, std::size_t(100003)}) {
          const bool mixed = (k++ % 2) == 1;
          const std::size_t es = dtype_size(dt);
          run_case(w, {dt, ReduceOp::kSum, B, g, count, false, 0, mixed});
          run_case(w, {dt, ReduceOp::kSum, B, g, count, true, 0, !mixed});
          run_case(w, {dt, ReduceOp::kSum, B, g, count, false, es, mixed});
          ran += 3;
          if (dt == DType::kBFloat16)
            for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
              run_case(w, {dt, op, B, g, count, count % 2 == 1, 0, mixed});
              ++ran;
            }
          if (HasFailure()) return;
        }
        // A larger message through kAuto (which must pick the FP8 two-shot: it fits), for two of the four
        // block / all-gather combinations per dtype (the CPU reference dominates the test's time).
        if ((B == 128) == g) {
          run_case(w, {dt, ReduceOp::kSum, B, g, (std::size_t(1) << 20) + 3, false, 0, true, AllReduceAlgo::kAuto});
          ++ran;
        }
      }
  EXPECT_GT(ran, 150);
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Fp8WireLoopbackMatrix, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "W" + std::to_string(info.param); });

TEST(Fp8WireLoopback, WorldSizesOneAndEight) {
  SKIP_WITHOUT_GPU();
  {
    World w(1);
    // W = 1: pinned, it runs (one round trip through the format); kAuto keeps the exact path (nothing crosses a wire).
    run_case(w, {DType::kBFloat16, ReduceOp::kSum, 128, true, 1000, false, 0, true});
    run_case(w, {DType::kFloat32, ReduceOp::kSum, 32, false, 1001, true, 0, false});
    EXPECT_EQ(plan_all_reduce(w[0], 1 << 20, DType::kBFloat16, fp8_options(128, true, AllReduceAlgo::kAuto)).wire,
              AllReduceWire::kExact);
  }
  {
    World w(8);
    for (bool g : {true, false}) {
      run_case(w, {DType::kBFloat16, ReduceOp::kSum, 128, g, 128 * 8 * 5 + 3, false, 0, true});
      run_case(w, {DType::kFloat32, ReduceOp::kSum, 32, g, 300007, false, 4, false});
      run_case(w, {DType::kFloat16, ReduceOp::kMax, 32, g, 7, true, 0, true});
    }
  }
}

// The runtime-world-size kernel (W = 3..8) at W = 2 as well.
TEST(Fp8WireLoopback, GenericWorldKernelAtWorldTwo) {
  SKIP_WITHOUT_GPU();
  World w(2);
  detail::set_force_generic_world_kernels(true);
  for (DType dt : {DType::kBFloat16, DType::kFloat32})
    for (bool g : {true, false}) {
      run_case(w, {dt, ReduceOp::kSum, 128, g, 100003, false, 0, true});
      run_case(w, {dt, ReduceOp::kMin, 32, g, 4099, true, dtype_size(dt), false});
    }
  detail::set_force_generic_world_kernels(false);
}

// The error against the exact (float64) sum, reported: for each block size and all-gather wire, bf16 sum at W = 2
// and 4 on 2M elements of uniform [-1, 1) inputs, next to the exact two-shot on the same inputs.
TEST(Fp8WireLoopback, ErrorAgainstTheExactSum) {
  SKIP_WITHOUT_GPU();
  for (int W : {2, 4}) {
    World w(W);
    const std::size_t count = std::size_t(2) << 20;
    const DType dt = DType::kBFloat16;
    const uint64_t seed = test::fresh_seed();
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
    const auto exact = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
    std::vector<std::unique_ptr<DevBuf>> in(W), out(W);
    for (int r = 0; r < W; ++r) {
      in[r] = std::make_unique<DevBuf>(count * 2);
      out[r] = std::make_unique<DevBuf>(count * 2);
      EXPECT_EQ(test::copy_to_device(in[r]->p, inputs[r].data(), count * 2), 0);
    }
    auto run = [&](const AllReduceOptions& o) {
      for (int r = 0; r < W; ++r) EXPECT_EQ(cudaMemset(out[r]->p, 0xFF, count * 2), cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      expect_no_errors(on_ranks(W,
                                [&](int r) {
                                  all_reduce(w[r], in[r]->p, out[r]->p, count, dt, ReduceOp::kSum, w.streams[r], o);
                                  w[r].synchronize(w.streams[r]);
                                }),
                       "all_reduce");
      std::vector<uint8_t> got(count * 2);
      EXPECT_EQ(cudaMemcpy(got.data(), out[0]->p, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      return got;
    };
    const auto exact_two = run({AllReduceAlgo::kTwoShot, false});
    const test::Fp8WireError e_exact = test::fp8_wire_error(exact_two.data(), exact, count, dt);
    std::printf("W=%d bf16 sum, %zu elements: exact two_shot        max |err| %.3e  max rel %.3e  rms rel %.3e\n", W, count,
                e_exact.max_abs, e_exact.max_rel, e_exact.rms_rel);
    for (int B : {128, 32})
      for (bool g : {true, false}) {
        const auto got = run(fp8_options(B, g));
        const test::Fp8WireCheck c = test::check_fp8_wire_result(got.data(), inputs, count, dt, ReduceOp::kSum, B, g);
        EXPECT_EQ(c.mismatches, 0u) << c.first;
        EXPECT_EQ(c.over_bound, 0u);
        // e4m3 keeps 3 mantissa bits against bf16's 7: the FP8 wire's error is far above the exact path's, and
        // below the e4m3 rounding of each of the W + 1 (FP8 all-gather) or W quantizations.
        EXPECT_GT(c.error.rms_rel, 2 * e_exact.rms_rel);
        EXPECT_LT(c.error.rms_rel, 0.06);
        std::printf("W=%d bf16 sum, %zu elements: fp8 wire B=%-3d gather %-5s max |err| %.3e  max rel %.3e  rms rel %.3e\n",
                    W, count, B, g ? "fp8" : "exact", c.error.max_abs, c.error.max_rel, c.error.rms_rel);
        const std::string key = "W" + std::to_string(W) + "_B" + std::to_string(B) + (g ? "_gather_fp8" : "_gather_exact");
        RecordProperty(key + "_rms_rel", std::to_string(c.error.rms_rel));
        RecordProperty(key + "_max_rel", std::to_string(c.error.max_rel));
      }
  }
}

// Captured in a CUDA graph (with an exact two-shot in between on the same workspace) and replayed on new inputs.
TEST(Fp8WireLoopback, GraphCaptureAndReplayWithNewInputs) {
  SKIP_WITHOUT_GPU();
  for (int W : {2, 4}) {
    World w(W);
    struct Call {
      DType dt;
      std::size_t count;
      AllReduceOptions o;
      bool fp8;
    };
    const std::vector<Call> calls = {{DType::kBFloat16, 70005, fp8_options(128, true), true},
                                     {DType::kBFloat16, 70005, {AllReduceAlgo::kTwoShot, false}, false},
                                     {DType::kFloat32, 33333, fp8_options(32, false), true},
                                     {DType::kFloat16, 4097, fp8_options(32, true, AllReduceAlgo::kAuto), true}};
    const int A = static_cast<int>(calls.size());
    std::vector<std::vector<std::unique_ptr<DevBuf>>> in(A), out(A);
    for (int a = 0; a < A; ++a)
      for (int r = 0; r < W; ++r) {
        const std::size_t bytes = calls[a].count * dtype_size(calls[a].dt);
        in[a].push_back(std::make_unique<DevBuf>(bytes));
        out[a].push_back(std::make_unique<DevBuf>(bytes));
        CUDA_OK(cudaMemset(in[a][r]->p, 0, bytes));
      }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<cudaGraph_t> g(W, nullptr);
    std::vector<cudaGraphExec_t> ge(W, nullptr);
    auto enqueue = [&](int r) {
      for (int a = 0; a < A; ++a)
        all_reduce(w[r], in[a][r]->p, out[a][r]->p, calls[a].count, calls[a].dt, ReduceOp::kSum, w.streams[r], calls[a].o);
    };
    expect_no_errors(on_ranks(W,
                              [&](int r) {
                                enqueue(r);  // eager warm-up
                                w[r].synchronize(w.streams[r]);
                                if (cudaStreamBeginCapture(w.streams[r], cudaStreamCaptureModeThreadLocal) != cudaSuccess)
                                  throw std::runtime_error("begin capture");
                                enqueue(r);
                                if (cudaStreamEndCapture(w.streams[r], &g[r]) != cudaSuccess)
                                  throw std::runtime_error("end capture");
                                if (cudaGraphInstantiate(&ge[r], g[r], 0) != cudaSuccess)
                                  throw std::runtime_error("instantiate");
                              }),
                     "capture");
    for (int round = 0; round < 3; ++round) {
      const uint64_t seed = test::fresh_seed();
      std::vector<std::vector<std::vector<uint8_t>>> inputs(A);
      for (int a = 0; a < A; ++a) {
        Case c{calls[a].dt, ReduceOp::kSum, 128, true, calls[a].count, false, 0, a % 2 == 0};
        inputs[a] = make_inputs(W, c, seed + a);
        for (int r = 0; r < W; ++r) {
          const std::size_t bytes = calls[a].count * dtype_size(calls[a].dt);
          CUDA_OK(static_cast<cudaError_t>(test::copy_to_device(in[a][r]->p, inputs[a][r].data(), bytes)));
          CUDA_OK(cudaMemset(out[a][r]->p, 0xFF, bytes));
        }
      }
      CUDA_OK(cudaDeviceSynchronize());
      expect_no_errors(on_ranks(W,
                                [&](int r) {
                                  if (cudaGraphLaunch(ge[r], w.streams[r]) != cudaSuccess)
                                    throw std::runtime_error("graph launch");
                                  w[r].synchronize(w.streams[r]);
                                }),
                       "replay");
      for (int a = 0; a < A; ++a) {
        const std::size_t count = calls[a].count, bytes = count * dtype_size(calls[a].dt);
        std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(bytes));
        for (int r = 0; r < W; ++r) CUDA_OK(cudaMemcpy(got[r].data(), out[a][r]->p, bytes, cudaMemcpyDeviceToHost));
        SCOPED_TRACE("W=" + std::to_string(W) + " call " + std::to_string(a) + " replay " + std::to_string(round));
        if (calls[a].fp8) {
          const auto c = test::check_fp8_wire_result(got[0].data(), inputs[a], count, calls[a].dt, ReduceOp::kSum,
                                                     calls[a].o.fp8_block, calls[a].o.gather_wire == AllReduceWire::kFp8);
          EXPECT_EQ(c.mismatches, 0u) << c.first;
        } else {
          const auto ref = test::reference_all_reduce(inputs[a], count, calls[a].dt, ReduceOp::kSum);
          std::size_t bad = 0;
          for (std::size_t i = 0; i < count; ++i)
            bad += !(std::fabs(test::load_element(got[0].data(), i, calls[a].dt) - ref[i]) <=
                     test::all_reduce_tolerance(ref[i], calls[a].dt, W));
          EXPECT_EQ(bad, 0u);
        }
        for (int r = 1; r < W; ++r) EXPECT_EQ(std::memcmp(got[r].data(), got[0].data(), bytes), 0) << "rank " << r;
      }
    }
    for (int r = 0; r < W; ++r) {
      cudaGraphExecDestroy(ge[r]);
      cudaGraphDestroy(g[r]);
    }
  }
}

// Back-to-back calls without host synchronization, FP8-wire variants and exact algorithms alternating on the shared
// two-shot workspace (parity halves, barrier epochs), sizes changing every call; every output checked at the end.
TEST(Fp8WireLoopback, InterleavedWithTheExactAlgorithms) {
  SKIP_WITHOUT_GPU();
  const int W = 3;
  World w(W);
  const DType dt = DType::kBFloat16;
  const std::size_t counts[3] = {4099, 65536 + 77, 500003};
  const AllReduceOptions opts[6] = {fp8_options(128, true),  {AllReduceAlgo::kTwoShot, false}, fp8_options(32, false),
                                    {AllReduceAlgo::kOneShot, false}, fp8_options(32, true), {AllReduceAlgo::kOneShotLL, false}};
  const int kCalls = 60;
  const uint64_t seed = test::fresh_seed();
  std::vector<std::vector<std::vector<uint8_t>>> inputs(3);
  std::vector<std::vector<std::unique_ptr<DevBuf>>> in(3);
  for (int k = 0; k < 3; ++k) {
    inputs[k] = make_inputs(W, Case{dt, ReduceOp::kSum, 128, true, counts[k], false, 0, k == 1}, seed + k);
    for (int r = 0; r < W; ++r) {
      in[k].push_back(std::make_unique<DevBuf>(counts[k] * 2));
      CUDA_OK(static_cast<cudaError_t>(test::copy_to_device(in[k][r]->p, inputs[k][r].data(), counts[k] * 2)));
    }
  }
  std::vector<std::vector<std::unique_ptr<DevBuf>>> out(kCalls);
  for (int i = 0; i < kCalls; ++i)
    for (int r = 0; r < W; ++r) out[i].push_back(std::make_unique<DevBuf>(counts[i % 3] * 2));
  auto size_of = [&](int i) { return (i * 7 + i / 5) % 3; };
  auto opt_of = [&](int i, std::size_t count) {
    AllReduceOptions o = opts[i % 6];
    if (o.algo == AllReduceAlgo::kOneShotLL && count * 2 > w[0].options().lamport_max_bytes) o.algo = AllReduceAlgo::kOneShot;
    return o;
  };
  for (int i = 0; i < kCalls; ++i)
    for (int r = 0; r < W; ++r) CUDA_OK(cudaMemset(out[i][r]->p, 0xFF, counts[i % 3] * 2));
  CUDA_OK(cudaDeviceSynchronize());
  expect_no_errors(on_ranks(W,
                            [&](int r) {
                              for (int i = 0; i < kCalls; ++i) {
                                const int k = size_of(i);
                                if (counts[k] > counts[i % 3]) continue;  // output buffer too small (same on every rank)
                                all_reduce(w[r], in[k][r]->p, out[i][r]->p, counts[k], dt, ReduceOp::kSum, w.streams[r],
                                           opt_of(i, counts[k]));
                              }
                              w[r].synchronize(w.streams[r]);
                            }),
                   "calls");
  int checked = 0;
  for (int i = 0; i < kCalls; ++i) {
    const int k = size_of(i);
    if (counts[k] > counts[i % 3]) continue;
    const AllReduceOptions o = opt_of(i, counts[k]);
    std::vector<std::vector<uint8_t>> got(W, std::vector<uint8_t>(counts[k] * 2));
    for (int r = 0; r < W; ++r) CUDA_OK(cudaMemcpy(got[r].data(), out[i][r]->p, counts[k] * 2, cudaMemcpyDeviceToHost));
    SCOPED_TRACE("call " + std::to_string(i) + " " + all_reduce_algo_name(o.algo) + " wire " + all_reduce_wire_name(o.wire));
    if (o.wire == AllReduceWire::kFp8) {
      const auto c = test::check_fp8_wire_result(got[0].data(), inputs[k], counts[k], dt, ReduceOp::kSum, o.fp8_block,
                                                 o.gather_wire == AllReduceWire::kFp8);
      EXPECT_EQ(c.mismatches, 0u) << c.first;
    } else {
      const auto ref = test::reference_all_reduce(inputs[k], counts[k], dt, ReduceOp::kSum);
      std::size_t bad = 0;
      for (std::size_t e = 0; e < counts[k]; ++e)
        bad += !(std::fabs(test::load_element(got[0].data(), e, dt) - ref[e]) <= test::all_reduce_tolerance(ref[e], dt, W));
      EXPECT_EQ(bad, 0u);
    }
    for (int r = 1; r < W; ++r) EXPECT_EQ(std::memcmp(got[r].data(), got[0].data(), got[0].size()), 0) << "rank " << r;
    ++checked;
  }
  EXPECT_GT(checked, 30);
}

// kAuto with the FP8 wire: runs where it fits, the exact choice elsewhere; never without the opt-in. Pinned over the
// workspace: kInvalidArgument naming count. Bad options: errors naming the argument, nothing written.
TEST(Fp8WireLoopback, AutoChoicePinnedLimitsAndBadOptions) {
  SKIP_WITHOUT_GPU();
  World w(2);
  Communicator& c0 = w[0];
  const std::size_t cap = c0.impl().two_chunk_cap;
  for (int B : {32, 128})
    for (bool g : {true, false})
      for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
        const std::size_t es = dtype_size(dt);
        // The largest count whose slots fit, found from the layout, and one block more.
        std::size_t lo = 1, hi = std::size_t(1) << 32;
        while (lo + 1 < hi) {
          const std::size_t mid = (lo + hi) / 2;
          (detail::fp8_wire_layout(mid, es, 2, B, g).slot_bytes() <= cap ? lo : hi) = mid;
        }
        const AllReducePlan fits = plan_all_reduce(c0, lo, dt, fp8_options(B, g, AllReduceAlgo::kAuto));
        EXPECT_EQ(fits.wire, AllReduceWire::kFp8);
        EXPECT_EQ(fits.algo, AllReduceAlgo::kTwoShot);
        const std::size_t over = lo + static_cast<std::size_t>(B) * 2;
        try {
          EXPECT_EQ(plan_all_reduce(c0, over, dt, fp8_options(B, g, AllReduceAlgo::kAuto)).wire, AllReduceWire::kExact);
        } catch (const Error& e) {  // a loopback world has no NCCL for a message over every exact workspace
          EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
        }
        try {
          plan_all_reduce(c0, over, dt, fp8_options(B, g));
          ADD_FAILURE() << "pinned FP8 two-shot over its workspace";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
          EXPECT_NE(std::string(e.what()).find("count"), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find("two_shot_max_bytes"), std::string::npos) << e.what();
        }
      }
  // Without the opt-in, never the FP8 wire.
  for (std::size_t count = 1; count <= (std::size_t(16) << 20); count *= 4)  // within the exact workspaces
    EXPECT_EQ(plan_all_reduce(c0, count, DType::kBFloat16).wire, AllReduceWire::kExact) << count;

  const std::size_t n = 1 << 16;
  DevBuf in(n * 4), out(n * 4);
  CUDA_OK(cudaMemset(in.p, 0x3C, n * 4));
  CUDA_OK(cudaMemset(out.p, 0x77, n * 4));
  CUDA_OK(cudaDeviceSynchronize());
  // (The count case runs in place: a 1 G-element message would otherwise "overlap" the small buffers first.)
  auto expect_error = [&](const char* what, ErrorCode code, DType dt, const AllReduceOptions& o, std::size_t count = 4096) {
    try {
      all_reduce(c0, in.p, count > n ? in.p : out.p, count, dt, ReduceOp::kSum, w.streams[0], o);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string(what) + ":"), std::string::npos) << e.what();
    }
  };
  for (AllReduceAlgo a : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kOneShotCE, AllReduceAlgo::kNccl})
    expect_error("wire", ErrorCode::kInvalidArgument, DType::kBFloat16, fp8_options(128, true, a));
  AllReduceOptions bad_block = fp8_options(64, true);
  expect_error("fp8_block", ErrorCode::kInvalidArgument, DType::kBFloat16, bad_block);
  AllReduceOptions bad_gather = fp8_options(128, true);
  bad_gather.gather_wire = static_cast<AllReduceWire>(3);
  expect_error("gather_wire", ErrorCode::kInvalidArgument, DType::kBFloat16, bad_gather);
  expect_error("dtype", ErrorCode::kInvalidArgument, DType::kFloat8E4M3, fp8_options(128, true));
  expect_error("count", ErrorCode::kInvalidArgument, DType::kBFloat16, fp8_options(128, false), std::size_t(1) << 30);
  CUDA_OK(cudaStreamSynchronize(w.streams[0]));
  std::vector<uint8_t> got(n * 4);
  CUDA_OK(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
  std::size_t changed = 0;
  for (auto b : got) changed += b != 0x77;
  EXPECT_EQ(changed, 0u) << "output bytes written by calls that failed";
  CUDA_OK(cudaMemcpy(got.data(), in.p, got.size(), cudaMemcpyDeviceToHost));
  changed = 0;
  for (auto b : got) changed += b != 0x3C;
  EXPECT_EQ(changed, 0u) << "input bytes written by calls that failed";
}

// Ranks that disagree on the wire options (or call the exact two-shot for the same size) are reported as kMismatch
// instead of reading each other's slots in the wrong format.
TEST(Fp8WireLoopback, RanksDisagreeingOnTheWireAreReported) {
  SKIP_WITHOUT_GPU();
  const std::vector<std::pair<AllReduceOptions, AllReduceOptions>> pairs = {
      {fp8_options(128, true), {AllReduceAlgo::kTwoShot, false}},
      {fp8_options(128, true), fp8_options(32, true)},
      {fp8_options(32, true), fp8_options(32, false)}};
  for (const auto& [o0, o1] : pairs) {
    World w(2);
    const std::size_t count = 8192;
    std::vector<std::unique_ptr<DevBuf>> buf;
    for (int r = 0; r < 2; ++r) {
      buf.push_back(std::make_unique<DevBuf>(count * 4));
      CUDA_OK(cudaMemset(buf[r]->p, 0, count * 4));
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<int> codes(2, -1);
    on_ranks(2, [&](int r) {
      all_reduce(w[r], buf[r]->p, buf[r]->c() + count * 2, count, DType::kBFloat16, ReduceOp::kSum, w.streams[r],
                 r == 0 ? o0 : o1);
      try {
        w[r].synchronize(w.streams[r]);
      } catch (const Error& e) {
        codes[r] = static_cast<int>(e.code());
      }
    });
    EXPECT_TRUE(codes[0] == static_cast<int>(ErrorCode::kMismatch) || codes[1] == static_cast<int>(ErrorCode::kMismatch))
        << "codes " << codes[0] << ", " << codes[1];
  }
}

// A rank that never calls: the other gets kTimeout naming it, within the limit.
TEST(Fp8WireLoopback, MissingRankIsNamedWithinTheLimit) {
  SKIP_WITHOUT_GPU();
  CommOptions o;
  o.timeout_s = 1.0;
  World w(2, o);
  DevBuf b(1 << 20);
  CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
  CUDA_OK(cudaDeviceSynchronize());
  const auto t0 = std::chrono::steady_clock::now();
  all_reduce(w[0], b.p, b.c() + (1 << 19), 65536, DType::kBFloat16, ReduceOp::kSum, w.streams[0], fp8_options(128, true));
  try {
    w[0].synchronize(w.streams[0]);
    ADD_FAILURE() << "no timeout although rank 1 never joined";
  } catch (const Error& e) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
    EXPECT_LT(secs, o.timeout_s + 2.0);
  }
}

// A block holding a NaN or an Inf on one rank is NaN on every rank (the documented rule); every other block is
// unaffected and equal to the reference.
TEST(Fp8WireLoopback, NonFiniteBlocksStayInTheirBlock) {
  SKIP_WITHOUT_GPU();
  const int W = 2;
  World w(W);
  for (DType dt : {DType::kBFloat16, DType::kFloat32})
    for (bool g : {true, false}) {
      const int B = 32;
      const std::size_t count = 4096, es = dtype_size(dt);
      const uint64_t seed = test::fresh_seed();
      std::vector<std::vector<uint8_t>> inputs(W);
      for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
      test::store_element(inputs[1].data(), 100, dt, std::nan(""));       // block 3
      test::store_element(inputs[0].data(), 2050, dt, -INFINITY);         // block 64
      const auto want = test::reference_fp8_wire_all_reduce(inputs, count, dt, ReduceOp::kSum, B, g);
      std::vector<std::unique_ptr<DevBuf>> in(W), out(W);
      for (int r = 0; r < W; ++r) {
        in[r] = std::make_unique<DevBuf>(count * es);
        out[r] = std::make_unique<DevBuf>(count * es);
        EXPECT_EQ(test::copy_to_device(in[r]->p, inputs[r].data(), count * es), 0);
      }
      expect_no_errors(on_ranks(W,
                                [&](int r) {
                                  all_reduce(w[r], in[r]->p, out[r]->p, count, dt, ReduceOp::kSum, w.streams[r],
                                             fp8_options(B, g));
                                  w[r].synchronize(w.streams[r]);
                                }),
                       "all_reduce");
      for (int r = 0; r < W; ++r) {
        std::vector<uint8_t> got(count * es);
        CUDA_OK(cudaMemcpy(got.data(), out[r]->p, got.size(), cudaMemcpyDeviceToHost));
        std::size_t bad = 0;
        for (std::size_t i = 0; i < count; ++i) {
          const std::size_t blk = i / B;
          const double x = test::load_element(got.data(), i, dt);
          if (blk == 3 || blk == 64) bad += !std::isnan(x) || !std::isnan(test::load_element(want.data(), i, dt));
          else bad += std::memcmp(got.data() + i * es, want.data() + i * es, es) != 0;
        }
        EXPECT_EQ(bad, 0u) << dtype_name(dt) << (g ? " gather fp8" : " gather exact") << " rank " << r;
      }
    }
}

}  // namespace
