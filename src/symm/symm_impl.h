// Symmetric-memory internals: the failure-tolerant collective allocator and the peer-mapping helpers used
// by buffer registration.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "tpcomm/symmetric_memory.h"

namespace tpcomm {
class Communicator;

struct SymmetricAllocator {
  // Collective. Every rank allocates, exports and maps; when any step fails on any rank, all ranks free
  // what they made and return nullptr with the same `why`. Different sizes across ranks throw kMismatch.
  static std::unique_ptr<SymmetricBuffer> allocate_agreed(const Communicator& comm, std::size_t bytes,
                                                          std::size_t pad_bytes, std::string* why);
};

namespace detail {
// Writes magic ^ rank into pad[probe_word + rank] of every rank's signal pad (a kernel, i.e. the same SM
// stores through the peer mapping that the collectives use).
void launch_probe_write(uint32_t* const* d_pads, std::size_t probe_word, int rank, int world, uint32_t magic,
                        cudaStream_t stream);

// What a rank publishes about one of its device allocations so peers can map it.
struct ExportedRange {
  cudaIpcMemHandle_t handle;
  uint64_t base;    // allocation base address in the owner's process
  uint64_t offset;  // of the range within the allocation
  uint64_t bytes;
  int32_t pid;
  int32_t ok;
};
// Describes `ptr` (any address inside a cudaMalloc allocation). Throws kInvalidArgument("ptr: ...") when
// the memory cannot be exported.
ExportedRange export_range(const void* ptr, std::size_t bytes);
}  // namespace detail
}  // namespace tpcomm
