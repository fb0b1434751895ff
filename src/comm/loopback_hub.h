// The host exchange of a loopback world (Communicator::create_loopback: W ranks as W threads of one process on
// one GPU). host_all_gather and host_barrier of its communicators meet here instead of in NCCL. No CUDA, so the
// CPU tests drive it directly (tests/comm/loopback_hub_test.cpp).
//
// Protocol: one round at a time. Every rank deposits its bytes into the round being collected; the last rank to
// arrive closes the round (generation += 1) and wakes the others, who copy the closed round's data out. A rank
// cannot enter round g+1 before it has left round g, so round g+1 cannot close (it needs every rank) while anyone
// still reads round g: one closed buffer besides the one being collected is enough.
//
// Never hangs: a rank waits at most `timeout` from its own arrival. When that passes, the hub breaks with
// kTimeout naming the ranks that had not arrived; the ranks waiting then and every later call on any rank (the
// late rank included) throw that error, so no rank ever waits for one that gave up. Ranks that disagree on the
// operation or the byte count break it with kMismatch naming both ranks. abort() breaks it from outside (a rank
// whose setup failed), with kInvalidState.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "tpcomm/error.h"

namespace tpcomm::detail {

class LoopbackHub {
 public:
  explicit LoopbackHub(int world);  // throws kInvalidArgument("world_size: ...") unless world >= 1
  LoopbackHub(const LoopbackHub&) = delete;
  LoopbackHub& operator=(const LoopbackHub&) = delete;

  int world() const { return world_; }

  // Collective over the W ranks, each calling from its own thread with the same `bytes` (> 0):
  // recv[r * bytes, (r + 1) * bytes) = rank r's send. Errors: see the file comment; kInvalidArgument for a rank
  // outside [0, W), null buffers or bytes == 0; kInvalidState when one rank enters a round twice.
  void all_gather(int rank, const void* send, void* recv, std::size_t bytes, std::chrono::nanoseconds timeout);
  // Returns once every rank has called it (same errors).
  void barrier(int rank, std::chrono::nanoseconds timeout);

  // Breaks the hub: ranks waiting now and every later call throw kInvalidState carrying `why`.
  void abort(const std::string& why);
  bool broken() const;
  // Rounds closed so far (the generation counter).
  uint64_t generation() const;

 private:
  void exchange(const char* op, int rank, const void* send, void* recv, std::size_t bytes,
                std::chrono::nanoseconds timeout);
  [[noreturn]] void break_and_throw(ErrorCode code, const std::string& why);  // mu_ held
  [[noreturn]] void throw_broken() const;                                      // mu_ held

  const int world_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  // The round being collected.
  const char* op_ = nullptr;       // "host_all_gather" / "host_barrier" of the first rank to arrive
  int first_rank_ = -1;            // that rank
  std::size_t bytes_ = 0;
  int arrived_ = 0;
  std::vector<char> present_;      // [W]
  std::vector<uint8_t> collecting_;
  // The last closed round.
  std::vector<uint8_t> closed_;
  // Broken state (first failure wins).
  bool broken_ = false;
  ErrorCode code_ = ErrorCode::kInternal;
  std::string why_;
};

}  // namespace tpcomm::detail
