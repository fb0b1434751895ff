// Communicator internals shared by the communicator, symmetric memory and the collectives.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "comm/topology.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/communicator.h"
#include "tpcomm/device/sync_types.h"
#include "tpcomm/symmetric_memory.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

struct AsyncTpState;  // src/async_tp/state.h: workspace, streams, GEMM plans of the async-TP ops
class LoopbackHub;    // src/comm/loopback_hub.h: in-process host exchange of a loopback world

constexpr int kMaxBlocks = 256;          // barrier flag slots per rank (grid sizes never exceed this)
constexpr int kMaxRegSlots = 8192;       // zero-copy pointer tables (RankData) per communicator
constexpr std::size_t kSignalPadBytes = 64 * 1024;  // flags 16 KiB + probe words
// Signal-pad layout of the all-reduce workspace (bytes from the pad start):
constexpr std::size_t kPadFlagsOffset = 0;                                    // u64 [kMaxBlocks][kMaxRanks]
constexpr std::size_t kPadProbeOffset = kMaxBlocks * kMaxRanks * sizeof(uint64_t);  // u32 [kMaxRanks]
// Copy-engine one-shot: arrival flags u32 [kCeMaxChunks][kMaxRanks], set to 1 by the sender's copy stream
// (cuStreamWriteValue32) after a chunk's copy, reset to 0 by the receiver before the next call's barrier.
constexpr int kCeMaxChunks = 32;
// Barrier-free one-shot: messages up to this size run the one-pass kernel (lowest latency: 8 KiB 3.00 vs
// 3.70 us, 512 KiB 4.84 vs 5.47 us for the pipelined kernel), larger ones the pipelined kernel (1 MiB
// 7.00-7.10 vs 7.75 us), measured on nvidia-h200-x2 (bench/NOTES.md).
constexpr std::size_t kLLSmallMaxBytes = std::size_t(512) << 10;
constexpr std::size_t kPadCeOffset = kPadProbeOffset + 256;
constexpr int kCeBarrierRow = kMaxBlocks - 1;  // flag row and BlockState replica of the copy-engine barrier
static_assert(kPadCeOffset + kCeMaxChunks * kMaxRanks * sizeof(uint32_t) <= kSignalPadBytes, "signal pad too small");

// Peer pointers of one zero-copy buffer, in device memory so captured graphs can read them after
// register_graph_buffers() fills them in.
struct RankData {
  const void* ptrs[kMaxRanks];
};

// Per-communicator device state of the all-reduce kernels (local memory, zeroed at creation), one replica
// per block index. Every algorithm launches a grid of fixed size for the life of the communicator (barrier
// algorithms and the pipelined barrier-free kernel: CommImpl::blocks, barrier-free: CommImpl::ll_blocks), so every block of that algorithm sees
// every launch and all replicas hold the same counters: a block reads its replica at its start and writes
// it at its end, with no atomics or fences between blocks.
struct BlockState {
  uint32_t epoch;       // barrier epochs used by this block index
  uint32_t seq;         // barrier-algorithm launches; parity selects the double-buffered half
  uint32_t ll_seq;      // barrier-free launches; %3 selects the buffer
  uint32_t ll_used[3];  // 16-byte vectors per slot written into each barrier-free buffer (to clear)
  uint32_t pad[2];
};
// The pipelined barrier-free kernel's ring (its own region and grid), kept out of BlockState: growing
// BlockState from 32 to 48 bytes measured +0.15 us on every small all-reduce (the read of the replica is
// on the latency chain of every kernel).
struct LlpState {
  uint32_t seq;
  uint32_t used[3];
};
struct ArState {
  BlockState blocks[kMaxBlocks];
  LlpState llp[kMaxBlocks];
};

struct Registration {
  uintptr_t begin, end;  // local range
  int slot;              // RankData slot
};

struct CommImpl {
  int rank = 0, world = 1, device = 0;
  ncclComm_t nccl = nullptr;  // null on a loopback world
  bool owns_nccl = false;
  // Loopback world (Communicator::create_loopback): every rank is a thread of this process on `device`; host
  // exchange goes through `hub` (shared by the world's communicators), there is no NCCL.
  bool loopback = false;
  std::shared_ptr<LoopbackHub> hub;
  int sm_count = 0;  // multiprocessors of `device`
  CommOptions opts;
  Topology topo;
  AllReduceTable ar_table;  // kAuto's crossover table for this world size (resolved at creation)
  std::vector<RankInfo> ranks;

  // host all-gather plumbing
  cudaStream_t aux_stream = nullptr;
  void* d_scratch = nullptr;
  std::size_t scratch_bytes = 0;

  // device error reporting
  device::ErrorRecord* h_error = nullptr;  // pinned, mapped
  device::ErrorRecord* d_error = nullptr;  // its device alias
  uint32_t* d_abort = nullptr;
  uint64_t timeout_ns = 5'000'000'000ull;

  // all-reduce workspace
  std::unique_ptr<SymmetricBuffer> ws;
  std::size_t off_two = 0, off_one = 0, off_ll = 0, off_llp = 0, off_ce = 0;  // region offsets in the workspace data
  std::size_t two_chunk_cap = 0, one_cap = 0, ll_cap = 0, llp_cap = 0, ce_cap = 0;
  cudaStream_t ce_stream = nullptr;  // copy-engine one-shot: the copies run here, forked from the caller's stream
  cudaEvent_t ce_fork = nullptr, ce_join = nullptr;
  int blocks = 128;     // grid of the barrier algorithms (fixed for the communicator's life; TPCOMM_AR_BLOCKS)
  int ll_blocks = 64;   // grid of the barrier-free one-shot (TPCOMM_AR_LL_BLOCKS)
  int threads = 512;
  ArState* d_state = nullptr;
  RankData* d_regs = nullptr;
  int next_reg_slot = 0;
  std::vector<Registration> registrations;                    // sorted by begin
  // Peer allocations opened through CUDA IPC, keyed by (peer, handle bytes): a peer may free a buffer and
  // get a new one at the same address, which has a different handle and must be mapped anew.
  std::map<std::pair<int, std::string>, void*> opened;
  std::vector<std::pair<const void*, int>> pending_graph;     // (local ptr, slot) captured but not exchanged
  int capture_depth = 0;

