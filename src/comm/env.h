// Launch-environment parsing (torchrun, mpirun, tpcomm-launch). Pure functions over a getenv-like lookup so
// the CPU tests can feed fake environments.
#pragma once

#include <nccl.h>

#include <functional>
#include <optional>
#include <string>

namespace tpcomm::detail {

using EnvLookup = std::function<std::optional<std::string>(const char*)>;
EnvLookup process_env();

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string nccl_id_hex;   // TPCOMM_NCCL_ID, when a tpcomm launcher started us
  std::string nccl_comm_id;  // "host:port" for NCCL_COMM_ID (from MASTER_ADDR/MASTER_PORT), otherwise empty
  std::string source;        // "tpcomm-launch", "torchrun", "mpirun", "pmi"
};

// Throws kInvalidArgument naming the variable that is missing or malformed.
LaunchEnv parse_launch_env(const EnvLookup& env);

std::string encode_unique_id(const ncclUniqueId& id);
ncclUniqueId decode_unique_id(const std::string& hex);  // throws kInvalidArgument("TPCOMM_NCCL_ID: ...")

}  // namespace tpcomm::detail
