// Multi-process all-reduce tests (one process per GPU): every dtype, op and algorithm against a float64
// reference and NCCL on fresh random data; bitwise equality across ranks; graph capture; long runs; the
// forced-NCCL mode; timeouts; size mismatches; bad input.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "collectives/all_reduce_fp8wire_ref.h"
#include "collectives/all_reduce_ref.h"
#include "common/mp.h"
#include "comm/comm_impl.h"
#include "common/test_util.h"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;
using tpcomm::test::mp_comm;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

struct DevBuf {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit DevBuf(std::size_t n) : bytes(n) {
    if (cudaMalloc(&p, n) != cudaSuccess) throw std::runtime_error("cudaMalloc");
  }
  ~DevBuf() { cudaFree(p); }
  char* c() const { return static_cast<char*>(p); }
};

uint64_t shared_seed(const Communicator& comm) {
  const uint64_t mine = tpcomm::test::fresh_seed();
  std::vector<uint64_t> all(comm.world_size());
  comm.host_all_gather(&mine, all.data(), sizeof(mine));
  return all[0];
}

uint64_t fnv(const uint8_t* p, std::size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

bool same_on_all_ranks(const Communicator& comm, uint64_t v) {
  std::vector<uint64_t> all(comm.world_size());
  comm.host_all_gather(&v, all.data(), sizeof(v));
  for (auto x : all)
    if (x != all[0]) return false;
  return true;
}

bool all_ranks_ok(const Communicator& comm, bool ok) {
  int32_t v = ok ? 1 : 0;
  std::vector<int32_t> all(comm.world_size());
  comm.host_all_gather(&v, all.data(), sizeof(v));
  for (auto x : all)
    if (!x) return false;
  return true;
}

struct Case {
  DType dtype;
  ReduceOp op;
  AllReduceAlgo algo;
  bool zero_copy;
  std::size_t count;
  bool in_place;
  std::size_t offset;  // bytes added to both pointers (misaligns them by one element)
  std::string str() const {
    return std::string(dtype_name(dtype)) + " " + reduce_op_name(op) + " " + all_reduce_algo_name(algo) +
           (zero_copy ? "(zero-copy)" : "") + " count=" + std::to_string(count) + (in_place ? " in-place" : " out-of-place") +
           " offset=" + std::to_string(offset);
  }
};

constexpr std::size_t kGuard = 256;

// Whether `algo` can run `bytes` on this communicator: a pinned algorithm over its workspace cannot, nor the
// copy-engine one-shot above W = 2 (no workspace; pinning it is an error naming CommOptions::copy_engine_max_bytes).
bool pinnable(const Communicator& comm, std::size_t bytes, AllReduceAlgo algo) {
  try {
    (void)resolve_all_reduce(comm, bytes, algo);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// One long-lived registered buffer for the zero-copy cases (how vLLM-style users register: a few large
// buffers once, not many small ones; small cudaMalloc blocks can share an IPC chunk that maps only once).
void* zero_copy_arena(const Communicator& comm, std::size_t bytes) {
  static void* arena = nullptr;
  static std::size_t arena_bytes = 0;
  if (arena == nullptr) {
    arena_bytes = std::size_t(32) << 20;
    if (cudaMalloc(&arena, arena_bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc arena");
    register_buffer(comm, arena, arena_bytes);
  }
  if (bytes > arena_bytes) throw std::runtime_error("zero-copy case larger than the arena");
  return arena;
}

// Runs one case and checks: every element within tolerance of the float64 reference (plus NCCL's stepwise
// rounding when the call ran through NCCL), within 2x tolerance of NCCL (plus its stepwise rounding), guards
// around the output untouched, results bitwise identical on all ranks. Returns false when
// the case cannot run with this configuration (pinned algorithm over its workspace), identically on all ranks.
bool run_case(const Communicator& comm, const Case& c, cudaStream_t s) {
  const int W = comm.world_size(), R = comm.rank();
  const std::size_t es = dtype_size(c.dtype), bytes = c.count * es;
  if (!pinnable(comm, bytes, c.algo)) return false;
  SCOPED_TRACE(c.str());
  const uint64_t seed = shared_seed(comm);
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r) inputs[r] = test::make_input(c.count, c.dtype, seed, r);
  const std::vector<double> ref = test::reference_all_reduce(inputs, c.count, c.dtype, c.op);
  const std::vector<double> abs_sum = test::reference_abs_sum(inputs, c.count, c.dtype);

  const std::size_t total = kGuard + c.offset + bytes + kGuard;
  DevBuf in_own(total), out(total), nccl_out(total);
  void* in_base = c.zero_copy ? zero_copy_arena(comm, total) : in_own.p;
  struct { void* p; char* c() const { return static_cast<char*>(p); } } in{in_base};
  std::vector<uint8_t> img_in(total, 0x5A), img_out(total, 0xFF);
  std::memcpy(img_in.data() + kGuard + c.offset, inputs[R].data(), bytes);
  EXPECT_EQ(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, img_in.data(), total)), cudaSuccess);
  EXPECT_EQ(static_cast<cudaError_t>(tpcomm::test::copy_to_device(out.p, img_out.data(), total)), cudaSuccess);
  EXPECT_EQ(static_cast<cudaError_t>(tpcomm::test::copy_to_device(nccl_out.p, img_out.data(), total)), cudaSuccess);
  char* in_ptr = in.c() + kGuard + c.offset;
  char* out_ptr = c.in_place ? in_ptr : out.c() + kGuard + c.offset;

  all_reduce(comm, in_ptr, nccl_out.c() + kGuard + c.offset, c.count, c.dtype, c.op, s, {AllReduceAlgo::kNccl, false});
  const AllReduceAlgo ran = all_reduce(comm, in_ptr, out_ptr, c.count, c.dtype, c.op, s, {c.algo, c.zero_copy});
  comm.synchronize(s);
  if (c.algo != AllReduceAlgo::kAuto) EXPECT_EQ(ran, c.algo);

  std::vector<uint8_t> got(total), ncl(total);
  EXPECT_EQ(cudaMemcpy(got.data(), c.in_place ? in.p : out.p, total, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(ncl.data(), nccl_out.p, total, cudaMemcpyDeviceToHost), cudaSuccess);
  const uint8_t guard_byte = c.in_place ? 0x5A : 0xFF;
  std::size_t bad_guard = 0;
  for (std::size_t i = 0; i < kGuard + c.offset; ++i) bad_guard += got[i] != guard_byte;
  for (std::size_t i = kGuard + c.offset + bytes; i < total; ++i) bad_guard += got[i] != guard_byte;
  EXPECT_EQ(bad_guard, 0u) << "bytes outside the output were written";
  std::size_t bad = 0, bad_nccl = 0;
  double worst = 0;
  const uint8_t* res = got.data() + kGuard + c.offset;
  const uint8_t* nres = ncl.data() + kGuard + c.offset;
  for (std::size_t i = 0; i < c.count; ++i) {
    const double x = test::load_element(res, i, c.dtype);
    const double tol = test::all_reduce_tolerance(ref[i], c.dtype, W);
    // NCCL rounds after every addition of a sum (stepwise_rounding_slack); max and min are exact either way.
    const double slack = c.op == ReduceOp::kSum ? test::stepwise_rounding_slack(abs_sum[i], c.dtype, W) : 0.0;
    const double err = std::fabs(x - ref[i]);
    if (!(err <= (ran == AllReduceAlgo::kNccl ? tol + slack : tol))) {
      if (bad < 3) ADD_FAILURE() << "element " << i << ": got " << x << ", float64 reference " << ref[i];
      ++bad;
    }
    worst = std::max(worst, std::isnan(err) ? INFINITY : err);
    const double y = test::load_element(nres, i, c.dtype);
    if (!(std::fabs(x - y) <= 2 * tol + slack)) ++bad_nccl;
  }
  EXPECT_EQ(bad, 0u) << "worst error " << worst;
  EXPECT_EQ(bad_nccl, 0u) << "elements differing from NCCL by more than the tolerance";
  EXPECT_TRUE(same_on_all_ranks(comm, fnv(res, bytes))) << "results differ between ranks";
  return true;
}

class AllReduceMatrix : public ::testing::TestWithParam<DType> {};

TEST_P(AllReduceMatrix, EveryOpAlgorithmSizeLayout) {
  Communicator& comm = mp_comm();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const DType dt = GetParam();
  const std::size_t es = dtype_size(dt);
  int ran = 0;
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    for (std::size_t count : {std::size_t(1), std::size_t(7), std::size_t(1023), (std::size_t(1) << 20) + 3}) {
      for (AllReduceAlgo algo : {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot,
                                 AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE, AllReduceAlgo::kNccl}) {
        for (bool zc : {false, true}) {
          if (zc && algo != AllReduceAlgo::kOneShot) continue;
          for (bool in_place : {false, true}) {
            if (zc && in_place) continue;
            for (std::size_t off : {std::size_t(0), es}) {
              if (zc && off) continue;  // zero-copy needs 16-byte aligned inputs (rejected: see BadInput)
              ran += run_case(comm, {dt, op, algo, zc, count, in_place, off}, s);
            }
          }
        }
      }
    }
  }
  EXPECT_GT(ran, 100);
  cudaStreamDestroy(s);
}

// The kernels for W = 3..8 read the world size at run time; run them at W = 2 on this machine (bf16, all
// ops, algorithms, sizes and layouts).
TEST(AllReduceGenericWorld, RuntimeWorldSizeKernelsMatchTheReference) {
  Communicator& comm = mp_comm();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  detail::set_force_generic_world_kernels(true);
  int ran = 0;
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax})
    for (std::size_t count : {std::size_t(7), std::size_t(1023), (std::size_t(1) << 20) + 3})
      for (AllReduceAlgo algo : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE})
        for (std::size_t off : {std::size_t(0), std::size_t(2)})
          ran += run_case(comm, {DType::kBFloat16, op, algo, false, count, false, off}, s);
  ran += run_case(comm, {DType::kFloat32, ReduceOp::kSum, AllReduceAlgo::kOneShot, true, 100003, false, 0}, s);
  detail::set_force_generic_world_kernels(false);
  EXPECT_GT(ran, 30);
  cudaStreamDestroy(s);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AllReduceMatrix, ::testing::Values(DType::kBFloat16, DType::kFloat16, DType::kFloat32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// A registered buffer freed and replaced by a new one (often at the same address) must not be read
// through the old mapping.
TEST(AllReduceZeroCopy, ReRegisteringAReplacedBufferReadsTheNewOne) {
  Communicator& comm = mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t count = 1 << 20;
  const DType dt = DType::kBFloat16;
  DevBuf out(count * 2);
  for (int round = 0; round < 3; ++round) {
    auto in = std::make_unique<DevBuf>(std::size_t(8) << 20);
    register_buffer(comm, in->p, in->bytes);
    const uint64_t seed = shared_seed(comm);
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
    const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in->p, inputs[R].data(), count * 2)));
    all_reduce(comm, in->p, out.p, count, dt, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, true});
    comm.synchronize(s);
    std::vector<uint8_t> got(count * 2);
    CUDA_OK(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
    std::size_t bad = 0;
    for (std::size_t i = 0; i < count; ++i)
      bad += !(std::fabs(test::load_element(got.data(), i, dt) - ref[i]) <= test::all_reduce_tolerance(ref[i], dt, W));
    EXPECT_EQ(bad, 0u) << "round " << round;
    comm.host_barrier();  // peers are done reading before the buffer is freed
  }
  cudaStreamDestroy(s);
}