  // lifecycle
  bool destroyed = false;
  bool broken = false;
  // In-flight tracking for destroy(): one event per stream an op was enqueued on (eager calls), recorded after
  // the op; and a count of captured ops whose CUDA graph (or an executable instance of it, or a replay still
  // running) is alive: every captured op moves one CUDA user object into the graph, whose destructor (run by
  // CUDA once the graph, its instances and their pending launches are gone) decrements the count. The count
  // lives in a shared block so a destructor that runs after this communicator is gone stays safe.
  struct StreamEvent {
    cudaStream_t stream;
    cudaEvent_t event;
  };
  std::vector<StreamEvent> stream_events;
  std::mutex events_mu;
  struct GraphRefs {
    std::atomic<int64_t> live{0};
  };
  std::shared_ptr<GraphRefs> graph_refs = std::make_shared<GraphRefs>();
  mutable std::mutex mu;

  std::atomic<uint64_t> fast_calls{0}, nccl_calls{0}, nccl_fallbacks{0}, copy_in_calls{0}, zero_copy_calls{0};
  std::atomic<uint64_t> atp_fused{0}, atp_unfused{0}, atp_fallbacks{0};
  // Created on the first async-TP call (shared_ptr: its deleter is bound where the type is complete); released
  // first in destroy().
  std::shared_ptr<AsyncTpState> atp;
  bool logged_fallback = false;

  device::SyncContext sync_ctx() const { return {d_error, d_abort, timeout_ns}; }
  void ensure_usable(const char* op) const;     // throws kInvalidState after destroy / timeout
  // After every op: records the stream's event (eager) or ties the op to the graph being captured.
  void note_enqueued(cudaStream_t stream);
  // destroy()'s check: throws kInvalidState naming what is still in flight (nothing freed yet).
  void ensure_idle(const char* op);
  void* map_peer_allocation(int peer, const cudaIpcMemHandle_t& h, uintptr_t peer_base, int peer_pid, void* peer_ptr);
};

// Co-residency on a loopback world. All W ranks' kernels share one GPU, and a cross-rank kernel of one rank spins
// until the peers' kernels have run their part: if rank 0's grid fills the SMs while rank 1's grid waits for a
// slot, rank 0 waits until the timeout. Grids that W ranks run at the same time must therefore fit in the device
// together. loopback_max_ctas returns the most CTAs one rank's grid of a kernel may have: on a loopback world
// floor(ctas_per_sm x SMs / W) (W such grids are resident at once), elsewhere ctas_per_sm x SMs (one wave).
// ctas_per_sm is the kernel's occupancy (cudaOccupancyMaxActiveBlocksPerMultiprocessor at its block size and
// shared memory). Throws kUnsupported when not even one CTA per rank fits. The bound counts only the W grids of one
// kernel: work the ranks run besides it on the device must leave room (or use a smaller cap).
// A persistent kernel (e.g. the async-TP native GEMM) limits its grid with this.
int loopback_max_ctas(const CommImpl& c, int ctas_per_sm);
// Programmatic dependent launch on a loopback world: a PDL-launched kernel behind a spinning cross-rank kernel on
// the same stream is scheduled early and holds SM slots while it waits (griddepcontrol.wait), which can keep a
// peer's grid out. So on a loopback world cross-rank kernels are launched without the PDL attribute, and
// loopback_fence(stream) right after one enqueues a one-thread kernel without it: whatever comes next on the
// stream is scheduled only after the cross-rank kernel has finished. A no-op unless c.loopback.
// launch_cross_rank (comm/loopback_launch.h) does both.
void loopback_fence(const CommImpl& c, cudaStream_t stream);
// Lazy module loading on a loopback world: the first launch of a kernel loads it, and a load can wait for kernels
// running in the context, i.e. for a peer rank's spinning kernel that waits for this rank's launch (a deadlock until
// the timeout, seen in the async-TP loopback tests on nvidia-h200). Every kernel a rank may launch while a peer's
// cross-rank kernel runs must be loaded before (cudaFuncGetAttributes loads it). This loads loopback_fence's kernel;
// all_reduce_min_ctas_per_sm loads the all-reduce kernels.
void loopback_preload_kernels();
// Occupancy (CTAs per SM at `threads` threads) of the least-occupying all-reduce kernel launched with
// CommImpl::blocks or ll_blocks (src/collectives/all_reduce.cu; any kernel added there with those grids must be
// counted in it).
int all_reduce_min_ctas_per_sm(int threads);

// Test hook: run the generic-world-size kernels (used for W = 3..8) even at W = 2, so a 2-GPU machine
// exercises that code.
void set_force_generic_world_kernels(bool on);

// NCCL datatype/op for tpcomm's enums; throws kInvalidArgument naming `arg`.
ncclDataType_t to_nccl(DType dtype, const char* arg);
ncclRedOp_t to_nccl(ReduceOp op, const char* arg);

}  // namespace tpcomm::detail
