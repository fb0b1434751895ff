// Symmetric memory on a loopback world (W ranks as W threads on one GPU), through the public API the way a caller's
// own kernel uses it, as tests/symm/symmetric_memory_mp_test.cu does across processes: the ring through peer
// pointers and signals, stream_write_value32 into a peer's pad, a size mismatch at allocation (kMismatch naming the
// rank), a signal that never comes (kTimeout naming the rank, within the limit). Here the peer pointer of rank p is
// rank p's own allocation on the same device, and the ring's grid is limited with loopback_max_ctas so that every
// rank's blocks are resident at once.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/comm_impl.h"
#include "common/test_util.h"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

constexpr int kDevice = 0;

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

void cuda_or_throw(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Every block: writes n words of pattern (rank, block, i, round) into its right neighbour's buffer, raises the
// neighbour's signal [block] (release after the block's writes), waits for its own signal [block] from the left
// neighbour (acquire) and checks the words that came with it.
__global__ void ring_kernel(void* const* data, uint32_t* const* pads, int rank, int world, int n, uint32_t round,
                            device::SyncContext ctx, uint32_t* bad_out) {
  const int right = (rank + 1) % world, left = (rank + world - 1) % world;
  uint32_t* dst = static_cast<uint32_t*>(data[right]) + static_cast<size_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = (uint32_t(rank) << 24) ^ (blockIdx.x << 12) ^ i ^ round;
  __syncthreads();
  if (threadIdx.x == 0) device::put_signal(pads[right] + blockIdx.x, round);
  __shared__ int arrived;
  if (threadIdx.x == 0) arrived = device::wait_signal(ctx, pads[rank] + blockIdx.x, round, left) ? 1 : 0;
  __syncthreads();
  if (!arrived) return;
  const uint32_t* mine = static_cast<const uint32_t*>(data[rank]) + static_cast<size_t>(blockIdx.x) * n;
  uint32_t bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    bad += mine[i] != ((uint32_t(left) << 24) ^ (blockIdx.x << 12) ^ i ^ round);
  if (bad) atomicAdd(bad_out, bad);
}

__global__ void wait_value_kernel(const uint32_t* addr, uint32_t value, int peer, device::SyncContext ctx, uint32_t* ok) {
  *ok = device::wait_signal(ctx, addr, value, peer) ? 1u : 0u;
}

TEST(SymmetricMemoryLoopback, RingThroughPeerPointersAndSignals) {
  if (test::cuda_device_count() < 1) GTEST_SKIP() << "no CUDA device";
  for (int W : {2, 3, 4, 8}) {
    SCOPED_TRACE("W=" + std::to_string(W));
    auto comms = Communicator::create_loopback(W, kDevice);
    constexpr int kThreads = 256, kWords = 4096;
    int per_sm = 0;
    ASSERT_EQ(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ring_kernel, kThreads, 0), cudaSuccess);
    const int blocks = std::min(64, detail::loopback_max_ctas(comms[0]->impl(), per_sm));
    ASSERT_GE(blocks, 1);
    std::vector<std::unique_ptr<SymmetricBuffer>> bufs(W);
    expect_no_errors(on_ranks(W,
                              [&](int r) {
                                bufs[r] = SymmetricBuffer::allocate(*comms[r], size_t(blocks) * kWords * 4, 4096);
                              }),
                     "allocate");
    ASSERT_FALSE(HasFailure());
    for (int r = 0; r < W; ++r) {
      EXPECT_EQ(bufs[r]->rank(), r);
      EXPECT_EQ(bufs[r]->world_size(), W);
      for (int p = 0; p < W; ++p) {
        // One device: the peer table holds the peers' own allocations.
        EXPECT_EQ(bufs[r]->peer(p), bufs[p]->local()) << "rank " << r << " peer " << p;
        EXPECT_EQ(bufs[r]->peer_signal_pad(p), bufs[p]->local_signal_pad()) << "rank " << r << " peer " << p;
      }
    }
    expect_no_errors(on_ranks(W,
                              [&](int r) {
                                Communicator& comm = *comms[r];
                                cudaStream_t s;
                                cuda_or_throw(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
                                uint32_t* bad = nullptr;
                                cuda_or_throw(cudaMalloc(&bad, 4), "cudaMalloc");
                                comm.host_barrier();  // allocations done before any kernel spins
                                for (uint32_t round = 1; round <= 3; ++round) {
                                  cuda_or_throw(cudaMemsetAsync(bad, 0, 4, s), "memset");
                                  comm.host_barrier();
                                  ring_kernel<<<blocks, kThreads, 0, s>>>(bufs[r]->device_peer_ptrs(),
                                                                          bufs[r]->device_peer_signal_pads(), r, W,
                                                                          kWords, round, comm.sync_context(), bad);
                                  cuda_or_throw(cudaGetLastError(), "launch");
                                  comm.synchronize(s);  // throws on a device timeout
                                  uint32_t h = 1;
                                  cuda_or_throw(cudaMemcpyAsync(&h, bad, 4, cudaMemcpyDeviceToHost, s), "copy");
                                  cuda_or_throw(cudaStreamSynchronize(s), "sync");
                                  EXPECT_EQ(h, 0u) << "rank " << r << " round " << round;
                                }
                                comm.host_barrier();  // every rank done with its peers' buffers before they go
                                cudaFree(bad);
                                cudaStreamDestroy(s);
                              }),
                     "ring");
    bufs.clear();
  }
}

// stream_write_value32 into the right neighbour's pad; the neighbour's kernel (another stream) waits for it.
TEST(SymmetricMemoryLoopback, StreamWriteValueIntoPeerPad) {
  if (test::cuda_device_count() < 1) GTEST_SKIP() << "no CUDA device";
  constexpr int W = 3;
  auto comms = Communicator::create_loopback(W, kDevice);
  std::vector<std::unique_ptr<SymmetricBuffer>> bufs(W);
  expect_no_errors(on_ranks(W, [&](int r) { bufs[r] = SymmetricBuffer::allocate(*comms[r], 4096, 4096); }), "allocate");
  std::vector<uint32_t> got(W, 0);
  expect_no_errors(
      on_ranks(W,
               [&](int r) {
                 Communicator& comm = *comms[r];
                 cudaStream_t s_wait, s_write;
                 cuda_or_throw(cudaStreamCreateWithFlags(&s_wait, cudaStreamNonBlocking), "stream");
                 cuda_or_throw(cudaStreamCreateWithFlags(&s_write, cudaStreamNonBlocking), "stream");
                 uint32_t* ok = nullptr;
                 cuda_or_throw(cudaMalloc(&ok, 4), "cudaMalloc");
                 cuda_or_throw(cudaMemsetAsync(ok, 0, 4, s_wait), "memset");
                 comm.host_barrier();
                 const int left = (r + W - 1) % W;
                 wait_value_kernel<<<1, 1, 0, s_wait>>>(bufs[r]->local_signal_pad() + 5, 0xC0DE0000u + left, left,
                                                        comm.sync_context(), ok);
                 stream_write_value32(s_write, bufs[r]->peer_signal_pad((r + 1) % W) + 5, 0xC0DE0000u + r);
                 comm.synchronize(s_write);
                 comm.synchronize(s_wait);
                 cuda_or_throw(cudaMemcpyAsync(&got[r], ok, 4, cudaMemcpyDeviceToHost, s_wait), "copy");
                 cuda_or_throw(cudaStreamSynchronize(s_wait), "sync");
                 comm.host_barrier();
                 cudaFree(ok);
                 cudaStreamDestroy(s_wait);
                 cudaStreamDestroy(s_write);
               }),
      "write value");
  for (int r = 0; r < W; ++r) EXPECT_EQ(got[r], 1u) << "rank " << r;
}

TEST(SymmetricMemoryLoopback, SizeMismatchIsAnErrorNamingTheRank) {
  if (test::cuda_device_count() < 1) GTEST_SKIP() << "no CUDA device";
  constexpr int W = 3;
  auto comms = Communicator::create_loopback(W, kDevice);
  std::vector<std::string> what(W);
  std::vector<int> code(W, 0);
  on_ranks(W, [&](int r) {
    try {
      auto buf = SymmetricBuffer::allocate(*comms[r], r == W - 1 ? 8192 : 4096);
      what[r] = "allocation with different sizes succeeded";
    } catch (const Error& e) {
      code[r] = static_cast<int>(e.code());
      what[r] = e.what();
    }
  });
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(code[r], static_cast<int>(ErrorCode::kMismatch)) << "rank " << r << ": " << what[r];
    // Each rank names the first rank whose size differs from its own.
    const std::string other = r == W - 1 ? "rank 0 allocates 4096 bytes" : "rank " + std::to_string(W - 1) + " allocates 8192 bytes";
    EXPECT_NE(what[r].find(other), std::string::npos) << what[r];
  }
  // The world stays usable: a matching allocation afterwards works.
  std::vector<std::unique_ptr<SymmetricBuffer>> bufs(W);
  expect_no_errors(on_ranks(W, [&](int r) { bufs[r] = SymmetricBuffer::allocate(*comms[r], 4096); }), "allocate");
}

