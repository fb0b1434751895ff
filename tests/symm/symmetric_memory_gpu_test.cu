// One process driving all local GPUs (Communicator::create_local, one thread per device): symmetric buffers,
// the device signal primitives with their timeout, stream utilities, and all-reduce in that mode.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "collectives/all_reduce_ref.h"
#include "comm/comm_impl.h"
#include "common/test_util.h"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

int gpus() { return test::cuda_device_count(); }

// Runs fn(rank) on one thread per communicator (collectives need every rank at once).
void on_all(std::vector<std::unique_ptr<Communicator>>& comms, const std::function<void(int)>& fn) {
  std::vector<std::thread> ts;
  std::vector<std::string> errors(comms.size());
  for (std::size_t r = 0; r < comms.size(); ++r) {
    ts.emplace_back([&, r] {
      try {
        cudaSetDevice(comms[r]->device());
        fn(static_cast<int>(r));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  for (std::size_t r = 0; r < comms.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

std::vector<std::unique_ptr<Communicator>> local_comms(const CommOptions& o = {}) {
  std::vector<int> devs;
  for (int d = 0; d < std::min(gpus(), 8); ++d) devs.push_back(d);
  return Communicator::create_local(devs, o);
}

// Rank r writes `value` into every peer's buffer slot r through the peer pointer, then raises the peer's
// signal r; then waits for every peer's signal in its own pad and checks the data that came with it.
__global__ void exchange_kernel(void* const* data, uint32_t* const* pads, int rank, int world, uint32_t value,
                                device::SyncContext ctx, uint32_t* ok_out) {
  const int p = threadIdx.x;
  if (p < world) {
    static_cast<uint32_t*>(data[p])[rank] = value + rank;
    device::put_signal(pads[p] + rank, 1u);
  }
  __syncthreads();
  if (p < world) {
    const bool arrived = device::wait_signal(ctx, pads[rank] + p, 1u, p);
    const uint32_t got = static_cast<volatile uint32_t*>(data[rank])[p];
    ok_out[p] = arrived && got == value + p;
  }
}

__global__ void wait_forever_kernel(uint32_t* pad, device::SyncContext ctx, int peer) {
  device::wait_signal(ctx, pad, 12345u, peer);
}

}  // namespace

TEST(SingleProcess, SymmetricBufferSignalsAndTimeout) {
  if (gpus() < 2) GTEST_SKIP() << "needs 2 GPUs";
  auto comms = local_comms();
  const int W = static_cast<int>(comms.size());
  std::vector<std::unique_ptr<SymmetricBuffer>> bufs(W);
  on_all(comms, [&](int r) { bufs[r] = SymmetricBuffer::allocate(*comms[r], 1 << 20); });
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(bufs[r]->rank(), r);
    EXPECT_EQ(bufs[r]->world_size(), W);
    EXPECT_NE(bufs[r]->local(), nullptr);
  }
  on_all(comms, [&](int r) {
    uint32_t* ok = nullptr;
    cudaMalloc(&ok, 4 * W);
    cudaMemset(ok, 0, 4 * W);
    exchange_kernel<<<1, 32>>>(bufs[r]->device_peer_ptrs(), bufs[r]->device_peer_signal_pads(), r, W, 0xABC0, comms[r]->impl().sync_ctx(), ok);
    cudaDeviceSynchronize();
    comms[r]->check();
    std::vector<uint32_t> h(W);
    cudaMemcpy(h.data(), ok, 4 * W, cudaMemcpyDeviceToHost);
    for (int p = 0; p < W; ++p) EXPECT_EQ(h[p], 1u) << "rank " << r << " from " << p;
    cudaFree(ok);
  });
  // A signal that never comes: the wait ends within the timeout and the host error names the peer.
  CommOptions o;
  o.timeout_s = 0.5;
  auto quick = local_comms(o);
  std::vector<std::unique_ptr<SymmetricBuffer>> qb(W);
  on_all(quick, [&](int r) { qb[r] = SymmetricBuffer::allocate(*quick[r], 4096); });
  cudaSetDevice(quick[0]->device());
  const auto t0 = std::chrono::steady_clock::now();
  wait_forever_kernel<<<1, 1>>>(qb[0]->local_signal_pad() + 7, quick[0]->impl().sync_ctx(), 1);
  try {
    quick[0]->synchronize(nullptr);
    ADD_FAILURE() << "no timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
    EXPECT_NE(std::string(e.what()).find("rank 1 did not arrive"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.5);
  qb.clear();
  bufs.clear();
}

TEST(SingleProcess, AllReduceFromOneProcess) {
  if (gpus() < 2) GTEST_SKIP() << "needs 2 GPUs";
  auto comms = local_comms();
  const int W = static_cast<int>(comms.size());
  for (const Communicator* c : {comms[0].get()}) EXPECT_TRUE(c->fast_path()) << c->topology().reason;
  const std::size_t count = 200003;
  const DType dt = DType::kBFloat16;
  const uint64_t seed = test::fresh_seed();
  std::vector<std::vector<uint8_t>> inputs(W);
  for (int r = 0; r < W; ++r) inputs[r] = test::make_input(count, dt, seed, r);
  const auto ref = test::reference_all_reduce(inputs, count, dt, ReduceOp::kSum);
  std::vector<std::vector<uint8_t>> results(W * 4);
  on_all(comms, [&](int r) {
    void *in = nullptr, *out = nullptr;
    cudaMalloc(&in, count * 2);
    cudaMalloc(&out, count * 2 * 4);
    static_cast<cudaError_t>(tpcomm::test::copy_to_device(in, inputs[r].data(), count * 2));
    cudaMemset(out, 0xFF, count * 2 * 4);
    cudaStream_t s;
    cudaStreamCreate(&s);
    const AllReduceAlgo algos[4] = {AllReduceAlgo::kAuto, AllReduceAlgo::kOneShot, AllReduceAlgo::kTwoShot, AllReduceAlgo::kNccl};
    for (int a = 0; a < 4; ++a) {
      if (algos[a] == AllReduceAlgo::kNccl) {
        ncclGroupStart();  // one thread per rank: each NCCL call is its own group
        all_reduce(*comms[r], in, static_cast<char*>(out) + a * count * 2, count, dt, ReduceOp::kSum, s, {algos[a], false});
        ncclGroupEnd();
      } else {
        all_reduce(*comms[r], in, static_cast<char*>(out) + a * count * 2, count, dt, ReduceOp::kSum, s, {algos[a], false});
      }
    }
    comms[r]->synchronize(s);
    for (int a = 0; a < 4; ++a) {
      results[r * 4 + a].resize(count * 2);
      cudaMemcpy(results[r * 4 + a].data(), static_cast<char*>(out) + a * count * 2, count * 2, cudaMemcpyDeviceToHost);
    }
    cudaStreamDestroy(s);
    cudaFree(in);
    cudaFree(out);
  });
  for (int r = 0; r < W; ++r) {
    for (int a = 0; a < 4; ++a) {
      std::size_t bad = 0;
      for (std::size_t i = 0; i < count; ++i)
        bad += !(std::fabs(test::load_element(results[r * 4 + a].data(), i, dt) - ref[i]) <= test::all_reduce_tolerance(ref[i], dt, W));
      EXPECT_EQ(bad, 0u) << "rank " << r << " algo " << a;
      if (a < 3) EXPECT_EQ(std::memcmp(results[r * 4 + a].data(), results[a].data(), count * 2), 0) << "ranks differ";
    }
  }
}

TEST(StreamOps, WriteValue32AndMemset32) {
  uint32_t* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * 4), cudaSuccess);
  cudaStream_t s;
  cudaStreamCreate(&s);
  memset32(s, d, 0xDEADBEEFu, 64);
  stream_write_value32(s, d + 5, 42u);
  cudaStreamSynchronize(s);
  std::vector<uint32_t> h(64);
  cudaMemcpy(h.data(), d, 64 * 4, cudaMemcpyDeviceToHost);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(h[i], i == 5 ? 42u : 0xDEADBEEFu) << i;
  EXPECT_THROW(memset32(s, reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(d) + 2), 0, 4), Error);
  EXPECT_THROW(stream_write_value32(s, nullptr, 1), Error);
  cudaStreamDestroy(s);
  cudaFree(d);
}