TEST(AllReduce, FastPathIsOnOverNvlinkPeers) {
  const Topology& t = mp_comm().topology();
  EXPECT_TRUE(t.fast_path) << t.reason;
  EXPECT_TRUE(t.probe_ok);
  EXPECT_EQ(t.nodes, 1);
}

// Captures calls in a CUDA graph and replays with new data each time (copy-in and pushed algorithms).
TEST(AllReduceGraph, CaptureAndReplayCopyIn) {
  Communicator& comm = mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t count = 70000 + 5;
  const DType dt = DType::kBFloat16;
  const std::size_t bytes = count * 2;
  constexpr int A = 5;
  DevBuf in(bytes), outs(A * bytes);
  AllReduceAlgo algos[A] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot,
                            AllReduceAlgo::kOneShotCE};
  for (auto& a : algos)
    if (!pinnable(comm, bytes, a)) a = AllReduceAlgo::kAuto;  // e.g. the copy-engine one-shot above W = 2
  // warm-up outside capture
  for (int a = 0; a < A; ++a) all_reduce(comm, in.p, outs.c() + a * bytes, count, dt, ReduceOp::kSum, s, {algos[a], false});
  comm.synchronize(s);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int a = 0; a < A; ++a) all_reduce(comm, in.p, outs.c() + a * bytes, count, dt, ReduceOp::kSum, s, {algos[a], false});
  CUDA_OK(cudaStreamEndCapture(s, &g));
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  for (int round = 0; round < 3; ++round) {
    const uint64_t seed = shared_seed(comm);
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
    const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
    const auto abs_sum = test::reference_abs_sum(inputs, count, dt);
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, inputs[R].data(), bytes)));
    CUDA_OK(cudaMemset(outs.p, 0xFF, A * bytes));
    comm.host_barrier();
    CUDA_OK(cudaGraphLaunch(ge, s));
    comm.synchronize(s);
    std::vector<uint8_t> got(A * bytes);
    CUDA_OK(cudaMemcpy(got.data(), outs.p, A * bytes, cudaMemcpyDeviceToHost));
    for (int a = 0; a < A; ++a) {
      std::size_t bad = 0;
      // auto may run NCCL (larger W): allow its stepwise rounding there.
      for (std::size_t i = 0; i < count; ++i)
        bad += !(std::fabs(test::load_element(got.data() + a * bytes, i, dt) - ref[i]) <=
                 test::all_reduce_tolerance(ref[i], dt, W) +
                     (algos[a] == AllReduceAlgo::kAuto ? test::stepwise_rounding_slack(abs_sum[i], dt, W) : 0.0));
      EXPECT_EQ(bad, 0u) << all_reduce_algo_name(algos[a]) << " replay " << round;
      EXPECT_TRUE(same_on_all_ranks(comm, fnv(got.data() + a * bytes, bytes)));
    }
  }
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

