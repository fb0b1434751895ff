// Argument checks of all_reduce() as a pure host function (CPU-tested in tests/collectives/all_reduce_select_test.cpp).
#pragma once

#include <cstddef>

#include "tpcomm/all_reduce.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

// Throws kInvalidArgument naming the argument (dtype, op, input, output, zero_copy) before anything is
// enqueued. Returns false when there is nothing to do (count == 0: null pointers are then accepted, as NCCL does).
bool check_all_reduce_args(const void* input, const void* output, std::size_t count, DType dtype, ReduceOp op,
                           const AllReduceOptions& options);

// The pointer-free part (dtype, op and the wire options: wire, fp8_block, gather_wire, and a kFp8 wire with an
// algorithm other than two_shot or auto); check_all_reduce_args calls it first. Throws kInvalidArgument naming
// the argument.
void check_all_reduce_options(DType dtype, ReduceOp op, const AllReduceOptions& options);

}  // namespace tpcomm::detail
