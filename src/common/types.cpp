#include "tpcomm/types.h"

#include <algorithm>
#include <cctype>

#include "tpcomm/error.h"

namespace tpcomm {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kCudaError: return "cuda_error";
    case ErrorCode::kNcclError: return "nccl_error";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kMismatch: return "mismatch";
    case ErrorCode::kInvalidState: return "invalid_state";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat8E4M3: return 1;
    case DType::kFloat8E5M2: return 1;
    case DType::kUInt8: return 1;
    case DType::kInt32: return 4;
  }
  throw Error(ErrorCode::kInvalidArgument, "dtype: unknown value " + std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::kFloat32: return "f32";
    case DType::kFloat16: return "f16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat8E4M3: return "e4m3";
    case DType::kFloat8E5M2: return "e5m2";
    case DType::kUInt8: return "u8";
    case DType::kInt32: return "i32";
  }
  return "unknown";
}

const char* reduce_op_name(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "unknown";
}

static std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

DType parse_dtype(std::string_view text, const char* arg_name) {
  const std::string t = lower(text);
  if (t == "f32" || t == "fp32" || t == "float32" || t == "float") return DType::kFloat32;
  if (t == "f16" || t == "fp16" || t == "float16" || t == "half") return DType::kFloat16;
  if (t == "bf16" || t == "bfloat16") return DType::kBFloat16;
  if (t == "e4m3" || t == "fp8_e4m3" || t == "float8_e4m3fn") return DType::kFloat8E4M3;
  if (t == "e5m2" || t == "fp8_e5m2" || t == "float8_e5m2") return DType::kFloat8E5M2;
  if (t == "u8" || t == "uint8") return DType::kUInt8;
  if (t == "i32" || t == "int32") return DType::kInt32;
  throw Error(ErrorCode::kInvalidArgument, std::string(arg_name) + ": unknown dtype '" + std::string(text) + "'");
}

ReduceOp parse_reduce_op(std::string_view text, const char* arg_name) {
  const std::string t = lower(text);
  if (t == "sum") return ReduceOp::kSum;
  if (t == "max") return ReduceOp::kMax;
  if (t == "min") return ReduceOp::kMin;
  throw Error(ErrorCode::kInvalidArgument, std::string(arg_name) + ": unknown reduce op '" + std::string(text) + "'");
}

}  // namespace tpcomm