// Zero-copy in a graph: pointers captured unregistered, registered after capture (vLLM's scheme).
TEST(AllReduceGraph, ZeroCopyRegisteredAfterCapture) {
  Communicator& comm = mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t count = 300001;
  const DType dt = DType::kFloat16;
  const std::size_t bytes = count * 2;
  DevBuf in(bytes + 64), out(bytes);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  {
    GraphCapture capture(comm);
    CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    all_reduce(comm, in.c() + 32, out.p, count, dt, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, true});
    CUDA_OK(cudaStreamEndCapture(s, &g));
  }
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  register_graph_buffers(comm);
  for (int round = 0; round < 3; ++round) {
    const uint64_t seed = shared_seed(comm);
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
    const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.c() + 32, inputs[R].data(), bytes)));
    CUDA_OK(cudaMemset(out.p, 0xFF, bytes));
    comm.host_barrier();
    CUDA_OK(cudaGraphLaunch(ge, s));
    comm.synchronize(s);
    std::vector<uint8_t> got(bytes);
    CUDA_OK(cudaMemcpy(got.data(), out.p, bytes, cudaMemcpyDeviceToHost));
    std::size_t bad = 0;
    for (std::size_t i = 0; i < count; ++i)
      bad += !(std::fabs(test::load_element(got.data(), i, dt) - ref[i]) <= test::all_reduce_tolerance(ref[i], dt, W));
    EXPECT_EQ(bad, 0u) << "replay " << round;
    EXPECT_TRUE(same_on_all_ranks(comm, fnv(got.data(), bytes)));
  }
  EXPECT_GE(comm.stats().zero_copy_calls, 1u);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

// 10,000 back-to-back calls, no host synchronization, sizes and algorithms changing every call (the case
// where workspace reuse across differently-shaped launches would race), results checked at checkpoints.
TEST(AllReduceStress, TenThousandMixedCallsNoHangNoDrift) {
  Communicator& comm = mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const DType dt = DType::kBFloat16;
  const std::size_t counts[4] = {4096, 32771, 524288, 1500007};
  const AllReduceAlgo algos[5] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot,
                                  AllReduceAlgo::kOneShotCE};
  const uint64_t seed = shared_seed(comm);
  std::vector<std::vector<double>> refs(4), abs_sums(4);
  std::vector<std::unique_ptr<DevBuf>> ins, outs;
  for (int k = 0; k < 4; ++k) {
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_input(counts[k], dt, seed + k, r);
    refs[k] = test::reference_all_reduce(inputs, counts[k], dt, ReduceOp::kSum);
    abs_sums[k] = test::reference_abs_sum(inputs, counts[k], dt);
    ins.push_back(std::make_unique<DevBuf>(counts[k] * 2));
    outs.push_back(std::make_unique<DevBuf>(counts[k] * 2 * 5));
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(ins[k]->p, inputs[R].data(), counts[k] * 2)));
  }
  // Slot a runs auto for size k when it is auto or its algorithm cannot be pinned there (LL above its cap, CE
  // above W = 2); auto may run NCCL, whose stepwise rounding the check then allows.
  auto runs_auto = [&](int a, int k) {
    return algos[a] == AllReduceAlgo::kAuto || !pinnable(comm, counts[k] * 2, algos[a]);
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t bad_total = 0;
  for (int it = 0; it < 10000; ++it) {
    const int k = (it * 7 + it / 4) % 4;  // size changes every call
    const int a = it % 5;                 // algorithm too
    const AllReduceAlgo algo = runs_auto(a, k) ? AllReduceAlgo::kAuto : algos[a];
    all_reduce(comm, ins[k]->p, outs[k]->c() + a * counts[k] * 2, counts[k], dt, ReduceOp::kSum, s, {algo, false});
    if (it % 2500 == 2499) {
      comm.synchronize(s);
      for (int kk = 0; kk < 4; ++kk) {
        std::vector<uint8_t> got(counts[kk] * 2 * 5);
        CUDA_OK(cudaMemcpy(got.data(), outs[kk]->p, got.size(), cudaMemcpyDeviceToHost));
        for (int aa = 0; aa < 5; ++aa)
          for (std::size_t i = 0; i < counts[kk]; i += 97)
            bad_total += !(std::fabs(test::load_element(got.data() + aa * counts[kk] * 2, i, dt) - refs[kk][i]) <=
                           test::all_reduce_tolerance(refs[kk][i], dt, W) +
                               (runs_auto(aa, kk) ? test::stepwise_rounding_slack(abs_sums[kk][i], dt, W) : 0.0));
        EXPECT_TRUE(same_on_all_ranks(comm, fnv(got.data(), got.size())));
      }
    }
  }
  comm.synchronize(s);
  EXPECT_EQ(bad_total, 0u);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (R == 0) std::printf("10000 mixed all-reduces in %.2f s\n", secs);
  cudaStreamDestroy(s);
}

TEST(AllReduceFallback, ForcedNcclModeGivesNcclResults) {
  CommOptions o;
  o.force_nccl = true;
  auto comm = test::fresh_comm(o);
  EXPECT_FALSE(comm->fast_path());
  EXPECT_NE(comm->topology().reason.find("force_nccl"), std::string::npos) << comm->topology().reason;
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  EXPECT_TRUE(run_case(*comm, {DType::kBFloat16, ReduceOp::kSum, AllReduceAlgo::kAuto, false, 1023, false, 0}, s));
  EXPECT_EQ(resolve_all_reduce(*comm, 8192), AllReduceAlgo::kNccl);
  EXPECT_GE(comm->stats().nccl_fallbacks, 1u);
  EXPECT_EQ(comm->stats().fast_calls, 0u);
  DevBuf b(4096);
  try {
    all_reduce(*comm, b.p, b.p, 16, DType::kFloat32, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, false});
    ADD_FAILURE() << "pinned one_shot ran without peer memory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("algo"), std::string::npos) << e.what();
  }
  comm->synchronize(s);
  comm->host_barrier();
  cudaStreamDestroy(s);
}

