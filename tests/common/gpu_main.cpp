// main() of tpcomm_gpu_tests: without a CUDA device, report the skip and exit 77 (CTest: "Skipped").
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "common/test_util.h"

int main(int argc, char** argv) {
  // Loopback worlds run several ranks' kernels in one CUDA context. With lazy module loading (CUDA's default), the
  // first launch of a kernel (a cuBLASLt GEMM, say) loads its module, which can wait for a spinning kernel of another
  // rank that in turn waits for this one: a deadlock until the timeout, seen in the async-TP loopback tests on
  // nvidia-h200. Eager loading (before the first CUDA call) removes it.
  setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  if (tpcomm::test::cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return tpcomm::test::kSkipExitCode;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
