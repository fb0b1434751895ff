// tpcomm::Communicator: the ranks of one job, bootstrapped through NCCL, plus what tpcomm learned about the
// node (peer access, NVLink, a real write-through-peer probe). NCCL stays underneath as the bootstrap, the
// fallback for every op, and the path across nodes.
//
// Modes:
//  * one process per GPU (main mode): create(rank, world, device, id), adopt(ncclComm_t) or from_env()
//    (torchrun, mpirun, tpcomm-launch environments);
//  * one process driving all local GPUs: create_local(devices) returns one Communicator per device; use each
//    from its own thread (collectives on a communicator are called by that rank's thread, as with NCCL).
//  * a loopback world (testing on one GPU): create_loopback(W, device) returns W communicators on the SAME device,
//    one per rank, each used from its own thread; symmetric buffers of all ranks live on that device, host
//    exchange is in-process, there is no NCCL (docs/loopback.md).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tpcomm/device/sync_types.h"

namespace tpcomm {

struct CommOptions {
  // Workspace limits of the all-reduce algorithms: the largest message each handles. 0 = the default for
  // the world size W (chosen from measurements; see src/comm/communicator.cpp). Resolved values are in
  // Communicator::options() after creation.
  // Two-shot: workspace 4x this (W=2: 16 MiB, else 64 MiB).
  std::size_t two_shot_max_bytes = 0;
  // One-shot (push, one barrier): workspace 2*W*this (W=2: 64 MiB, W<=4: 8 MiB, else 4 MiB).
  std::size_t one_shot_max_bytes = 0;
  // Barrier-free one-shot: workspace 3*W*this (1 MiB); messages above 512 KiB run its pipelined kernel.
  std::size_t lamport_max_bytes = 0;
  // Copy-engine one-shot (pinned use only; auto measured it slower): workspace W*this (W=2: 16 MiB;
  // larger W: not allocated, since each rank would send W-1 full copies).
  std::size_t copy_engine_max_bytes = 0;
  // Device-side wait timeout in seconds (env TPCOMM_TIMEOUT_S overrides).
  double timeout_s = 5.0;
  // Every op through NCCL (env TPCOMM_FORCE_NCCL=1 or TPCOMM_DISABLE_P2P=1 set this too).
  bool force_nccl = false;
};

// What the communicator found out about the ranks and the links between them.
struct Topology {
  int world_size = 1;
  int nodes = 1;                  // distinct hosts
  bool peer_access = false;       // cudaDeviceCanAccessPeer (or an IPC mapping) for every pair
  bool nvlink = false;            // NVML reports NVLink P2P for every pair (false if NVML is missing)
  bool nvml_available = false;
  bool probe_ok = false;          // a value written through every peer mapping was read back by its owner
  bool fast_path = false;         // tpcomm's own kernels are used
  bool loopback = false;          // all ranks are threads of one process on one device (create_loopback); no NCCL
  std::string reason;             // why fast_path is false (one line), empty otherwise
};

// Counters (per communicator): how often each path ran; "fallback" counts calls that wanted the fast path
// but went to NCCL because the topology or an argument did not allow it.
struct CommStats {
  uint64_t fast_calls = 0;
  uint64_t nccl_calls = 0;
  uint64_t nccl_fallbacks = 0;
  uint64_t copy_in_calls = 0;     // one-shot calls that copied the input into the workspace
  uint64_t zero_copy_calls = 0;   // calls that read the caller's buffer directly (registered or pushed)
  // Async TP (all_gather_matmul, matmul_reduce_scatter): calls that ran a fused engine, calls that ran unfused
  // because the caller asked for it, and calls that wanted a fused engine but fell back (allow_fallback).
  uint64_t async_tp_fused_calls = 0;
  uint64_t async_tp_unfused_calls = 0;
  uint64_t async_tp_fallbacks = 0;
};

namespace detail {
struct CommImpl;
}

class Communicator {
 public:
  // Creates rank `rank` of `world_size` on `device` from an ncclUniqueId made by one rank and shared.
  static std::unique_ptr<Communicator> create(int rank, int world_size, int device, const ncclUniqueId& id,
                                              const CommOptions& options = {});
  // Adopts an existing NCCL communicator (not destroyed by tpcomm). The current device must be the comm's.
  static std::unique_ptr<Communicator> adopt(ncclComm_t comm, const CommOptions& options = {});
  // Reads RANK/WORLD_SIZE/LOCAL_RANK (torchrun), OMPI_COMM_WORLD_* (mpirun) or tpcomm-launch's variables;
  // the device is LOCAL_RANK. Bootstrap: TPCOMM_NCCL_ID, else NCCL_COMM_ID (from MASTER_ADDR:MASTER_PORT+1).
  static std::unique_ptr<Communicator> from_env(const CommOptions& options = {});
  // One process, all given devices (rank i on devices[i]). Internally one thread per device performs the
  // collective setup.
  static std::vector<std::unique_ptr<Communicator>> create_local(const std::vector<int>& devices,
                                                                 const CommOptions& options = {});
  // A loopback world: `world_size` (1..8) ranks in this process, all on `device` (element i is rank i; use each
  // from its own thread, as with create_local; setup runs in world_size internal threads). Symmetric buffers of
  // every rank are allocated on that device and the peer tables point at them, so the cross-rank protocols
  // (signals, barriers, all-reduce, symmetric memory, async TP) run unchanged; host_all_gather / host_barrier meet
  // in-process and throw kTimeout naming the rank that did not arrive within options.timeout_s. There is no NCCL:
  // nccl() and AllReduceAlgo::kNccl throw kUnsupported, kAuto never picks NCCL. The ranks' kernels share the GPU,
  // so the all-reduce grids are divided among the ranks to keep every rank's grid resident (no deadlock). For
  // correctness tests: timings measure nothing. force_nccl is rejected (kInvalidArgument); TPCOMM_FORCE_NCCL and
  // TPCOMM_DISABLE_P2P are ignored (logged).
  static std::vector<std::unique_ptr<Communicator>> create_loopback(int world_size, int device,
                                                                    const CommOptions& options = {});

