// Minimal tpcomm program: one process per GPU, sum a bf16 buffer across ranks.
//   build/tpcomm-launch build/tpcomm-example-all-reduce        (or torchrun / mpirun)
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "tpcomm/tpcomm.h"

int main() {
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

    uint16_t first = 0;
    cudaMemcpy(&first, buf, 2, cudaMemcpyDeviceToHost);
    if (comm->rank() == 0)
      std::printf("rank 0: %s all-reduce of %zu bf16 over %d ranks, element 0 = 0x%04x (expected %d.0)\n",
                  tpcomm::all_reduce_algo_name(ran), count, comm->world_size(), first, comm->world_size());
    cudaFree(buf);
    cudaStreamDestroy(stream);
    comm->destroy();
  } catch (const tpcomm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
