// Host-visible types of the device synchronization layer (safe to include from host-only C++).
#pragma once

#include <cstdint>

namespace tpcomm::device {

enum DeviceErrorCode : uint32_t {
  kDevOk = 0,
  kDevTimeout = 1,        // a peer did not arrive in time
  kDevSizeMismatch = 2,   // a peer entered the same collective with a different size
  kDevNotRegistered = 3,  // a captured graph was replayed before register_graph_buffers()
};

// Host-visible error record (lives in pinned, mapped host memory; one per communicator).
struct ErrorRecord {
  uint32_t code;   // DeviceErrorCode; first error wins (atomicCAS from 0)
  int32_t peer;    // rank that did not arrive / disagreed
  uint32_t block;  // blockIdx.x that saw it
  uint32_t detail; // e.g. the peer's size tag for kDevSizeMismatch
};

struct SyncContext {
  ErrorRecord* error;        // host-mapped
  uint32_t* abort;           // device memory: non-zero once any block of this communicator gave up
  uint64_t timeout_ns;       // per wait
};

}  // namespace tpcomm::device
