// CPU tests of the fast-path decision on faked topologies, and of launch-environment parsing.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "comm/env.h"
#include "comm/topology.h"
#include "tpcomm/error.h"

using namespace tpcomm;
using namespace tpcomm::detail;

namespace {

TopologyInput node(int world, Tri peer = Tri::kYes, Tri nvlink = Tri::kYes) {
  TopologyInput in;
  for (int r = 0; r < world; ++r) {
    RankInfo i{};
    i.host_hash = 42;
    i.pid = 1000 + r;
    i.cuda_device = r;
    std::snprintf(i.bus_id, sizeof(i.bus_id), "0000:%02x:00.0", 0x10 + r);
    in.ranks.push_back(i);
  }
  in.peer.assign(world, std::vector<Tri>(world, peer));
  in.nvlink.assign(world, std::vector<Tri>(world, nvlink));
  in.nvml_available = true;
  return in;
}

}  // namespace

TEST(Topology, FullyConnectedNodeUsesTheFastPath) {
  for (int w : {1, 2, 3, 4, 5, 6, 7, 8}) {
    const Topology t = decide_topology(node(w));
    EXPECT_TRUE(t.fast_path) << w << ": " << t.reason;
    EXPECT_TRUE(t.nvlink);
    EXPECT_EQ(t.nodes, 1);
  }
}

TEST(Topology, MissingPeerAccessFallsBackAndSaysWhich) {  // the L4 case of seed 001
  TopologyInput in = node(4);
  in.peer[2][3] = Tri::kNo;
  const Topology t = decide_topology(in);
  EXPECT_FALSE(t.fast_path);
  EXPECT_FALSE(t.peer_access);
  EXPECT_NE(t.reason.find("peer access is not supported between rank 2"), std::string::npos) << t.reason;
}

TEST(Topology, PcieOnlyPeersStillQualifyButAreNotNvlink) {
  const Topology t = decide_topology(node(2, Tri::kYes, Tri::kNo));
  EXPECT_TRUE(t.fast_path);
  EXPECT_FALSE(t.nvlink);
}

TEST(Topology, UnknownPeerAccessIsLeftToTheProbe) {  // CUDA_VISIBLE_DEVICES hides the peer's device
  const Topology t = decide_topology(node(2, Tri::kUnknown, Tri::kUnknown));
  EXPECT_TRUE(t.fast_path);
}

TEST(Topology, SeveralNodesUseNccl) {
  TopologyInput in = node(8);
  for (int r = 4; r < 8; ++r) in.ranks[r].host_hash = 43;
  const Topology t = decide_topology(in);
  EXPECT_FALSE(t.fast_path);
  EXPECT_EQ(t.nodes, 2);
  EXPECT_NE(t.reason.find("2 nodes"), std::string::npos);
}

TEST(Topology, MoreThanEightRanksUseNccl) {
  const Topology t = decide_topology(node(9));
  EXPECT_FALSE(t.fast_path);
  EXPECT_NE(t.reason.find("world size 9"), std::string::npos);
}

TEST(Topology, ForcedModeWins) {
  TopologyInput in = node(2);
  in.forced = "TPCOMM_FORCE_NCCL is set";
  const Topology t = decide_topology(in);
  EXPECT_FALSE(t.fast_path);
  EXPECT_EQ(t.reason, "TPCOMM_FORCE_NCCL is set");
}

namespace {
EnvLookup fake(std::map<std::string, std::string> m) {
  return [m](const char* k) -> std::optional<std::string> {
    auto it = m.find(k);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}
}  // namespace

TEST(LaunchEnv, Torchrun) {
  const LaunchEnv e = parse_launch_env(fake({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "8"},
                                             {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}}));
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 3);
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.nccl_comm_id, "10.0.0.1:29501");
}

TEST(LaunchEnv, Mpirun) {
  const LaunchEnv e = parse_launch_env(fake({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                             {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.source, "mpirun");
  EXPECT_EQ(e.nccl_comm_id, "127.0.0.1:29511");  // single node without MASTER_ADDR
}

TEST(LaunchEnv, TpcommLaunchCarriesTheNcclId) {
  ncclUniqueId id;
  for (std::size_t i = 0; i < sizeof(id.internal); ++i) id.internal[i] = static_cast<char>(i * 37 + 1);
  const std::string hex = encode_unique_id(id);
  const LaunchEnv e = parse_launch_env(fake({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TPCOMM_NCCL_ID", hex}}));
  EXPECT_EQ(e.source, "tpcomm-launch");
  const ncclUniqueId back = decode_unique_id(e.nccl_id_hex);
  EXPECT_EQ(std::memcmp(back.internal, id.internal, sizeof(id.internal)), 0);
}

TEST(LaunchEnv, BadValuesNameTheVariable) {
  auto expect_named = [](std::map<std::string, std::string> m, const char* name) {
    try {
      parse_launch_env(fake(m));
      ADD_FAILURE() << "no error, expected one naming " << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  expect_named({}, "RANK");
  expect_named({{"RANK", "0"}}, "WORLD_SIZE");
  expect_named({{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK");
  expect_named({{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "RANK");
  expect_named({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}}, "MASTER_ADDR");
  EXPECT_THROW(decode_unique_id("abc"), Error);
  EXPECT_THROW(decode_unique_id(std::string(256, 'g')), Error);
}
