// Driver-API entry points, fetched at run time through cudaGetDriverEntryPointByVersion so that nothing
// links against libcuda.so.1 (absent on GPU-less CI machines; the runtime loads it when a GPU is there).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

namespace tpcomm::detail {

struct Driver {
  // Member names avoid the driver's own names, which cuda.h turns into versioned macros.
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;
  PFN_cuMemGetAddressRange_v3020 mem_get_address_range = nullptr;
  PFN_cuPointerGetAttribute_v4000 pointer_get_attribute = nullptr;
  PFN_cuStreamWriteValue32_v11070 stream_write_value32 = nullptr;
  PFN_cuMemsetD32Async_v3020 memset_d32_async = nullptr;
};

// Loaded once; throws kCudaError naming the missing symbol if the driver lacks one.
const Driver& driver();

}  // namespace tpcomm::detail
