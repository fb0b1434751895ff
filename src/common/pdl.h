// Programmatic dependent launch (PDL), shared by every tpcomm kernel launch (collectives and quantize).
//
// Kernels are launched with programmatic stream serialization, so one may start (block scheduling, parameter
// load, prologue) while its predecessor on the stream is still draining. The contract every PDL-launched kernel
// keeps (device side in pdl.cuh): it calls griddep_wait() before its first access to global memory that a
// predecessor may write or read. griddep_wait() returns once every predecessor grid has completed and its
// memory is visible, so stream order is unchanged for data; only the launch overlaps (about 1-2 us per call).
// TPCOMM_PDL=0 launches everything without the attribute (for A/B measurements and for debugging tools that do
// not support PDL).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "common/check.h"

namespace tpcomm::detail {

// False when TPCOMM_PDL=0 (read once).
bool pdl_enabled();

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization when enabled.
template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  TPCOMM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace tpcomm::detail
