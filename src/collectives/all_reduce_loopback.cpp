#include "collectives/all_reduce_loopback.h"

#include <string>

#include "tpcomm/error.h"

namespace tpcomm::detail {

AllReduceAlgo select_all_reduce_loopback(const AllReduceTable& table, std::size_t bytes, std::size_t ll_cap,
                                         std::size_t one_cap, std::size_t two_cap, std::size_t ce_cap) {
  const AllReduceAlgo a = select_all_reduce(table, bytes, /*fast_path=*/true, ll_cap, one_cap, two_cap, ce_cap);
  if (a != AllReduceAlgo::kNccl) return a;
  if (bytes <= two_cap) return AllReduceAlgo::kTwoShot;
  if (bytes <= one_cap) return AllReduceAlgo::kOneShot;
  if (bytes <= ll_cap) return AllReduceAlgo::kOneShotLL;
  std::size_t limit = two_cap;
  const char* option = "CommOptions::two_shot_max_bytes";
  if (one_cap > limit) {
    limit = one_cap;
    option = "CommOptions::one_shot_max_bytes";
  }
  if (ll_cap > limit) {
    limit = ll_cap;
    option = "CommOptions::lamport_max_bytes";
  }
  throw Error(ErrorCode::kUnsupported, "count: a message of " + std::to_string(bytes) +
                                           " bytes exceeds the largest all-reduce workspace of this loopback world (" +
                                           std::to_string(limit) + " bytes, " + option +
                                           "), and a loopback world has no NCCL to run it; raise that option");
}

}  // namespace tpcomm::detail
