#include "common/driver.h"

#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include "tpcomm/error.h"

namespace tpcomm::detail {

template <typename Fn>
static void load(Fn& fn, const char* name, int version) {
  cudaDriverEntryPointQueryResult q{};
  void* p = nullptr;
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, version, cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !p) {
    cudaGetLastError();
    throw Error(ErrorCode::kCudaError, std::string("driver entry point ") + name + " (version " +
                                           std::to_string(version) + ") is not available");
  }
  fn = reinterpret_cast<Fn>(p);
}

const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    try {
      load(d.get_error_name, "cuGetErrorName", 6000);
      load(d.get_error_string, "cuGetErrorString", 6000);
      load(d.mem_get_address_range, "cuMemGetAddressRange", 3020);
      load(d.pointer_get_attribute, "cuPointerGetAttribute", 4000);
      load(d.stream_write_value32, "cuStreamWriteValue32", 11070);
      load(d.memset_d32_async, "cuMemsetD32Async", 3020);
    } catch (const Error& e) {
      failure = e.what();
    }
  });
  if (!failure.empty()) throw Error(ErrorCode::kCudaError, failure);
  return d;
}

}  // namespace tpcomm::detail
