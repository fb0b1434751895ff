// Element types and reduction operators shared by every op.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tpcomm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat8E4M3 = 3, kFloat8E5M2 = 4, kUInt8 = 5, kInt32 = 6 };

enum class ReduceOp : int { kSum = 0, kMax = 1, kMin = 2 };

// Size of one element in bytes. Throws kInvalidArgument on an unknown value.
std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype) noexcept;          // "f32", "f16", "bf16", ...
const char* reduce_op_name(ReduceOp op) noexcept;      // "sum", "max", "min"
// Parses "f32|fp32|float32", "f16|fp16|half", "bf16|bfloat16", ... ; throws kInvalidArgument naming `arg_name`.
DType parse_dtype(std::string_view text, const char* arg_name = "dtype");
ReduceOp parse_reduce_op(std::string_view text, const char* arg_name = "op");

}  // namespace tpcomm
