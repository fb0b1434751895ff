// Topology discovery and the fast-path decision. decide_topology() is pure so CPU tests can feed it faked
// nodes; the probes that fill its input run in communicator.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tpcomm/communicator.h"

namespace tpcomm::detail {

constexpr int kMaxRanks = 8;  // world sizes 2..8 on the fast path; larger worlds use NCCL

// Exchanged between ranks at creation (fixed size, trivially copyable).
struct RankInfo {
  uint64_t host_hash;
  int32_t pid;
  int32_t cuda_device;
  int32_t force_nccl;  // this rank was told to avoid the fast path (env/option)
  char bus_id[32];     // PCI bus id, "0000:3b:00.0"
};

enum class Tri : int8_t { kUnknown = -1, kNo = 0, kYes = 1 };

struct TopologyInput {
  std::vector<RankInfo> ranks;
  std::string forced;                     // non-empty: fast path disabled on purpose (env/option), the reason
  std::vector<std::vector<Tri>> peer;     // [i][j]: can rank i's device access rank j's (as seen by any rank)
  std::vector<std::vector<Tri>> nvlink;   // [i][j] from NVML
  bool nvml_available = false;
};

// Decides whether tpcomm's peer-memory kernels may run. fast_path is provisional until the probe
// (mapping + write/read) has also succeeded on every rank.
Topology decide_topology(const TopologyInput& in);

// NVML through dlopen (no header or link dependency). Returns kUnknown when NVML is missing.
Tri nvml_nvlink_between(const char* bus_a, const char* bus_b, bool* nvml_available);

uint64_t host_hash();

}  // namespace tpcomm::detail
