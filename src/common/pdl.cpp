#include "common/pdl.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace tpcomm::detail {

namespace {

bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

}  // namespace

bool pdl_enabled() {
  static const bool on = !env_is("TPCOMM_PDL", "0");
  return on;
}

int64_t device_capacity(const void* kernel, int threads, std::size_t smem) {
  struct Entry {
    const void* kernel;
    int threads;
    std::size_t smem;
    int device;
    int64_t capacity;  // resident blocks on the whole device
  };
  static std::mutex mu;
  static std::vector<Entry> cache;  // a few dozen kernel instantiations at most
  int dev = 0;
  TPCOMM_CUDA_CHECK(cudaGetDevice(&dev));
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const Entry& e : cache)
      if (e.kernel == kernel && e.threads == threads && e.smem == smem && e.device == dev) return e.capacity;
  }
  int per_sm = 0, sms = 0;
  TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int64_t capacity = int64_t(per_sm) * sms;
  std::lock_guard<std::mutex> lock(mu);
  cache.push_back({kernel, threads, smem, dev, capacity});
  return capacity;
}

}  // namespace tpcomm::detail