// A signal nobody sends: the wait gives up within the timeout and the error names the rank it waited for.
TEST(SymmetricMemoryLoopback, MissingSignalTimesOutNamingTheRank) {
  if (test::cuda_device_count() < 1) GTEST_SKIP() << "no CUDA device";
  constexpr int W = 2;
  CommOptions o;
  o.timeout_s = 0.5;
  auto comms = Communicator::create_loopback(W, kDevice, o);
  std::vector<std::unique_ptr<SymmetricBuffer>> bufs(W);
  expect_no_errors(on_ranks(W, [&](int r) { bufs[r] = SymmetricBuffer::allocate(*comms[r], 4096, 4096); }), "allocate");
  cudaSetDevice(kDevice);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  uint32_t* ok = nullptr;
  ASSERT_EQ(cudaMalloc(&ok, 4), cudaSuccess);
  const auto t0 = std::chrono::steady_clock::now();
  wait_value_kernel<<<1, 1, 0, s>>>(bufs[0]->local_signal_pad() + 9, 777u, 1, comms[0]->sync_context(), ok);
  try {
    comms[0]->synchronize(s);
    ADD_FAILURE() << "no timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 1 did not arrive"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), o.timeout_s + 2.0);
  cudaFree(ok);
  cudaStreamDestroy(s);
}

}  // namespace
