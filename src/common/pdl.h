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
#include <cstdint>
#include <utility>

#include "common/check.h"

namespace tpcomm::detail {

// False when TPCOMM_PDL=0 (read once).
bool pdl_enabled();

// Resident blocks of `kernel` on the whole current device at this block size and dynamic shared memory
// (occupancy x SMs; cached).
int64_t device_capacity(const void* kernel, int threads, std::size_t smem);

// Whether a grid of `blocks` blocks of `kernel` fits in one wave of resident blocks.
inline bool fits_one_wave(const void* kernel, int64_t blocks, int threads, std::size_t smem) {
  return blocks <= device_capacity(kernel, threads, smem);
}

// The launch attribute for thread-block clusters of `cluster_x` blocks along x.
inline cudaLaunchAttribute cluster_attribute(unsigned cluster_x) {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = cluster_x;
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
  return a;
}

// launch_kernel below, with thread-block clusters of `cluster_x` blocks along x (grid.x a multiple of it); 0: no
// clusters.
template <typename... KernelArgs, typename... Args>
void launch_kernel_cluster(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem, unsigned cluster_x,
                           cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster_x != 0) attr[n++] = cluster_attribute(cluster_x);
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  TPCOMM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization when enabled.
// Every kernel gets it, one-wave grids included. Launched early, a one-wave grid's blocks go into the slots its
// predecessor frees while it still runs, so they can end up unevenly spread over the SMs: session 5 measured that
// as a loss for the 16-row MXFP8 3-D colwise kernel (E=1 4096x2048: 9.3 us without PDL, 9.9 with) and launched
// such grids without PDL; with the 8-row, 256-thread tiles of session 6 PDL wins there too (8.97 -> 8.27 us;
// "both" at 2048x5120 14.99 -> 14.6 us; nothing slower, bench/NOTES.md), so that exception is gone.
template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                   Args&&... args) {
  launch_kernel_cluster(kernel, grid, block, smem, 0, stream, std::forward<Args>(args)...);
}

}  // namespace tpcomm::detail
