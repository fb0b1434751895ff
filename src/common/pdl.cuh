// Device half of programmatic dependent launch (host half and the contract: pdl.h).
#pragma once

namespace tpcomm::detail {

// Blocks until every predecessor grid on the stream has completed and its memory is visible. A no-op when the
// kernel was launched without the PDL attribute. Call before the first global access a predecessor may conflict
// with (read after write and write after read alike).
__device__ __forceinline__ void griddep_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// Lets the next PDL-launched grid on the stream begin launching once every block of this grid has called this or
// exited. Safe anywhere: the dependent still waits for this grid's completion before touching memory.
__device__ __forceinline__ void griddep_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// The usual prologue: wait for the predecessor, then let the successor start launching.
__device__ __forceinline__ void pdl_prologue() {
  griddep_wait();
  griddep_launch_dependents();
}

}  // namespace tpcomm::detail
