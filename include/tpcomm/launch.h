// Starting one process per local GPU without torchrun/mpirun (used by tpcomm-bench, tpcomm-launch and the
// multi-process tests). The parent creates the ncclUniqueId and hands it to the children in
// TPCOMM_NCCL_ID (hex), together with RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE, so bootstrap goes
// through NCCL alone.
#pragma once

#include <string>
#include <vector>

namespace tpcomm {

struct LaunchOptions {
  int nproc = 0;            // 0: one per visible CUDA device
  double timeout_s = 0;     // 0: no limit; otherwise every child is killed after this many seconds
};

// Runs `argv` nproc times and waits. If one child fails, the others get SIGTERM (then SIGKILL) so that a
// failing rank never leaves its peers spinning. Returns 0 when all succeed, 77 when every child returned
// 77 (the "skipped" code), 124 on timeout, else the first non-zero exit code.
int launch_local(const std::vector<std::string>& argv, const LaunchOptions& options);

// True when this process was started by a launcher (ours, torchrun or mpirun): RANK, OMPI_COMM_WORLD_RANK
// or PMI_RANK is set.
bool launched_by_env();

}  // namespace tpcomm
