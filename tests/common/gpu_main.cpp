// main() of tpcomm_gpu_tests: without a CUDA device, report the skip and exit 77 (CTest: "Skipped").
#include <gtest/gtest.h>

#include <cstdio>

#include "common/test_util.h"

int main(int argc, char** argv) {
  if (tpcomm::test::cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return tpcomm::test::kSkipExitCode;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
