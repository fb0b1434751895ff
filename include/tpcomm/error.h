// tpcomm errors: the library throws exactly one exception type, tpcomm::Error, carrying a code and a
// message that names the offending argument or rank. Library code never exits and never prints to stdout.
#pragma once

#include <stdexcept>
#include <string>

namespace tpcomm {

enum class ErrorCode : int {
  kInvalidArgument = 1,  // a caller-supplied value is wrong (dtype, shape, alignment, null pointer, ...)
  kUnsupported = 2,      // valid request, but this build/topology cannot run it (and the caller pinned it)
  kCudaError = 3,        // a CUDA runtime/driver call failed
  kNcclError = 4,        // an NCCL call failed
  kTimeout = 5,          // a device-side wait timed out; the message names the rank that did not arrive
  kMismatch = 6,         // ranks disagree (e.g. different sizes for one collective)
  kInvalidState = 7,     // use after destroy, destroy with ops in flight, broken communicator
  kInternal = 8,
};

const char* error_code_name(ErrorCode code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(std::string(error_code_name(code)) + ": " + message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace tpcomm