// The environment switches force the NCCL mode: no fast path, the reason names the variable, exactly one
// warning line across the ranks, no fast calls, and results bitwise equal to ncclAllReduce on the same input.
TEST(AllReduceFallback, EnvironmentSwitchesForceNccl) {
  for (const char* var : {"TPCOMM_DISABLE_P2P", "TPCOMM_FORCE_NCCL"}) {
    SCOPED_TRACE(var);
    std::atomic<int> warnings{0};
    set_log_callback([&](LogLevel level, const std::string&) {
      if (level <= LogLevel::kWarn) warnings++;
    });
    setenv(var, "1", 1);
    std::unique_ptr<Communicator> comm;
    try {
      comm = test::fresh_comm();
    } catch (...) {
      unsetenv(var);
      set_log_callback(nullptr);
      throw;
    }
    unsetenv(var);
    EXPECT_FALSE(comm->fast_path());
    EXPECT_NE(comm->topology().reason.find(var), std::string::npos) << comm->topology().reason;
    const int W = comm->world_size(), R = comm->rank();
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const std::size_t count = 70001;
    const DType dt = DType::kBFloat16;
    const uint64_t seed = shared_seed(*comm);
    const auto input = test::make_input(count, dt, seed, R);
    DevBuf in(count * 2), out(count * 2), ref(count * 2);
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, input.data(), count * 2)));
    CUDA_OK(cudaMemset(out.p, 0xFF, count * 2));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(all_reduce(*comm, in.p, out.p, count, dt, ReduceOp::kSum, s), AllReduceAlgo::kNccl);
    ASSERT_EQ(ncclAllReduce(in.p, ref.p, count, ncclBfloat16, ncclSum, comm->nccl(), s), ncclSuccess);
    comm->synchronize(s);
    std::vector<uint8_t> a(count * 2), b(count * 2);
    CUDA_OK(cudaMemcpy(a.data(), out.p, a.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(b.data(), ref.p, b.size(), cudaMemcpyDeviceToHost));
    EXPECT_EQ(a, b) << "auto in NCCL mode differs from ncclAllReduce";
    EXPECT_EQ(comm->stats().fast_calls, 0u);
    EXPECT_EQ(comm->stats().nccl_fallbacks, 3u);
    set_log_callback(nullptr);
    std::vector<int32_t> all(W);
    const int32_t mine = warnings.load();
    comm->host_all_gather(&mine, all.data(), sizeof(mine));
    int32_t total = 0;
    for (auto w : all) total += w;
    EXPECT_EQ(total, 1) << "warning lines across ranks (expected one: rank 0's 'fast path off' at creation)";
    comm->host_barrier();
    cudaStreamDestroy(s);
  }
}

// A rank that never joins: the others get kTimeout naming it, within the limit (for each algorithm).
TEST(AllReduceTimeout, MissingRankIsNamedWithinTheLimit) {
  for (AllReduceAlgo algo : {AllReduceAlgo::kOneShot, AllReduceAlgo::kOneShotLL, AllReduceAlgo::kTwoShot, AllReduceAlgo::kOneShotCE}) {
    if (!pinnable(mp_comm(), 8192, algo)) continue;  // the copy-engine one-shot above W = 2 (same on every rank)
    CommOptions o;
    o.timeout_s = 1.0;
    auto comm = test::fresh_comm(o);
    const int W = comm->world_size(), R = comm->rank();
    const int missing = W - 1;
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    DevBuf b(1 << 20);
    CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
    if (R != missing) {
      const auto t0 = std::chrono::steady_clock::now();
      all_reduce(*comm, b.p, b.c() + (1 << 19), 4096, DType::kBFloat16, ReduceOp::kSum, s, {algo, false});
      try {
        comm->synchronize(s);
        ADD_FAILURE() << all_reduce_algo_name(algo) << ": no timeout although rank " << missing << " never joined";
      } catch (const Error& e) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
        EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(missing)), std::string::npos) << e.what();
        EXPECT_LT(secs, o.timeout_s + 2.0);
      }
      // The communicator is unusable afterwards, and says so.
      EXPECT_THROW(all_reduce(*comm, b.p, b.p, 16, DType::kFloat32, ReduceOp::kSum, s), Error);
    }
    test::mp_comm().host_barrier();
    cudaStreamDestroy(s);
  }
}

TEST(AllReduceMismatch, DifferentSizesAcrossRanksAreReported) {
  auto comm = test::fresh_comm();
  const int R = comm->rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  DevBuf b(1 << 20);
  CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
  const std::size_t count = 8192 + (R == 0 ? 0 : 64);
  all_reduce(*comm, b.p, b.c() + (1 << 19), count, DType::kBFloat16, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, false});
  bool threw = false;
  try {
    comm->synchronize(s);
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.code(), ErrorCode::kMismatch) << e.what();
  }
  EXPECT_TRUE(threw);
  test::mp_comm().host_barrier();
  cudaStreamDestroy(s);
}

