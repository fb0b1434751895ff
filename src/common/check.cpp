#include "common/check.h"

#include "common/driver.h"

#include <string>

namespace tpcomm::detail {

static std::string where(const char* expr, const char* file, int line) {
  return std::string(expr) + " at " + file + ":" + std::to_string(line);
}

void throw_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  throw Error(ErrorCode::kCudaError, std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) +
                                         ") in " + where(expr, file, line));
}

void throw_cu(CUresult err, const char* expr, const char* file, int line) {
  const char* name = nullptr;
  const char* text = nullptr;
  try {
    driver().get_error_name(err, &name);
    driver().get_error_string(err, &text);
  } catch (const Error&) {
  }
  throw Error(ErrorCode::kCudaError, std::string(name ? name : "CUDA_ERROR") + " (" + (text ? text : "?") +
                                         ") in " + where(expr, file, line));
}

void throw_nccl(ncclResult_t err, const char* expr, const char* file, int line) {
  throw Error(ErrorCode::kNcclError, std::string(ncclGetErrorString(err)) + " in " + where(expr, file, line));
}

}  // namespace tpcomm::detail
