#include "comm/loopback_hub.h"

#include <cstring>
#include <sstream>

namespace tpcomm::detail {

LoopbackHub::LoopbackHub(int world) : world_(world) {
  if (world < 1) throw Error(ErrorCode::kInvalidArgument, "world_size: must be >= 1, got " + std::to_string(world));
  present_.assign(world, 0);
}

bool LoopbackHub::broken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_;
}

uint64_t LoopbackHub::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

void LoopbackHub::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) return;
  broken_ = true;
  code_ = ErrorCode::kInvalidState;
  why_ = "loopback host exchange aborted: " + why;
  cv_.notify_all();
}

void LoopbackHub::break_and_throw(ErrorCode code, const std::string& why) {
  if (!broken_) {
    broken_ = true;
    code_ = code;
    why_ = why;
    cv_.notify_all();
  }
  throw_broken();
}

void LoopbackHub::throw_broken() const { throw Error(code_, why_); }

void LoopbackHub::all_gather(int rank, const void* send, void* recv, std::size_t bytes,
                             std::chrono::nanoseconds timeout) {
  if (send == nullptr) throw Error(ErrorCode::kInvalidArgument, "send: null pointer");
  if (recv == nullptr) throw Error(ErrorCode::kInvalidArgument, "recv: null pointer");
  if (bytes == 0) throw Error(ErrorCode::kInvalidArgument, "bytes: must be positive");
  exchange("host_all_gather", rank, send, recv, bytes, timeout);
}

void LoopbackHub::barrier(int rank, std::chrono::nanoseconds timeout) {
  exchange("host_barrier", rank, nullptr, nullptr, 0, timeout);
}

void LoopbackHub::exchange(const char* op, int rank, const void* send, void* recv, std::size_t bytes,
                           std::chrono::nanoseconds timeout) {
  if (rank < 0 || rank >= world_)
    throw Error(ErrorCode::kInvalidArgument,
                "rank: " + std::to_string(rank) + " is outside [0, " + std::to_string(world_) + ")");
  // The deadline is taken before the lock: time spent waiting for the mutex counts against the timeout.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  if (broken_) throw_broken();
  if (present_[rank]) {
    break_and_throw(ErrorCode::kInvalidState,
                    std::string(op) + ": rank " + std::to_string(rank) +
                        " entered one host exchange twice (is one rank's communicator used from two threads?)");
  }
  if (arrived_ == 0) {
    op_ = op;
    first_rank_ = rank;
    bytes_ = bytes;
    collecting_.assign(bytes * static_cast<std::size_t>(world_), 0);
  } else if (std::strcmp(op_, op) != 0) {
    break_and_throw(ErrorCode::kMismatch, std::string(op) + ": rank " + std::to_string(rank) + " called " + op +
                                              " while rank " + std::to_string(first_rank_) + " called " + op_);
  } else if (bytes_ != bytes) {
    break_and_throw(ErrorCode::kMismatch, std::string(op) + ": rank " + std::to_string(rank) + " passed " +
                                              std::to_string(bytes) + " bytes, rank " + std::to_string(first_rank_) +
                                              " " + std::to_string(bytes_));
  }
  if (bytes) std::memcpy(collecting_.data() + static_cast<std::size_t>(rank) * bytes, send, bytes);
  present_[rank] = 1;
  const uint64_t mine = generation_;
  if (++arrived_ == world_) {
    closed_.swap(collecting_);
    arrived_ = 0;
    present_.assign(world_, 0);
    op_ = nullptr;
    first_rank_ = -1;
    ++generation_;
    cv_.notify_all();
  } else {
    while (generation_ == mine && !broken_) {
      if (cv_.wait_until(lock, deadline) != std::cv_status::timeout) continue;
      if (generation_ != mine || broken_) break;
      std::vector<int> missing;
      for (int p = 0; p < world_; ++p)
        if (!present_[p]) missing.push_back(p);
      std::ostringstream s;
      s << op << ": rank " << missing[0] << " did not arrive within " << std::chrono::duration<double>(timeout).count()
        << " s (loopback world, host exchange " << mine << ", seen by rank " << rank;
      for (std::size_t i = 1; i < missing.size(); ++i) s << (i == 1 ? "; also missing: rank " : ", ") << missing[i];
      s << ")";
      const std::string msg = s.str();
      break_and_throw(ErrorCode::kTimeout, msg);
    }
    // The round closed (possibly just before the hub broke for a later reason): its data is valid.
    if (generation_ == mine) throw_broken();
  }
  if (bytes) std::memcpy(recv, closed_.data(), bytes * static_cast<std::size_t>(world_));
}

}  // namespace tpcomm::detail