  ~Communicator();  // never throws; logs if ops were still in flight (call destroy() to get the error)
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // Frees everything. Throws kInvalidState if work enqueued by tpcomm on any stream has not finished
  // (nothing is freed then: call again after synchronizing). Any later use throws kInvalidState.
  void destroy();

  int rank() const;
  int world_size() const;
  int device() const;
  ncclComm_t nccl() const;  // throws kUnsupported on a loopback world
  bool loopback() const { return topology().loopback; }
  const Topology& topology() const;
  bool fast_path() const { return topology().fast_path; }
  const CommOptions& options() const;
  CommStats stats() const;

  // Throws the first device-side error (timeout naming the missing rank, size mismatch, ...) recorded by
  // any tpcomm kernel of this communicator. Cheap (reads host-mapped memory); ops call it on entry.
  void check() const;
  // cudaStreamSynchronize(stream), then check().
  void synchronize(cudaStream_t stream) const;
  // What a caller's own kernel passes to the device primitives of tpcomm/device/sync.cuh (wait_signal,
  // block_wait): this communicator's host-mapped error record, abort flag and timeout. A wait that times out
  // there is reported like tpcomm's own (check() / synchronize() throw kTimeout naming the rank).
  device::SyncContext sync_context() const;

  // Host-side all-gather of `bytes` per rank through NCCL, or in-process on a loopback world (collective; used for
  // handle exchange).
  void host_all_gather(const void* send, void* recv, std::size_t bytes) const;
  void host_barrier() const;

  detail::CommImpl& impl() const;

 private:
  explicit Communicator(std::unique_ptr<detail::CommImpl> impl);
  std::unique_ptr<detail::CommImpl> impl_;
};

}  // namespace tpcomm
