// Launching a cross-rank kernel (one that waits on peers) so that it cannot deadlock on a loopback world: there it
// goes without the PDL attribute and is followed by loopback_fence (comm/comm_impl.h says why); elsewhere it is
// launch_kernel (common/pdl.h) unchanged. Grids must also respect loopback_max_ctas.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "comm/comm_impl.h"
#include "common/check.h"
#include "common/pdl.h"

namespace tpcomm::detail {

template <typename... KernelArgs, typename... Args>
void launch_cross_rank(const CommImpl& c, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem,
                       cudaStream_t stream, Args&&... args) {
  if (!c.loopback) {
    launch_kernel(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
    return;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = nullptr;
  cfg.numAttrs = 0;  // no PDL: griddep_wait() in the kernel is then a no-op
  TPCOMM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  loopback_fence(c, stream);
}

}  // namespace tpcomm::detail
