// Signal-pad kernels of SymmetricBuffer (signal_pad_barrier / signal_pad_put / signal_pad_wait in
// tpcomm/symmetric_memory.h). Slot of the signal src -> dst on a channel: pads[dst][channel * world + src].
//
// One writer per slot: only rank src sets pads[dst][channel * world + src] (0 -> 1), only rank dst clears it (1 -> 0),
// so "wait for 0, then store 1" and "wait for 1, then store 0" need no compare-and-swap. Every wait goes through
// tpcomm::device::wait_signal (timeout -> error record naming the rank, abort flag).
#pragma once

#include <cstdint>

#include "tpcomm/device/sync.cuh"

namespace tpcomm::detail {

enum class SignalOp : int { kBarrier = 0, kPut = 1, kWait = 2 };

struct SignalParams {
  uint32_t* const* pads;  // device table [world] of every rank's signal pad
  int rank;
  int world;
  int channel;
  int peer;               // kPut: dst rank; kWait: src rank; kBarrier: unused
  SignalOp op;
  device::SyncContext sync;
};

__device__ __forceinline__ bool signal_put(const SignalParams& p, int dst) {
  uint32_t* slot = p.pads[dst] + static_cast<std::size_t>(p.channel) * p.world + p.rank;
  // dst clears the slot when it consumes the previous signal; a 1 still there means dst has not waited yet.
  if (!device::wait_signal(p.sync, slot, 0u, dst)) return false;
  device::put_signal(slot, 1u);
  return true;
}

__device__ __forceinline__ bool signal_wait(const SignalParams& p, int src) {
  uint32_t* slot = p.pads[p.rank] + static_cast<std::size_t>(p.channel) * p.world + src;
  if (!device::wait_signal(p.sync, slot, 1u, src)) return false;
  // Release: src's next put (which waits for this 0) comes after everything this rank read before the wait returned.
  device::st_release_sys(slot, 0u);
  return true;
}

// <<<1, 32>>>: thread t handles rank t (world <= 32).
__global__ void signal_pad_kernel(SignalParams p) {
  const int t = static_cast<int>(threadIdx.x);
  // Everything this stream wrote before the kernel (earlier kernels, copies) is made visible at system scope before
  // any signal leaves.
  __threadfence_system();
  switch (p.op) {
    case SignalOp::kBarrier:
      if (t < p.world) {
        if (signal_put(p, t)) signal_wait(p, t);
      }
      break;
    case SignalOp::kPut:
      if (t == 0) signal_put(p, p.peer);
      break;
    case SignalOp::kWait:
      if (t == 0) signal_wait(p, p.peer);
      break;
  }
}

}  // namespace tpcomm::detail