// Errors name the argument and write nothing.
TEST(AllReduceBadInput, ErrorsNameTheArgumentAndWriteNothing) {
  Communicator& comm = mp_comm();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t big = std::size_t(72) << 20;  // larger than every pinned workspace tested below
  DevBuf in(big), out(big);
  CUDA_OK(cudaMemset(out.p, 0x77, big));
  CUDA_OK(cudaMemset(in.p, 0x3C, big));
  auto expect_error = [&](const char* what, ErrorCode code, auto fn) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error("dtype", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, in.p, out.p, 16, DType::kFloat8E4M3, ReduceOp::kSum, s); });
  expect_error("op", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, in.p, out.p, 16, DType::kBFloat16, static_cast<ReduceOp>(7), s); });
  expect_error("input", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, nullptr, out.p, 16, DType::kBFloat16, ReduceOp::kSum, s); });
  expect_error("output", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, in.p, nullptr, 16, DType::kBFloat16, ReduceOp::kSum, s); });
  expect_error("input", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, in.c() + 1, out.p, 16, DType::kBFloat16, ReduceOp::kSum, s); });
  expect_error("count", ErrorCode::kInvalidArgument, [&] {  // bytes = lamport_max_bytes + 16
    all_reduce(comm, in.p, out.p, comm.options().lamport_max_bytes / 2 + 8, DType::kBFloat16, ReduceOp::kSum, s,
               {AllReduceAlgo::kOneShotLL, false});
  });
  // Every pinned barrier algorithm over its workspace (the error names the count and the option to raise).
  for (AllReduceAlgo algo : {AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot}) {
    const std::size_t cap = algo == AllReduceAlgo::kOneShot ? comm.options().one_shot_max_bytes : comm.options().two_shot_max_bytes;
    if (cap + 16 > big) continue;  // same on every rank
    expect_error("count", ErrorCode::kInvalidArgument, [&] {
      all_reduce(comm, in.p, out.p, cap / 2 + 8, DType::kBFloat16, ReduceOp::kSum, s, {algo, false});
    });
  }
  expect_error("output", ErrorCode::kInvalidArgument, [&] {
    all_reduce(comm, in.p, in.p, 16, DType::kBFloat16, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, true});
  });
  expect_error("input", ErrorCode::kInvalidArgument, [&] {
    all_reduce(comm, in.p, out.p, 16, DType::kBFloat16, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, true});
  });
  expect_error("output", ErrorCode::kInvalidArgument,
               [&] { all_reduce(comm, in.p, in.c() + 2, 64, DType::kBFloat16, ReduceOp::kSum, s); });
  expect_error("input", ErrorCode::kInvalidArgument, [&] {
    all_reduce(comm, in.c() + 2, out.p, 16, DType::kBFloat16, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, true});
  });
  comm.synchronize(s);
  std::vector<uint8_t> got(big);
  CUDA_OK(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
  std::size_t changed = 0;
  for (auto b : got) changed += b != 0x77;
  EXPECT_EQ(changed, 0u) << "output bytes written by calls that failed";
  CUDA_OK(cudaMemcpy(got.data(), in.p, got.size(), cudaMemcpyDeviceToHost));
  changed = 0;
  for (auto b : got) changed += b != 0x3C;
  EXPECT_EQ(changed, 0u) << "input bytes written by calls that failed";
  comm.host_barrier();
  cudaStreamDestroy(s);
}

TEST(CommunicatorLifecycle, UseAfterDestroyAndDestroyInFlight) {
  auto comm = test::fresh_comm();
  const int R = comm->rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  DevBuf b(1 << 20);
  CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
  // Rank 0 enqueues a collective the others join 300 ms later: destroy() meanwhile must refuse.
  if (R != 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  all_reduce(*comm, b.p, b.c() + (1 << 19), 4096, DType::kBFloat16, ReduceOp::kSum, s, {AllReduceAlgo::kOneShot, false});
  if (R == 0) {
    try {
      comm->destroy();
      ADD_FAILURE() << "destroy() succeeded with an all-reduce in flight";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidState) << e.what();
    }
  }
  comm->synchronize(s);
  test::mp_comm().host_barrier();
  comm->destroy();
  CUDA_OK(cudaMemset(b.p, 0x5D, 1 << 20));
  try {
    all_reduce(*comm, b.p, b.p, 16, DType::kFloat32, ReduceOp::kSum, s);
    ADD_FAILURE() << "use after destroy";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidState);
    EXPECT_NE(std::string(e.what()).find("destroyed"), std::string::npos);
  }
  CUDA_OK(cudaStreamSynchronize(s));
  std::vector<uint8_t> got(1 << 20);
  CUDA_OK(cudaMemcpy(got.data(), b.p, got.size(), cudaMemcpyDeviceToHost));
  std::size_t changed = 0;
  for (auto x : got) changed += x != 0x5D;
  EXPECT_EQ(changed, 0u) << "a call on a destroyed communicator wrote its buffer";
  cudaStreamDestroy(s);
}

// destroy() sees work on every stream an op was enqueued on, not only the last one: here the last op (NCCL on
// s2) has finished while an earlier one (on s1, held back by a host function) has not. Every rank runs the
// pinned-NCCL call before the tpcomm kernel on the device, so the cross-rank order of each protocol holds.
TEST(CommunicatorLifecycle, DestroySeesEveryStream) {
  auto comm = test::fresh_comm();
  const int R = comm->rank();
  cudaStream_t s1, s2;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  DevBuf b(1 << 20);
  CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
  CUDA_OK(cudaLaunchHostFunc(s1, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(400)); }, nullptr));
  all_reduce(*comm, b.p, b.c() + (1 << 19), 4096, DType::kBFloat16, ReduceOp::kSum, s1, {AllReduceAlgo::kOneShot, false});
  all_reduce(*comm, b.c() + (1 << 18), b.c() + (1 << 18), 4096, DType::kBFloat16, ReduceOp::kSum, s2, {AllReduceAlgo::kNccl, false});
  comm->synchronize(s2);
  if (R == 0) {
    try {
      comm->destroy();
      ADD_FAILURE() << "destroy() succeeded with an all-reduce in flight on an earlier stream";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidState) << e.what();
      EXPECT_NE(std::string(e.what()).find("in flight"), std::string::npos) << e.what();
    }
  }
  comm->synchronize(s1);
  test::mp_comm().host_barrier();
  EXPECT_NO_THROW(comm->destroy());
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}

// A CUDA graph that captured a tpcomm op keeps the communicator's memory in use: destroy() refuses while the
// graph or an executable instance of it exists (and nothing is freed: the graph still replays correctly), and
// succeeds once both are gone.
TEST(CommunicatorLifecycle, DestroyRefusesWhileACapturedGraphExists) {
  auto comm = test::fresh_comm();
  const int W = comm->world_size(), R = comm->rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t count = 4099;
  const DType dt = DType::kBFloat16;
  DevBuf in(count * 2), out(count * 2);
  all_reduce(*comm, in.p, out.p, count, dt, ReduceOp::kSum, s);  // warm-up outside capture
  comm->synchronize(s);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  all_reduce(*comm, in.p, out.p, count, dt, ReduceOp::kSum, s, {AllReduceAlgo::kOneShotLL, false});
  all_reduce(*comm, in.p, out.p, count, dt, ReduceOp::kMax, s);
  CUDA_OK(cudaStreamEndCapture(s, &g));
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  const uint64_t seed = shared_seed(*comm);
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
  const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kMax);
  CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, inputs[R].data(), count * 2)));
  CUDA_OK(cudaMemset(out.p, 0xFF, count * 2));
  try {
    comm->destroy();
    ADD_FAILURE() << "destroy() succeeded while a graph with captured tpcomm ops exists";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidState) << e.what();
    EXPECT_NE(std::string(e.what()).find("graph"), std::string::npos) << e.what();
  }
  test::mp_comm().host_barrier();
  CUDA_OK(cudaGraphLaunch(ge, s));  // the refused destroy freed nothing: the replay still reduces correctly
  comm->synchronize(s);
  std::vector<uint8_t> got(count * 2);
  CUDA_OK(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
  std::size_t bad = 0;
  for (std::size_t i = 0; i < count; ++i) bad += test::load_element(got.data(), i, dt) != ref[i];  // max is exact
  EXPECT_EQ(bad, 0u);
  CUDA_OK(cudaGraphDestroy(g));  // the executable instance alone still holds the memory
  try {
    comm->destroy();
    ADD_FAILURE() << "destroy() succeeded while an executable graph instance exists";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidState) << e.what();
  }
  CUDA_OK(cudaGraphExecDestroy(ge));
  test::mp_comm().host_barrier();
  EXPECT_NO_THROW(comm->destroy());
  cudaStreamDestroy(s);
}

