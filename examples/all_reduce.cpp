// Minimal tpcomm program: one process per GPU, sum a bf16 buffer across ranks.
//   build/tpcomm-launch build/tpcomm-example-all-reduce        (or torchrun / mpirun)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "tpcomm/tpcomm.h"

int main() {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;  // what CTest and tpcomm-launch read as "skipped"
  }
  try {
    auto comm = tpcomm::Communicator::from_env();  // RANK/WORLD_SIZE/LOCAL_RANK, NCCL underneath
    const std::size_t count = 1 << 20;
    void* buf = nullptr;
    cudaMalloc(&buf, count * 2);
    std::vector<uint16_t> ones(count, 0x3F80);  // bf16 1.0
    cudaMemcpy(buf, ones.data(), count * 2, cudaMemcpyHostToDevice);
    cudaStream_t stream;
    cudaStreamCreate(&stream);

    // In place; kAuto picks the algorithm from the measured crossover table (NCCL when peers lack P2P).
    const tpcomm::AllReduceAlgo ran =
        tpcomm::all_reduce(*comm, buf, buf, count, tpcomm::DType::kBFloat16, tpcomm::ReduceOp::kSum, stream);
    comm->synchronize(stream);  // throws tpcomm::Error (e.g. kTimeout naming a missing rank)

    // Every element is now float(world size), exact in bf16 for up to 256 ranks.
    std::vector<uint16_t> got(count);
    cudaMemcpy(got.data(), buf, count * 2, cudaMemcpyDeviceToHost);
    const float w = static_cast<float>(comm->world_size());
    uint32_t wbits;
    std::memcpy(&wbits, &w, 4);
    std::size_t wrong = 0;
    for (uint16_t v : got) wrong += v != static_cast<uint16_t>(wbits >> 16);
    if (comm->rank() == 0)
      std::printf("rank 0: %s all-reduce of %zu bf16 over %d ranks, element 0 = 0x%04x, %zu elements != %d.0\n",
                  tpcomm::all_reduce_algo_name(ran), count, comm->world_size(), got[0], wrong, comm->world_size());
    cudaFree(buf);
    cudaStreamDestroy(stream);
    comm->destroy();
    return wrong == 0 ? 0 : 1;
  } catch (const tpcomm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
