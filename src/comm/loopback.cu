// Loopback-world helpers used by the kernels' launch paths (declared in comm/comm_impl.h).
#include <cuda_runtime.h>

#include <string>

#include "comm/comm_impl.h"
#include "common/check.h"

namespace tpcomm::detail {

namespace {
// Launched without the PDL attribute and never triggering its dependents early: a kernel after it on the stream is
// scheduled only once it, and therefore the cross-rank kernel before it, has completed.
__global__ void loopback_fence_kernel() {}
}  // namespace

int loopback_max_ctas(const CommImpl& c, int ctas_per_sm) {
  if (ctas_per_sm < 1)
    throw Error(ErrorCode::kInvalidArgument, "ctas_per_sm: must be >= 1, got " + std::to_string(ctas_per_sm));
  int sms = c.sm_count;
  if (sms <= 0) {
    TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c.device));
  }
  const long long resident = static_cast<long long>(ctas_per_sm) * sms;
  if (!c.loopback) return static_cast<int>(resident);
  const long long per_rank = resident / c.world;
  if (per_rank < 1)
    throw Error(ErrorCode::kUnsupported,
                "loopback world of " + std::to_string(c.world) + " ranks: a kernel with " + std::to_string(ctas_per_sm) +
                    " resident CTA(s) per SM on " + std::to_string(sms) +
                    " SMs cannot give every rank one co-resident CTA");
  return static_cast<int>(per_rank);
}

void loopback_preload_kernels() {
  cudaFuncAttributes attr{};
  TPCOMM_CUDA_CHECK(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(loopback_fence_kernel)));
}

void loopback_fence(const CommImpl& c, cudaStream_t stream) {
  if (!c.loopback) return;
  loopback_fence_kernel<<<1, 1, 0, stream>>>();
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::detail