// No device allocation on the hot path: after a warm-up of every size, 1,000 more calls (every algorithm auto
// picks across the sizes, eager) leave the device's free memory unchanged.
TEST(AllReduceHotPath, NoDeviceAllocationAcrossCalls) {
  Communicator& comm = mp_comm();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t max_bytes = std::size_t(32) << 20;
  DevBuf in(max_bytes), out(max_bytes);
  CUDA_OK(cudaMemset(in.p, 0, max_bytes));
  const std::size_t sizes[] = {8 << 10, 512 << 10, 1 << 20, 2 << 20, 8 << 20, 32 << 20};
  auto sweep = [&] {
    for (std::size_t b : sizes) all_reduce(comm, in.p, out.p, b / 2, DType::kBFloat16, ReduceOp::kSum, s);
  };
  for (int i = 0; i < 3; ++i) sweep();
  comm.synchronize(s);
  std::size_t free0 = 0, free1 = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free0, &total));
  for (int i = 0; i < 1000 / 6 + 1; ++i) sweep();
  comm.synchronize(s);
  CUDA_OK(cudaMemGetInfo(&free1, &total));
  EXPECT_EQ(free0, free1) << "device memory allocated on the hot path: " << (double(free0) - double(free1)) / 1048576.0 << " MiB";
  comm.host_barrier();
  cudaStreamDestroy(s);
}

// Teardown frees what creation allocated: communicators created and destroyed in a loop leave the device's free
// memory where one create/destroy cycle left it (NCCL may keep a little per process; 8 MiB of slack for it,
// where one leaked workspace would be hundreds of MiB).
// A rank's memory stays allocated while a peer still has it mapped (CUDA IPC), so both measurements follow a
// host barrier: every rank has destroyed (and unmapped) before anyone reads its free memory.
TEST(CommunicatorLifecycle, CreateDestroyLoopDoesNotLeak) {
  { auto warm = test::fresh_comm(); warm->destroy(); }
  test::mp_comm().host_barrier();
  CUDA_OK(cudaDeviceSynchronize());
  std::size_t free0 = 0, free1 = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free0, &total));
  for (int i = 0; i < 3; ++i) {
    auto comm = test::fresh_comm();
    comm->destroy();
  }
  test::mp_comm().host_barrier();
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemGetInfo(&free1, &total));
  EXPECT_GE(double(free1) + 8.0 * 1048576.0, double(free0))
      << "leaked per 3 create/destroy cycles: " << (double(free0) - double(free1)) / 1048576.0 << " MiB";
  test::mp_comm().host_barrier();
}

// Adopting an NCCL communicator the caller made: tpcomm works on it and leaves it alive after destroy().
TEST(CommunicatorLifecycle, AdoptedNcclCommIsUsedAndNotDestroyed) {
  Communicator& base = mp_comm();
  const int W = base.world_size(), R = base.rank();
  ncclUniqueId id{};
  if (R == 0) ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<ncclUniqueId> ids(W);
  base.host_all_gather(&id, ids.data(), sizeof(id));
  ncclComm_t nc = nullptr;
  ASSERT_EQ(ncclCommInitRank(&nc, W, ids[0], R), ncclSuccess);
  auto comm = Communicator::adopt(nc);
  EXPECT_EQ(comm->rank(), R);
  EXPECT_EQ(comm->world_size(), W);
  EXPECT_EQ(comm->nccl(), nc);
  EXPECT_EQ(comm->fast_path(), base.fast_path());
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (AllReduceAlgo algo : {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShot, AllReduceAlgo::kNccl})
    EXPECT_TRUE(run_case(*comm, {DType::kBFloat16, ReduceOp::kSum, algo, false, 1023, false, 0}, s) || algo != AllReduceAlgo::kAuto);
  comm->synchronize(s);
  comm->host_barrier();
  comm->destroy();
  // The NCCL communicator is still the caller's and still works.
  int count = 0;
  EXPECT_EQ(ncclCommCount(nc, &count), ncclSuccess);
  EXPECT_EQ(count, W);
  DevBuf b(4096);
  CUDA_OK(cudaMemset(b.p, 0, 4096));
  EXPECT_EQ(ncclAllReduce(b.p, b.p, 1024, ncclFloat32, ncclSum, nc, s), ncclSuccess);
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(ncclCommDestroy(nc), ncclSuccess);
  cudaStreamDestroy(s);
}

// ---- the opt-in FP8 wire (AllReduceWire::kFp8) -----------------------------------------------------------------------

AllReduceOptions fp8_wire(int block, bool gather_fp8, AllReduceAlgo algo = AllReduceAlgo::kTwoShot) {
  AllReduceOptions o;
  o.algo = algo;
  o.wire = AllReduceWire::kFp8;
  o.fp8_block = block;
  o.gather_wire = gather_fp8 ? AllReduceWire::kFp8 : AllReduceWire::kExact;
  return o;
}

struct Fp8Case {
  DType dtype;
  ReduceOp op;
  int block;
  bool gather_fp8;
  std::size_t count;
  bool in_place;
  std::size_t offset;
  bool mixed;  // test::make_fp8_wire_input (block magnitudes, zero blocks) instead of uniform [-1, 1)
  AllReduceAlgo algo = AllReduceAlgo::kTwoShot;
  std::string str() const {
    return std::string(dtype_name(dtype)) + " " + reduce_op_name(op) + " fp8 block " + std::to_string(block) +
           (gather_fp8 ? " gather fp8 " : " gather exact ") + all_reduce_algo_name(algo) + " count=" + std::to_string(count) +
           (in_place ? " in-place" : " out-of-place") + " offset=" + std::to_string(offset) + (mixed ? " mixed" : " uniform");
  }
};

