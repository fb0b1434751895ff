#include "tpcomm/launch.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "comm/env.h"
#include "common/check.h"
#include "tpcomm/error.h"

extern char** environ;

namespace tpcomm {

bool launched_by_env() {
  return std::getenv("RANK") || std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("PMI_RANK");
}

int launch_local(const std::vector<std::string>& argv, const LaunchOptions& options) {
  TPCOMM_ARG_CHECK(!argv.empty(), "argv", "empty command");
  int nproc = options.nproc;
  if (nproc <= 0) {
    if (cudaGetDeviceCount(&nproc) != cudaSuccess) {
      cudaGetLastError();
      nproc = 0;
    }
    if (nproc <= 0) nproc = 1;  // the child reports the missing device itself
  }
  ncclUniqueId id;
  TPCOMM_NCCL_CHECK(ncclGetUniqueId(&id));
  const std::string id_hex = detail::encode_unique_id(id);

  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      const std::string kv(*e);
      const auto key = kv.substr(0, kv.find('='));
      if (key == "RANK" || key == "WORLD_SIZE" || key == "LOCAL_RANK" || key == "LOCAL_WORLD_SIZE" ||
          key == "TPCOMM_NCCL_ID")
        continue;
      env_strings.push_back(kv);
    }
    env_strings.push_back("RANK=" + std::to_string(r));
    env_strings.push_back("WORLD_SIZE=" + std::to_string(nproc));
    env_strings.push_back("LOCAL_RANK=" + std::to_string(r));
    env_strings.push_back("LOCAL_WORLD_SIZE=" + std::to_string(nproc));
    env_strings.push_back("TPCOMM_NCCL_ID=" + id_hex);
    std::vector<char*> envp, args;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_copy = argv;
    for (auto& s : argv_copy) args.push_back(s.data());
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), envp.data());
    if (rc != 0) {
      for (pid_t p : pids) kill(p, SIGKILL);
      throw Error(ErrorCode::kInvalidArgument, "argv[0]: cannot start '" + argv[0] + "' (errno " + std::to_string(rc) + ")");
    }
    pids.push_back(pid);
  }

  const auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point term_sent{};
  std::vector<int> codes(nproc, -1);
  int remaining = nproc;
  int first_failure = 0;
  bool terminated = false, killed = false, timed_out = false;
  while (remaining > 0) {
    int status = 0;
    const pid_t p = waitpid(-1, &status, WNOHANG);
    if (p > 0) {
      for (int r = 0; r < nproc; ++r) {
        if (pids[r] != p) continue;
        codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        --remaining;
        if (codes[r] != 0 && codes[r] != 77 && !first_failure) first_failure = codes[r];
      }
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!timed_out && options.timeout_s > 0 && std::chrono::duration<double>(now - start).count() > options.timeout_s)
      timed_out = true;
    if ((first_failure || timed_out) && !terminated) {
      // A failed rank would leave its peers waiting in a collective: stop them (TERM, then KILL after 5 s).
      // Only children not reaped yet are signalled, so no recycled pid is ever hit.
      for (int r = 0; r < nproc; ++r)
        if (codes[r] < 0) kill(pids[r], SIGTERM);
      terminated = true;
      term_sent = now;
    }
    if (terminated && !killed && now - term_sent > std::chrono::seconds(5)) {
      for (int r = 0; r < nproc; ++r)
        if (codes[r] < 0) kill(pids[r], SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (timed_out) return 124;
  if (first_failure) return first_failure;
  bool all_skipped = true;
  for (int c : codes) all_skipped = all_skipped && c == 77;
  return all_skipped ? 77 : 0;
}

}  // namespace tpcomm
