#include "comm/topology.h"

#include <dlfcn.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <set>
#include <string>

namespace tpcomm::detail {

Topology decide_topology(const TopologyInput& in) {
  Topology t;
  t.world_size = static_cast<int>(in.ranks.size());
  std::set<uint64_t> hosts;
  for (const auto& r : in.ranks) hosts.insert(r.host_hash);
  t.nodes = static_cast<int>(hosts.size());
  t.nvml_available = in.nvml_available;

  bool all_peer = true, all_nvlink = in.nvml_available;
  std::string peer_fail;
  for (int i = 0; i < t.world_size; ++i) {
    for (int j = 0; j < t.world_size; ++j) {
      if (i == j) continue;
      const Tri p = i < static_cast<int>(in.peer.size()) && j < static_cast<int>(in.peer[i].size()) ? in.peer[i][j] : Tri::kUnknown;
      if (p == Tri::kNo) {
        all_peer = false;
        if (peer_fail.empty())
          peer_fail = "peer access is not supported between rank " + std::to_string(i) + " (" + in.ranks[i].bus_id +
                      ") and rank " + std::to_string(j) + " (" + in.ranks[j].bus_id + ")";
      }
      const Tri n = i < static_cast<int>(in.nvlink.size()) && j < static_cast<int>(in.nvlink[i].size()) ? in.nvlink[i][j] : Tri::kUnknown;
      if (n != Tri::kYes) all_nvlink = false;
    }
  }
  t.peer_access = all_peer;
  t.nvlink = all_nvlink;

  if (!in.forced.empty()) {
    t.reason = in.forced;
  } else if (t.nodes > 1) {
    t.reason = "ranks span " + std::to_string(t.nodes) + " nodes; NCCL is the path across nodes";
  } else if (t.world_size > kMaxRanks) {
    t.reason = "world size " + std::to_string(t.world_size) + " is above the fast path's maximum of " +
               std::to_string(kMaxRanks);
  } else if (!all_peer) {
    t.reason = peer_fail;
  }
  t.fast_path = t.reason.empty();
  return t;
}

namespace {

// The few NVML symbols used, declared here from the public NVML ABI (nvml.h is not on every build machine).
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
constexpr int kNvmlP2PCapsIndexNvlink = 2;  // NVML_P2P_CAPS_INDEX_NVLINK
constexpr int kNvmlP2PStatusOk = 0;         // NVML_P2P_STATUS_OK

struct Nvml {
  bool ok = false;
  nvmlReturn_t (*init)(unsigned) = nullptr;
  nvmlReturn_t (*by_bus)(const char*, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*p2p)(nvmlDevice_t, nvmlDevice_t, int, int*) = nullptr;
};

const Nvml& nvml() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    n.init = reinterpret_cast<nvmlReturn_t (*)(unsigned)>(dlsym(h, "nvmlInitWithFlags"));
    n.by_bus = reinterpret_cast<nvmlReturn_t (*)(const char*, nvmlDevice_t*)>(dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2"));
    n.p2p = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, nvmlDevice_t, int, int*)>(dlsym(h, "nvmlDeviceGetP2PStatus"));
    n.ok = n.init && n.by_bus && n.p2p && n.init(0) == 0;
  });
  return n;
}

}  // namespace

Tri nvml_nvlink_between(const char* bus_a, const char* bus_b, bool* nvml_available) {
  const Nvml& n = nvml();
  *nvml_available = n.ok;
  if (!n.ok) return Tri::kUnknown;
  nvmlDevice_t a = nullptr, b = nullptr;
  if (n.by_bus(bus_a, &a) != 0 || n.by_bus(bus_b, &b) != 0) return Tri::kUnknown;
  int status = -1;
  if (n.p2p(a, b, kNvmlP2PCapsIndexNvlink, &status) != 0) return Tri::kUnknown;
  return status == kNvmlP2PStatusOk ? Tri::kYes : Tri::kNo;
}

uint64_t host_hash() {
  // Hostname plus boot id: two containers with the same hostname on different machines still differ.
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  std::string key(name);
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (boot >> id) key += id;
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace tpcomm::detail