// Runs one FP8-wire case: this rank's result equals the CPU reference of the same math bit for bit (so all ranks
// are equal too, which is checked separately by hash), lies within the documented bound of the float64 reduction,
// and leaves the guards around the output untouched. Returns this rank's error against the float64 reduction.
test::Fp8WireError run_fp8_case(const Communicator& comm, const Fp8Case& c, cudaStream_t s) {
  const int W = comm.world_size(), R = comm.rank();
  const std::size_t es = dtype_size(c.dtype), bytes = c.count * es;
  SCOPED_TRACE(c.str());
  const uint64_t seed = shared_seed(comm);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r)
    inputs[r] = c.mixed ? test::make_fp8_wire_input(c.count, c.dtype, seed, r) : test::make_input(c.count, c.dtype, seed, r);
  const std::size_t total = kGuard + c.offset + bytes + kGuard;
  DevBuf in(total), out(total);
  std::vector<uint8_t> img_in(total, 0x5A), img_out(total, 0xFF);
  std::memcpy(img_in.data() + kGuard + c.offset, inputs[R].data(), bytes);
  EXPECT_EQ(tpcomm::test::copy_to_device(in.p, img_in.data(), total), 0);
  EXPECT_EQ(tpcomm::test::copy_to_device(out.p, img_out.data(), total), 0);
  char* ip = in.c() + kGuard + c.offset;
  char* op = c.in_place ? ip : out.c() + kGuard + c.offset;
  const AllReduceOptions o = fp8_wire(c.block, c.gather_fp8, c.algo);
  const AllReducePlan plan = plan_all_reduce(comm, c.count, c.dtype, o);
  EXPECT_EQ(plan.wire, AllReduceWire::kFp8);
  EXPECT_EQ(all_reduce(comm, ip, op, c.count, c.dtype, c.op, s, o), AllReduceAlgo::kTwoShot);
  comm.synchronize(s);
  std::vector<uint8_t> got(total);
  EXPECT_EQ(cudaMemcpy(got.data(), c.in_place ? in.p : out.p, total, cudaMemcpyDeviceToHost), cudaSuccess);
  const uint8_t g = c.in_place ? 0x5A : 0xFF;
  std::size_t bad_guard = 0;
  for (std::size_t i = 0; i < kGuard + c.offset; ++i) bad_guard += got[i] != g;
  for (std::size_t i = kGuard + c.offset + bytes; i < total; ++i) bad_guard += got[i] != g;
  EXPECT_EQ(bad_guard, 0u) << "bytes outside the output were written";
  const uint8_t* res = got.data() + kGuard + c.offset;
  const auto chk = test::check_fp8_wire_result(res, inputs, c.count, c.dtype, c.op, c.block, c.gather_fp8);
  EXPECT_EQ(chk.mismatches, 0u) << "rank " << R << ": elements differing from the CPU reference: " << chk.first;
  EXPECT_EQ(chk.over_bound, 0u) << "rank " << R << ": elements beyond the error bound";
  EXPECT_TRUE(same_on_all_ranks(comm, fnv(res, bytes))) << "results differ between ranks";
  return chk.error;
}

TEST(AllReduceFp8Wire, MatchesTheReferenceBitForBitOnEveryRank) {
  Communicator& comm = mp_comm();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t W = static_cast<std::size_t>(comm.world_size());
  int ran = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (int B : {32, 128})
      for (bool g : {true, false}) {
        int k = 0;
        for (std::size_t count : {std::size_t(7), 128 * W * 3 + 17, (std::size_t(1) << 20) + 3}) {
          const bool mixed = (k++ % 2) == 1;
          run_fp8_case(comm, {dt, ReduceOp::kSum, B, g, count, false, 0, mixed}, s);
          run_fp8_case(comm, {dt, ReduceOp::kSum, B, g, count, true, 0, !mixed, AllReduceAlgo::kAuto}, s);
          run_fp8_case(comm, {dt, ReduceOp::kSum, B, g, count, false, dtype_size(dt), mixed}, s);
          ran += 3;
          if (dt == DType::kBFloat16)
            for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
              run_fp8_case(comm, {dt, op, B, g, count, false, 0, mixed}, s);
              ++ran;
            }
        }
      }
  // The runtime-world-size kernel (W = 3..8) at this world size too.
  detail::set_force_generic_world_kernels(true);
  for (bool g : {true, false}) {
    run_fp8_case(comm, {DType::kBFloat16, ReduceOp::kSum, 128, g, 300007, false, 0, true}, s);
    run_fp8_case(comm, {DType::kFloat32, ReduceOp::kSum, 32, g, 4099, true, 4, false}, s);
    ran += 2;
  }
  detail::set_force_generic_world_kernels(false);
  EXPECT_GT(ran, 60);
  cudaStreamDestroy(s);
}

