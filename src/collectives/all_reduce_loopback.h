// kAuto on a loopback world (Communicator::create_loopback), which has no NCCL: a pure rule, CPU-tested in
// tests/collectives/all_reduce_loopback_select_test.cpp.
#pragma once

#include <cstddef>

#include "tpcomm/all_reduce.h"

namespace tpcomm::detail {

// The table's choice (select_all_reduce with the fast path on) when it is a fast algorithm. Where the table says
// NCCL, the fast algorithm made for the largest messages whose workspace holds `bytes`: two_shot, else one_shot,
// else one_shot_ll (the copy-engine one-shot only where the table itself picks it). Throws kUnsupported naming
// `count` and the largest workspace (and its CommOptions field) when none holds the message.
AllReduceAlgo select_all_reduce_loopback(const AllReduceTable& table, std::size_t bytes, std::size_t ll_cap,
                                         std::size_t one_cap, std::size_t two_cap, std::size_t ce_cap = 0);

}  // namespace tpcomm::detail
