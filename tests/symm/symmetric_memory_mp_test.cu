// Symmetric memory across processes (one per GPU; buffers exchanged through CUDA IPC), through the public API only,
// the way a caller's own kernel uses it: peer pointers and signal pads from SymmetricBuffer, the device primitives
// of tpcomm/device/sync.cuh with Communicator::sync_context(), stream_write_value32 into a peer's pad, a size
// mismatch at allocation, and a signal that never comes (kTimeout naming the rank, within the limit).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/mp.h"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/tpcomm.h"

using namespace tpcomm;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

// Every block: writes n words of pattern (rank, block, i) into its right neighbour's buffer, raises the
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

TEST(SymmetricMemoryMp, RingThroughPeerPointersAndSignals) {
  Communicator& comm = test::mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  constexpr int kBlocks = 64, kWords = 4096;
  auto buf = SymmetricBuffer::allocate(comm, size_t(kBlocks) * kWords * 4, 4096);
  EXPECT_EQ(buf->rank(), R);
  EXPECT_EQ(buf->world_size(), W);
  for (int p = 0; p < W; ++p) EXPECT_NE(buf->peer(p), nullptr);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint32_t* bad = nullptr;
  CUDA_OK(cudaMalloc(&bad, 4));
  for (uint32_t round = 1; round <= 3; ++round) {  // signals count up: a stale one cannot satisfy the next wait
    CUDA_OK(cudaMemsetAsync(bad, 0, 4, s));
    comm.host_barrier();
    ring_kernel<<<kBlocks, 256, 0, s>>>(buf->device_peer_ptrs(), buf->device_peer_signal_pads(), R, W, kWords, round,
                                        comm.sync_context(), bad);
    CUDA_OK(cudaGetLastError());
    comm.synchronize(s);  // throws on a device timeout
    uint32_t h = 1;
    CUDA_OK(cudaMemcpy(&h, bad, 4, cudaMemcpyDeviceToHost));
    EXPECT_EQ(h, 0u) << "round " << round;
  }
  comm.host_barrier();  // every rank done with its peers' buffers before they are freed
  cudaFree(bad);
  cudaStreamDestroy(s);
}

// stream_write_value32 orders a 32-bit write into a peer's signal pad after prior stream work; the peer's kernel
// waits for it with wait_signal.
TEST(SymmetricMemoryMp, StreamWriteValueIntoPeerPad) {
  Communicator& comm = test::mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  auto buf = SymmetricBuffer::allocate(comm, 4096, 4096);
  // The wait and the write on different streams (on one stream the write would queue behind the wait: a ring of
  // such waits would never be satisfied).
  cudaStream_t s_wait, s_write;
  CUDA_OK(cudaStreamCreateWithFlags(&s_wait, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&s_write, cudaStreamNonBlocking));
  uint32_t* ok = nullptr;
  CUDA_OK(cudaMalloc(&ok, 4));
  CUDA_OK(cudaMemset(ok, 0, 4));
  comm.host_barrier();
  const int left = (R + W - 1) % W;
  wait_value_kernel<<<1, 1, 0, s_wait>>>(buf->local_signal_pad() + 5, 0xC0DE0000u + left, left, comm.sync_context(), ok);
  stream_write_value32(s_write, buf->peer_signal_pad((R + 1) % W) + 5, 0xC0DE0000u + R);
  comm.synchronize(s_write);
  comm.synchronize(s_wait);
  uint32_t h = 0;
  CUDA_OK(cudaMemcpy(&h, ok, 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(h, 1u);
  comm.host_barrier();
  cudaFree(ok);
  cudaStreamDestroy(s_wait);
  cudaStreamDestroy(s_write);
}

TEST(SymmetricMemoryMp, SizeMismatchIsAnErrorNamingTheRank) {
  Communicator& comm = test::mp_comm();
  const int W = comm.world_size(), R = comm.rank();
  if (!comm.fast_path()) GTEST_SKIP() << "no peer memory: " << comm.topology().reason;
  const int odd = W - 1;
  try {
    auto buf = SymmetricBuffer::allocate(comm, R == odd ? 8192 : 4096);
    ADD_FAILURE() << "allocation with different sizes succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kMismatch) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank"), std::string::npos) << e.what();
  }
  comm.host_barrier();
}

// A signal nobody sends: the wait gives up within the timeout and the error names the rank it waited for.
TEST(SymmetricMemoryMp, MissingSignalTimesOutNamingTheRank) {
  CommOptions o;
  o.timeout_s = 0.5;
  auto comm = test::fresh_comm(o);
  const int W = comm->world_size(), R = comm->rank();
  if (!comm->fast_path()) GTEST_SKIP() << "no peer memory: " << comm->topology().reason;
  auto buf = SymmetricBuffer::allocate(*comm, 4096, 4096);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint32_t* ok = nullptr;
  CUDA_OK(cudaMalloc(&ok, 4));
  const int left = (R + W - 1) % W;
  const auto t0 = std::chrono::steady_clock::now();
  wait_value_kernel<<<1, 1, 0, s>>>(buf->local_signal_pad() + 9, 777u, left, comm->sync_context(), ok);
  try {
    comm->synchronize(s);
    ADD_FAILURE() << "no timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(left) + " did not arrive"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), o.timeout_s + 2.0);
  test::mp_comm().host_barrier();
  cudaFree(ok);
  cudaStreamDestroy(s);
}

}  // namespace
