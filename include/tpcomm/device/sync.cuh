// Device-side synchronization primitives over symmetric (peer-mapped) memory.
//
// Every wait in tpcomm goes through wait_* below: it spins with a timeout read from %globaltimer and, on
// timeout, records {code, missing rank, block} in a host-mapped error word and raises a device-local abort
// flag, so every other block of the launch stops waiting as well. The kernel then returns normally (no
// trap: the CUDA context stays usable) and the host turns the record into tpcomm::Error(kTimeout, "rank R
// did not arrive ..."). No infinite spin, ever.
//
// Memory ordering: signals are written with st.release.sys and read with ld.acquire.sys, so everything the
// signalling thread observed before the store (including other threads' writes ordered by __syncthreads)
// is visible to the thread that observes the signal. Peers are GPUs of one node reached over NVLink/PCIe:
// ".sys" scope is required (".gpu" only orders within one device).
#pragma once

#include <cstddef>
#include <cstdint>

#include "tpcomm/device/sync_types.h"

namespace tpcomm::device {

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void st_release_sys(uint64_t* addr, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(addr), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* addr) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_sys(uint32_t* addr, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t ld_acquire_sys(const uint32_t* addr) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t ld_volatile(const uint32_t* addr) {
  uint32_t v;
  asm volatile("ld.volatile.global.u32 %0, [%1];" : "=r"(v) : "l"(addr) : "memory");
  return v;
}

// Records the first error of this communicator and raises the abort flag.
__device__ __forceinline__ void report_error(const SyncContext& ctx, uint32_t code, int peer, uint32_t detail = 0) {
  if (atomicCAS_system(&ctx.error->code, 0u, code) == 0u) {
    ctx.error->peer = peer;
    ctx.error->block = blockIdx.x;
    ctx.error->detail = detail;
    __threadfence_system();
  }
  atomicExch(ctx.abort, 1u);
}

__device__ __forceinline__ bool aborted(const SyncContext& ctx) { return ld_volatile(ctx.abort) != 0; }

// Spins until pred(ld_acquire(addr)) holds. Returns false (after reporting kDevTimeout naming `peer`) when
// the timeout passes, or false without reporting when another block already aborted.
template <typename T, typename Pred>
__device__ __forceinline__ bool wait_until(const SyncContext& ctx, const T* addr, int peer, Pred pred) {
  if (pred(ld_acquire_sys(addr))) return true;
  const uint64_t start = global_timer_ns();
  for (uint32_t spin = 1;; ++spin) {
    if (pred(ld_acquire_sys(addr))) return true;
    if ((spin & 63u) == 0) {  // reading the timer and the abort flag every 64 polls keeps the loop tight
      if (aborted(ctx)) return false;
      if (global_timer_ns() - start > ctx.timeout_ns) {
        report_error(ctx, kDevTimeout, peer);
        return false;
      }
    }
  }
}

// Waits until *addr == expected (32-bit signal; seed 000's wait_signal).
__device__ __forceinline__ bool wait_signal(const SyncContext& ctx, const uint32_t* addr, uint32_t expected, int peer) {
  return wait_until(ctx, addr, peer, [expected](uint32_t v) { return v == expected; });
}

// Sets a peer's 32-bit signal (seed 000's put_signal), release-ordered after this thread's prior writes.
__device__ __forceinline__ void put_signal(uint32_t* peer_addr, uint32_t value) { st_release_sys(peer_addr, value); }

// Cross-rank barrier at block granularity.
//
// Layout: flags[block * max_ranks + src_rank] in each rank's signal pad, 64-bit {hi: tag, lo: epoch}.
// Block b of rank r writes its epoch into flags[b][r] of every peer, then waits until its own flags[b][p]
// reach the epoch for every peer p. Epochs only grow (one per barrier per block), so a peer that is one
// barrier ahead (it can never be further ahead: it would need our arrival) still satisfies ">= epoch".
// The tag (e.g. the message size) must be equal on all ranks when the epochs are equal; a difference is
// reported as kDevSizeMismatch. Requires blockDim.x >= world_size. Must be called by all threads.
struct BlockBarrier {
  uint64_t* const* peer_flags;  // [world] pointers to each rank's flag array (device-visible table)
  uint64_t* my_flags;           // this rank's flag array
  int rank;
  int world_size;
  int max_ranks;
};

// Split block barrier on flag row blockIdx.x of the pad. Must be called by all threads of the block.
// block_arrive publishes the epoch (after all the block's prior writes: __syncthreads, then a .sys release
// store per peer) and returns at once; block_wait blocks until every peer has arrived at `epoch`.
__device__ __forceinline__ void block_arrive(const BlockBarrier& bar, uint32_t epoch, uint32_t tag) {
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < bar.world_size) {
    const uint64_t mine = (static_cast<uint64_t>(tag) << 32) | epoch;
    st_release_sys(bar.peer_flags[threadIdx.x] + static_cast<std::size_t>(blockIdx.x) * bar.max_ranks + bar.rank, mine);
  }
}

__device__ __forceinline__ bool block_wait(const SyncContext& ctx, const BlockBarrier& bar, uint32_t epoch, uint32_t tag) {
  bool ok = true;
  if (static_cast<int>(threadIdx.x) < bar.world_size) {
    const int p = static_cast<int>(threadIdx.x);
    const uint64_t* slot = bar.my_flags + static_cast<std::size_t>(blockIdx.x) * bar.max_ranks + p;
    ok = wait_until(ctx, slot, p, [epoch](uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v) - epoch) >= 0; });
    if (ok) {
      const uint64_t v = ld_acquire_sys(slot);
      if (static_cast<uint32_t>(v) == epoch && static_cast<uint32_t>(v >> 32) != tag) {
        report_error(ctx, kDevSizeMismatch, p, static_cast<uint32_t>(v >> 32));
        ok = false;
      }
    }
  }
  // The abort flag is read before the reduction so every thread of the block gets the same answer (a block
  // that split here would meet at mismatched barriers).
  return __syncthreads_and(ok && !aborted(ctx));
}

__device__ __forceinline__ bool block_barrier(const SyncContext& ctx, const BlockBarrier& bar, uint32_t epoch, uint32_t tag) {
  block_arrive(bar, epoch, tag);
  return block_wait(ctx, bar, epoch, tag);
}

}  // namespace tpcomm::device
