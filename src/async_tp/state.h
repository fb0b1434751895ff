// Per-communicator state of the async-TP ops: the symmetric staging workspace (peer-mapped, with a signal pad for the
// start barrier and the chunk signals), the side stream the transfers run on, events, the cuBLASLt plans, and a local
// scratch arena for aligned scale slices. Created on the first async-TP call; grown collectively (eagerly, never during
// capture) when a call needs more; released first in Communicator::destroy().
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>

#include "async_tp/kernels.cuh"
#include "async_tp/lt_gemm.h"
#include "tpcomm/symmetric_memory.h"

namespace tpcomm::detail {

struct CommImpl;

// Signal-pad layout (bytes from the pad start). The barrier's flags are u64 [1 row][kAtpMaxRanks] at 0 (the barrier
// kernel is one block); all-gather chunk signals u32 [kAtpMaxRanks] (signal p: rank p's shard landed here);
// reduce-scatter signals u32 [kAtpMaxRanks] (signal p: rank p's partial of our chunk landed here).
constexpr std::size_t kAtpPadBytes = 4096;
constexpr std::size_t kAtpPadAgSignals = 256;
constexpr std::size_t kAtpPadRsSignals = 512;

struct AsyncTpState {
  int device = 0, rank = 0, world = 1;
  std::unique_ptr<SymmetricBuffer> ws;   // data: staging (AG: W shards, packed, then W scale slots; RS: recv | send)
  uint32_t* d_epoch = nullptr;           // barrier epoch (local)
  uint32_t* d_counters = nullptr;        // [kAtpMaxRanks] push-kernel completion counters (local, zero between launches)
  char* scratch = nullptr;               // local arena for aligned scale slices, reset per call
  float* tmp = nullptr;                  // fp32 column-major D of blockwise-scaled GEMMs (reused per GEMM)
  std::size_t tmp_bytes = 0;
  std::size_t scratch_bytes = 0, scratch_used = 0;
  cudaStream_t side = nullptr;           // transfers (copy engine or the SM push kernel)
  cudaEvent_t ev_fork = nullptr, ev_join = nullptr;
  cudaEvent_t ev_chunk[kAtpMaxRanks] = {};
  std::unique_ptr<LtGemm> lt;
  int sm_count = 0;
  bool logged_fallback_ag = false, logged_fallback_rs = false;
  std::set<uint64_t> warmed;             // loopback worlds: call signatures whose GEMMs were launched once in lockstep

  ~AsyncTpState();
  uint32_t* ag_signals() const { return reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(ws->local_signal_pad()) + kAtpPadAgSignals); }
  uint32_t* rs_signals() const { return reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(ws->local_signal_pad()) + kAtpPadRsSignals); }
  uint32_t* peer_ag_signal(int peer, int index) const {
    return reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(ws->peer_signal_pad(peer)) + kAtpPadAgSignals) + index;
  }
  uint32_t* peer_rs_signal(int peer, int index) const {
    return reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(ws->peer_signal_pad(peer)) + kAtpPadRsSignals) + index;
  }
};

}  // namespace tpcomm::detail
