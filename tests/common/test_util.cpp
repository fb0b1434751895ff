#include "common/test_util.h"

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>

namespace tpcomm::test {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int copy_to_device(void* dst, const void* src, std::size_t bytes) {
  cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  return static_cast<int>(e);
}

uint64_t fresh_seed() {
  static std::atomic<uint64_t> counter{0};
  const uint64_t t = static_cast<uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  return t ^ (0x9E3779B97F4A7C15ull * (++counter));
}

}  // namespace tpcomm::test
