#include "common/check.h"
#include "symm/symm_impl.h"

namespace tpcomm::detail {

__global__ void probe_write_kernel(uint32_t* const* pads, std::size_t probe_word, int rank, int world, uint32_t magic) {
  const int p = threadIdx.x;
  if (p < world) {
    volatile uint32_t* dst = pads[p] + probe_word + rank;
    *dst = magic ^ static_cast<uint32_t>(rank);
  }
  __threadfence_system();
}

void launch_probe_write(uint32_t* const* d_pads, std::size_t probe_word, int rank, int world, uint32_t magic,
                        cudaStream_t stream) {
  probe_write_kernel<<<1, 32, 0, stream>>>(d_pads, probe_word, rank, world, magic);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::detail