// The error against the exact (float64) sum, reported next to the exact two-shot's on the same inputs (bf16, 4 M
// elements, uniform [-1, 1)).
TEST(AllReduceFp8Wire, ErrorAgainstTheExactSum) {
  Communicator& comm = mp_comm();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const DType dt = DType::kBFloat16;
  std::size_t count = std::size_t(4) << 20;
  AllReduceOptions exact_two{AllReduceAlgo::kTwoShot, false};
  while (!pinnable(comm, count * 2, AllReduceAlgo::kTwoShot)) count /= 2;  // within the exact two-shot's workspace
  const uint64_t seed = shared_seed(comm);
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
  const auto exact = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
  DevBuf in(count * 2), out(count * 2);
  CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, inputs[R].data(), count * 2)));
  auto run = [&](const AllReduceOptions& o) {
    EXPECT_EQ(cudaMemset(out.p, 0xFF, count * 2), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    all_reduce(comm, in.p, out.p, count, dt, ReduceOp::kSum, s, o);
    comm.synchronize(s);
    std::vector<uint8_t> got(count * 2);
    EXPECT_EQ(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return got;
  };
  const auto e_exact = test::fp8_wire_error(run(exact_two).data(), exact, count, dt);
  if (R == 0)
    std::printf("W=%d bf16 sum, %zu elements: exact two_shot        max |err| %.3e  max rel %.3e  rms rel %.3e\n", W, count,
                e_exact.max_abs, e_exact.max_rel, e_exact.rms_rel);
  for (int B : {128, 32})
    for (bool g : {true, false}) {
      const auto got = run(fp8_wire(B, g));
      const auto c = test::check_fp8_wire_result(got.data(), inputs, count, dt, ReduceOp::kSum, B, g);
      EXPECT_EQ(c.mismatches, 0u) << c.first;
      EXPECT_EQ(c.over_bound, 0u);
      EXPECT_GT(c.error.rms_rel, 2 * e_exact.rms_rel);
      EXPECT_LT(c.error.rms_rel, 0.06);
      EXPECT_TRUE(same_on_all_ranks(comm, fnv(got.data(), got.size())));
      if (R == 0)
        std::printf("W=%d bf16 sum, %zu elements: fp8 wire B=%-3d gather %-5s max |err| %.3e  max rel %.3e  rms rel %.3e\n", W,
                    count, B, g ? "fp8" : "exact", c.error.max_abs, c.error.max_rel, c.error.rms_rel);
    }
  comm.host_barrier();
  cudaStreamDestroy(s);
}

// Captured in a CUDA graph next to an exact two-shot on the same workspace, replayed on fresh input.
TEST(AllReduceFp8Wire, GraphCaptureAndReplay) {
  Communicator& comm = mp_comm();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  const int W = comm.world_size(), R = comm.rank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t count = 70005;
  const DType dt = DType::kBFloat16;
  const std::size_t bytes = count * 2;
  const AllReduceOptions calls[3] = {fp8_wire(128, true), {AllReduceAlgo::kTwoShot, false}, fp8_wire(32, false)};
  DevBuf in(bytes), outs(3 * bytes);
  CUDA_OK(cudaMemset(in.p, 0, bytes));
  for (int a = 0; a < 3; ++a) all_reduce(comm, in.p, outs.c() + a * bytes, count, dt, ReduceOp::kSum, s, calls[a]);
  comm.synchronize(s);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int a = 0; a < 3; ++a) all_reduce(comm, in.p, outs.c() + a * bytes, count, dt, ReduceOp::kSum, s, calls[a]);
  CUDA_OK(cudaStreamEndCapture(s, &g));
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  for (int round = 0; round < 3; ++round) {
    const uint64_t seed = shared_seed(comm);
    std::vector<std::vector<uint8_t>> inputs(W);
    for (int r = 0; r < W; ++r) inputs[r] = test::make_fp8_wire_input(count, dt, seed, r);
    CUDA_OK(static_cast<cudaError_t>(tpcomm::test::copy_to_device(in.p, inputs[R].data(), bytes)));
    CUDA_OK(cudaMemset(outs.p, 0xFF, 3 * bytes));
    comm.host_barrier();
    CUDA_OK(cudaGraphLaunch(ge, s));
    comm.synchronize(s);
    std::vector<uint8_t> got(3 * bytes);
    CUDA_OK(cudaMemcpy(got.data(), outs.p, got.size(), cudaMemcpyDeviceToHost));
    for (int a : {0, 2}) {
      const auto c = test::check_fp8_wire_result(got.data() + a * bytes, inputs, count, dt, ReduceOp::kSum, calls[a].fp8_block,
                                                 calls[a].gather_wire == AllReduceWire::kFp8);
      EXPECT_EQ(c.mismatches, 0u) << "call " << a << " replay " << round << ": " << c.first;
    }
    const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < count; ++i)
      bad += !(std::fabs(test::load_element(got.data() + bytes, i, dt) - ref[i]) <= test::all_reduce_tolerance(ref[i], dt, W));
    EXPECT_EQ(bad, 0u) << "exact two-shot between the FP8 calls, replay " << round;
    EXPECT_TRUE(same_on_all_ranks(comm, fnv(got.data(), got.size())));
  }
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

// A rank that never joins an FP8-wire call: the others get kTimeout naming it; ranks that disagree on the wire
// options get kMismatch.
TEST(AllReduceFp8Wire, MissingRankAndDisagreeingRanksAreReported) {
  if (!mp_comm().fast_path()) GTEST_SKIP() << "no peer memory";
  {
    CommOptions o;
    o.timeout_s = 1.0;
    auto comm = test::fresh_comm(o);
    const int W = comm->world_size(), R = comm->rank();
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    DevBuf b(1 << 20);
    CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
    if (R != W - 1) {
      const auto t0 = std::chrono::steady_clock::now();
      all_reduce(*comm, b.p, b.c() + (1 << 19), 65536, DType::kBFloat16, ReduceOp::kSum, s, fp8_wire(128, true));
      try {
        comm->synchronize(s);
        ADD_FAILURE() << "no timeout although rank " << W - 1 << " never joined";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
        EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(W - 1)), std::string::npos) << e.what();
        EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), o.timeout_s + 2.0);
      }
    }
    test::mp_comm().host_barrier();
    cudaStreamDestroy(s);
  }
  {
    auto comm = test::fresh_comm();
    const int R = comm->rank();
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    DevBuf b(1 << 20);
    CUDA_OK(cudaMemset(b.p, 0, 1 << 20));
    const AllReduceOptions o = R == 0 ? fp8_wire(128, true) : AllReduceOptions{AllReduceAlgo::kTwoShot, false};
    all_reduce(*comm, b.p, b.c() + (1 << 19), 8192, DType::kBFloat16, ReduceOp::kSum, s, o);
    bool threw = false;
    try {
      comm->synchronize(s);
    } catch (const Error& e) {
      threw = true;
      EXPECT_EQ(e.code(), ErrorCode::kMismatch) << e.what();
    }
    EXPECT_TRUE(threw);
    test::mp_comm().host_barrier();
    cudaStreamDestroy(s);
  }
}

// Bad wire options: errors naming the argument, nothing written.
TEST(AllReduceFp8Wire, BadOptionsNameTheArgumentAndWriteNothing) {
  Communicator& comm = mp_comm();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t n = 1 << 16;
  DevBuf in(n * 4), out(n * 4);
  CUDA_OK(cudaMemset(out.p, 0x77, n * 4));
  auto expect_error = [&](const char* what, ErrorCode code, const AllReduceOptions& o, DType dt = DType::kBFloat16) {
    try {
      all_reduce(comm, in.p, out.p, 4096, dt, ReduceOp::kSum, s, o);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string(what) + ":"), std::string::npos) << e.what();
    }
  };
  for (AllReduceAlgo a : {AllReduceAlgo::kOneShotLL, AllReduceAlgo::kOneShot, AllReduceAlgo::kOneShotCE, AllReduceAlgo::kNccl})
    expect_error("wire", ErrorCode::kInvalidArgument, fp8_wire(128, true, a));
  expect_error("fp8_block", ErrorCode::kInvalidArgument, fp8_wire(16, true));
  expect_error("dtype", ErrorCode::kInvalidArgument, fp8_wire(128, true), DType::kFloat8E5M2);
  comm.synchronize(s);
  std::vector<uint8_t> got(n * 4);
  CUDA_OK(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
  std::size_t changed = 0;
  for (auto b : got) changed += b != 0x77;
  EXPECT_EQ(changed, 0u);
  comm.host_barrier();
  cudaStreamDestroy(s);
}

}  // namespace
