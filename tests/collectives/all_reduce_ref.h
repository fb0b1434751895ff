// Host references for the all-reduce tests: element conversions (round to nearest even) and a float64
// all-reduce over every rank's input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tpcomm/types.h"

namespace tpcomm::test {

// Value of element i of a buffer of `dtype` as double.
double load_element(const void* buf, std::size_t i, DType dtype);
// Stores x rounded to `dtype` (round to nearest even).
void store_element(void* buf, std::size_t i, DType dtype, double x);

// Deterministic input of one rank: `count` values uniform in [-1, 1), rounded to dtype, from (seed, rank).
std::vector<uint8_t> make_input(std::size_t count, DType dtype, uint64_t seed, int rank);

// float64 reference: out[i] = op over ranks of inputs[r][i] (inputs already rounded to dtype).
std::vector<double> reference_all_reduce(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype,
                                         ReduceOp op);

// Allowed |result - reference| for one element: one rounding to dtype plus fp32 accumulation error.
double all_reduce_tolerance(double ref, DType dtype, int world);

// Sum over ranks of |inputs[r][i]|: bounds every partial sum of any reduction order.
std::vector<double> reference_abs_sum(const std::vector<std::vector<uint8_t>>& inputs, std::size_t count, DType dtype);

// What a sum that rounds to dtype after every addition (NCCL's ring and tree for 16-bit types) may add to
// all_reduce_tolerance: W - 2 more roundings of partial sums, each at most half an ulp of a value <= abs_sum
// (the last rounding is the one all_reduce_tolerance already allows). 0 for W <= 2. tpcomm's kernels accumulate
// in fp32 and round once, so they are held to all_reduce_tolerance alone; first seen at W = 4, where NCCL's bf16
// results differed from the float64 reference by up to 0.012 (session 8).
double stepwise_rounding_slack(double abs_sum, DType dtype, int world);

}  // namespace tpcomm::test
