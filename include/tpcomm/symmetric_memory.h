// Symmetric memory (seed 000's empty() + rendezvous()): a buffer of the same size on every rank of a
// communicator, mapped into every peer, with a signal pad of 32-bit words next to it.
//
// The allocator (CUDA IPC handles of cudaMalloc memory, exchanged through NCCL) is separate from the
// communicator: a communicator only provides the host all-gather used for the exchange. In one process
// driving several GPUs, peers are mapped through peer access instead of IPC (same interface).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace tpcomm {

class Communicator;

class SymmetricBuffer {
 public:
  // Collective: every rank calls it with the same `bytes` (checked; a difference throws kMismatch naming
  // the rank). signal_pad_bytes of zeroed uint32 signals come with it. The device allocation is rounded up to
  // whole 2 MiB units (its own CUDA IPC allocation: peers map it independently of any other buffer).
  static std::unique_ptr<SymmetricBuffer> allocate(const Communicator& comm, std::size_t bytes,
                                                   std::size_t signal_pad_bytes = 64 * 1024);
  ~SymmetricBuffer();
  SymmetricBuffer(const SymmetricBuffer&) = delete;
  SymmetricBuffer& operator=(const SymmetricBuffer&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  std::size_t bytes() const { return bytes_; }
  std::size_t signal_pad_bytes() const { return pad_bytes_; }

  void* local() const { return peer_data_[rank_]; }
  void* peer(int rank) const;                        // host-side copy of the peer table
  uint32_t* local_signal_pad() const { return peer_pads_[rank_]; }
  uint32_t* peer_signal_pad(int rank) const;
  // Device arrays [world_size] of peer pointers (for kernels).
  void* const* device_peer_ptrs() const { return d_peer_data_; }
  uint32_t* const* device_peer_signal_pads() const { return d_peer_pads_; }

 private:
  SymmetricBuffer() = default;
  friend struct SymmetricAllocator;
  int rank_ = 0, world_size_ = 1, device_ = 0;
  std::size_t bytes_ = 0, pad_bytes_ = 0;
  void* base_ = nullptr;                       // local allocation: [signal pad | data]
  std::vector<void*> peer_bases_;              // mapped peer allocations (nullptr for self)
  std::vector<bool> peer_ipc_;                 // opened with cudaIpcOpenMemHandle (close on free)
  std::vector<void*> peer_data_;
  std::vector<uint32_t*> peer_pads_;
  void** d_peer_data_ = nullptr;
  uint32_t** d_peer_pads_ = nullptr;
};

// Stream utilities (seed 000): write a 32-bit value from a stream (cuStreamWriteValue32, which orders the
// write after prior work on the stream), and fill 32-bit words (cuMemsetD32Async; capturable).
void stream_write_value32(cudaStream_t stream, uint32_t* addr, uint32_t value);
void memset32(cudaStream_t stream, uint32_t* addr, uint32_t value, std::size_t count);

// Signal-pad operations on a buffer (the barrier / put_signal / wait_signal of torch's SymmetricMemory handle, same
// slot layout): the signal from rank `src` to rank `dst` on `channel` is the uint32 at
// peer_signal_pad(dst)[channel * world_size + src]. put waits until that slot is 0 (dst consumed the previous signal)
// and sets it to 1 (release, after everything enqueued before it); wait waits until its slot from src is 1 (acquire)
// and resets it to 0; barrier is a put to every rank then a wait on every rank. Every slot returns to 0, so channels are
// reusable. `comm` must be the communicator the buffer was allocated over. A wait longer than timeout_ms (0: the
// communicator's timeout) is reported like tpcomm's own waits (check() / synchronize() throw kTimeout naming the rank).
// One small kernel on `stream`; no allocation, no host sync, capturable. Throws kInvalidArgument when a rank is
// outside the world or the channel's slots do not fit the buffer's signal pad.
void signal_pad_barrier(const Communicator& comm, const SymmetricBuffer& buf, int channel, cudaStream_t stream,
                        uint32_t timeout_ms = 0);
void signal_pad_put(const Communicator& comm, const SymmetricBuffer& buf, int dst_rank, int channel, cudaStream_t stream,
                    uint32_t timeout_ms = 0);
void signal_pad_wait(const Communicator& comm, const SymmetricBuffer& buf, int src_rank, int channel,
                     cudaStream_t stream, uint32_t timeout_ms = 0);

}  // namespace tpcomm
