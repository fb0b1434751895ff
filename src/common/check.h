// Internal error-checking helpers: every CUDA/driver/NCCL call goes through these; they throw tpcomm::Error
// with the call text, file and line. Never used in public headers.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "tpcomm/error.h"

namespace tpcomm::detail {

[[noreturn]] void throw_cuda(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void throw_cu(CUresult err, const char* expr, const char* file, int line);
[[noreturn]] void throw_nccl(ncclResult_t err, const char* expr, const char* file, int line);

}  // namespace tpcomm::detail

#define TPCOMM_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    cudaError_t tpcomm_err_ = (expr);                                                    \
    if (tpcomm_err_ != cudaSuccess) ::tpcomm::detail::throw_cuda(tpcomm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define TPCOMM_CU_CHECK(expr)                                                            \
  do {                                                                                   \
    CUresult tpcomm_err_ = (expr);                                                       \
    if (tpcomm_err_ != CUDA_SUCCESS) ::tpcomm::detail::throw_cu(tpcomm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define TPCOMM_NCCL_CHECK(expr)                                                          \
  do {                                                                                   \
    ncclResult_t tpcomm_err_ = (expr);                                                   \
    if (tpcomm_err_ != ncclSuccess) ::tpcomm::detail::throw_nccl(tpcomm_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// Argument validation: throws kInvalidArgument with a message that starts with the argument's name.
#define TPCOMM_ARG_CHECK(cond, argname, msg)                                             \
  do {                                                                                   \
    if (!(cond)) throw ::tpcomm::Error(::tpcomm::ErrorCode::kInvalidArgument, std::string(argname) + ": " + (msg)); \
  } while (0)
