// Multi-process GPU test support: tpcomm_mp_tests runs one process per GPU (under tpcomm-launch, torchrun or
// mpirun); every rank runs the same tests in the same order, so collectives pair up across ranks.
// Tests must make the same collective calls on every rank whatever their assertions find (use EXPECT_*
// before collectives, ASSERT_* only where every rank would stop alike).
#pragma once

#include <memory>

#include "tpcomm/communicator.h"

namespace tpcomm::test {

// The communicator every test shares (created in main).
Communicator& mp_comm();
// A new communicator over the same ranks (fresh NCCL id made by rank 0 and shared through mp_comm()),
// for tests that break or destroy it.
std::unique_ptr<Communicator> fresh_comm(const CommOptions& options = {});

}  // namespace tpcomm::test
