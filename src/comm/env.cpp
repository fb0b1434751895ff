#include "comm/env.h"

#include <cstdlib>
#include <cstring>

#include "tpcomm/error.h"

namespace tpcomm::detail {

EnvLookup process_env() {
  return [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

static int parse_int(const EnvLookup& env, const char* name, int fallback, bool required) {
  auto v = env(name);
  if (!v) {
    if (required) throw Error(ErrorCode::kInvalidArgument, std::string(name) + ": not set");
    return fallback;
  }
  char* end = nullptr;
  const long x = std::strtol(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || x < 0 || x > (1 << 20))
    throw Error(ErrorCode::kInvalidArgument, std::string(name) + ": '" + *v + "' is not a non-negative integer");
  return static_cast<int>(x);
}

LaunchEnv parse_launch_env(const EnvLookup& env) {
  LaunchEnv out;
  if (env("RANK")) {
    out.rank = parse_int(env, "RANK", 0, true);
    out.world_size = parse_int(env, "WORLD_SIZE", 0, true);
    out.local_rank = parse_int(env, "LOCAL_RANK", out.rank, false);
    out.local_world_size = parse_int(env, "LOCAL_WORLD_SIZE", out.world_size, false);
    out.source = env("TPCOMM_NCCL_ID") ? "tpcomm-launch" : "torchrun";
  } else if (env("OMPI_COMM_WORLD_RANK")) {
    out.rank = parse_int(env, "OMPI_COMM_WORLD_RANK", 0, true);
    out.world_size = parse_int(env, "OMPI_COMM_WORLD_SIZE", 0, true);
    out.local_rank = parse_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", out.rank, false);
    out.local_world_size = parse_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", out.world_size, false);
    out.source = "mpirun";
  } else if (env("PMI_RANK")) {
    out.rank = parse_int(env, "PMI_RANK", 0, true);
    out.world_size = parse_int(env, "PMI_SIZE", 0, true);
    out.local_rank = parse_int(env, "MPI_LOCALRANKID", out.rank, false);
    out.local_world_size = parse_int(env, "MPI_LOCALNRANKS", out.world_size, false);
    out.source = "pmi";
  } else {
    throw Error(ErrorCode::kInvalidArgument,
                "RANK: not set (start under torchrun, mpirun or tpcomm-launch, or create the communicator explicitly)");
  }
  if (out.world_size < 1) throw Error(ErrorCode::kInvalidArgument, "WORLD_SIZE: must be >= 1");
  if (out.rank >= out.world_size)
    throw Error(ErrorCode::kInvalidArgument, "RANK: " + std::to_string(out.rank) + " is not below WORLD_SIZE " +
                                                 std::to_string(out.world_size));
  if (out.local_rank >= out.local_world_size)
    throw Error(ErrorCode::kInvalidArgument, "LOCAL_RANK: " + std::to_string(out.local_rank) +
                                                 " is not below LOCAL_WORLD_SIZE " + std::to_string(out.local_world_size));
  if (auto id = env("TPCOMM_NCCL_ID")) out.nccl_id_hex = *id;
  if (out.nccl_id_hex.empty()) {
    if (auto c = env("NCCL_COMM_ID")) {
      out.nccl_comm_id = *c;
    } else {
      auto addr = env("MASTER_ADDR");
      auto port = env("MASTER_PORT");
      if (addr && port) {
        // NCCL's own bootstrap listens on NCCL_COMM_ID; MASTER_PORT is taken by torchrun's store, so use +1.
        const int p = parse_int(env, "MASTER_PORT", 0, true);
        out.nccl_comm_id = *addr + ":" + std::to_string(p + 1);
      } else if (out.local_world_size == out.world_size) {
        out.nccl_comm_id = "127.0.0.1:29511";  // single node without MASTER_ADDR (plain mpirun)
      } else {
        throw Error(ErrorCode::kInvalidArgument,
                    "MASTER_ADDR: not set; multi-node runs need MASTER_ADDR/MASTER_PORT or NCCL_COMM_ID");
      }
    }
  }
  return out;
}

std::string encode_unique_id(const ncclUniqueId& id) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof(id.internal));
  for (char c : id.internal) {
    const auto b = static_cast<unsigned char>(c);
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

ncclUniqueId decode_unique_id(const std::string& text) {
  ncclUniqueId id;
  if (text.size() != 2 * sizeof(id.internal))
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_NCCL_ID: expected " + std::to_string(2 * sizeof(id.internal)) +
                                                 " hex digits, got " + std::to_string(text.size()));
  auto nib = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw Error(ErrorCode::kInvalidArgument, std::string("TPCOMM_NCCL_ID: bad hex digit '") + c + "'");
  };
  for (std::size_t i = 0; i < sizeof(id.internal); ++i)
    id.internal[i] = static_cast<char>((nib(text[2 * i]) << 4) | nib(text[2 * i + 1]));
  return id;
}

}  // namespace tpcomm::detail
