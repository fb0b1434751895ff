#include "tpcomm/communicator.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <thread>

#include "comm/comm_impl.h"
#include "comm/env.h"
#include "comm/loopback_hub.h"
#include "common/check.h"
#include "symm/symm_impl.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"
#include "tpcomm/log.h"

namespace tpcomm {
namespace detail {

ncclDataType_t to_nccl(DType dtype, const char* arg) {
  switch (dtype) {
    case DType::kFloat32: return ncclFloat32;
    case DType::kFloat16: return ncclFloat16;
    case DType::kBFloat16: return ncclBfloat16;
    default: break;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string(arg) + ": " + dtype_name(dtype) + " is not supported (f32, f16, bf16)");
}

ncclRedOp_t to_nccl(ReduceOp op, const char* arg) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string(arg) + ": unknown reduce op " + std::to_string(static_cast<int>(op)));
}

void CommImpl::ensure_usable(const char* op) const {
  if (destroyed) throw Error(ErrorCode::kInvalidState, std::string(op) + ": communicator was destroyed");
  if (broken) throw Error(ErrorCode::kInvalidState, std::string(op) + ": communicator is unusable after an earlier device error");
}

namespace {
// Destructor of the user object a captured op moves into its graph (runs on a CUDA thread; no CUDA calls).
struct GraphRefHolder {
  std::shared_ptr<CommImpl::GraphRefs> refs;
};
void release_graph_ref(void* p) {
  auto* h = static_cast<GraphRefHolder*>(p);
  h->refs->live.fetch_sub(1);
  delete h;
}
}  // namespace

void CommImpl::note_enqueued(cudaStream_t stream) {
  // cudaStreamIsCapturing first: it is the cheap query, and this runs on every eager call (the graph query below
  // only while capturing).
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &st) != cudaSuccess) {
    cudaGetLastError();  // e.g. the legacy stream while another thread captures: nothing to track
    return;
  }
  if (st == cudaStreamCaptureStatusActive) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamGetCaptureInfo(stream, &st, nullptr, &graph) != cudaSuccess || graph == nullptr) {
      cudaGetLastError();
      log(LogLevel::kError, "all_reduce: cudaStreamGetCaptureInfo failed while capturing; destroy() cannot see this graph");
      return;
    }
    // Capture time only (not the replay hot path): one user object per captured op.
    auto* h = new GraphRefHolder{graph_refs};
    cudaUserObject_t obj = nullptr;
    graph_refs->live.fetch_add(1);
    if (cudaUserObjectCreate(&obj, h, release_graph_ref, 1, cudaUserObjectNoDestructorSync) != cudaSuccess) {
      graph_refs->live.fetch_sub(1);
      delete h;
      cudaGetLastError();
      log(LogLevel::kError, "all_reduce: cudaUserObjectCreate failed while capturing; destroy() cannot see this graph");
      return;
    }
    if (cudaGraphRetainUserObject(graph, obj, 1, cudaGraphUserObjectMove) != cudaSuccess) {
      cudaUserObjectRelease(obj, 1);  // runs the destructor, which undoes the count
      cudaGetLastError();
      log(LogLevel::kError, "all_reduce: cudaGraphRetainUserObject failed while capturing; destroy() cannot see this graph");
      return;
    }
    return;
  }
  if (st != cudaStreamCaptureStatusNone) return;  // invalidated capture: the graph will not exist
  std::lock_guard<std::mutex> lock(events_mu);
  StreamEvent* slot = nullptr;
  for (StreamEvent& e : stream_events)
    if (e.stream == stream) slot = &e;
  if (slot == nullptr && stream_events.size() >= 64) {
    // Many streams: reuse the event of one whose work has finished (allocation happens on first use only).
    for (StreamEvent& e : stream_events)
      if (cudaEventQuery(e.event) == cudaSuccess) {
        e.stream = stream;
        slot = &e;
        break;
      }
    cudaGetLastError();
  }
  if (slot == nullptr) {
    cudaEvent_t ev = nullptr;
    if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      log(LogLevel::kError, "all_reduce: cudaEventCreate failed; destroy() cannot see work on this stream");
      return;
    }
    stream_events.push_back({stream, ev});
    slot = &stream_events.back();
  }
  if (cudaEventRecord(slot->event, stream) != cudaSuccess) {
    cudaGetLastError();
    log(LogLevel::kError, "all_reduce: cudaEventRecord failed; destroy() cannot see work on this stream");
  }
}

void CommImpl::ensure_idle(const char* op) {
  {
    std::lock_guard<std::mutex> lock(events_mu);
    for (const StreamEvent& e : stream_events) {
      if (cudaEventQuery(e.event) == cudaErrorNotReady) {
        std::ostringstream s;
        s << op << ": tpcomm work is still in flight on stream " << static_cast<const void*>(e.stream)
          << " (synchronize it first); nothing was freed";
        throw Error(ErrorCode::kInvalidState, s.str());
      }
    }
    cudaGetLastError();
  }
  // Graph user objects are released asynchronously by CUDA after cudaGraphDestroy / cudaGraphExecDestroy and
  // the end of pending replays: allow that a moment before calling the graphs alive.
  for (int i = 0; i < 200 && graph_refs->live.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const int64_t live = graph_refs->live.load();
  if (live > 0) {
    throw Error(ErrorCode::kInvalidState,
                std::string(op) + ": " + std::to_string(live) +
                    " captured tpcomm op(s) belong to CUDA graphs that still exist (a replay would use this "
                    "communicator's memory); destroy those graphs and their executable instances first; nothing was freed");
  }
}

static bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

// Creation steps every constructor shares (collective over the NCCL communicator).
static void init_common(CommImpl& c) {
  TPCOMM_CUDA_CHECK(cudaSetDevice(c.device));
  if (const char* t = std::getenv("TPCOMM_TIMEOUT_S")) c.opts.timeout_s = std::atof(t);
  TPCOMM_ARG_CHECK(c.opts.timeout_s > 0, "timeout_s", "must be positive");
  c.timeout_ns = static_cast<uint64_t>(c.opts.timeout_s * 1e9);
  c.ar_table = default_all_reduce_table(c.world);  // per communicator: groups of different sizes differ
  const std::size_t W = static_cast<std::size_t>(c.world);
  // Default limits (0 = auto). For W = 2 the push one-shot moves the fewest bytes over NVLink at every
  // size, so it gets a large workspace and two-shot only a small one (for pinned use); for larger W,
  // one-shot's traffic grows with W-1 and two-shot takes over early (tables in all_reduce_select.cpp).
  const std::size_t MiB = std::size_t(1) << 20;
  if (c.opts.two_shot_max_bytes == 0) c.opts.two_shot_max_bytes = W <= 2 ? 16 * MiB : 64 * MiB;
  if (c.opts.one_shot_max_bytes == 0) c.opts.one_shot_max_bytes = W <= 2 ? 64 * MiB : (W <= 4 ? 8 * MiB : 4 * MiB);
  // Barrier-free one-shot: 1 MiB. At W = 2 its pipelined kernel beat the push one-shot at 1 MiB and 8 MiB
  // but lost at 2, 4 and 16 MiB (bench/NOTES.md), so a larger region (3 x W x cap) would buy nothing by
  // default; callers may raise it and pin one_shot_ll.
  if (c.opts.lamport_max_bytes == 0) c.opts.lamport_max_bytes = 1 * MiB;
  if (c.opts.copy_engine_max_bytes == 0) c.opts.copy_engine_max_bytes = W <= 2 ? 16 * MiB : 0;  // auto does not use it

  TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&c.sm_count, cudaDevAttrMultiProcessorCount, c.device));
  TPCOMM_CUDA_CHECK(cudaStreamCreateWithFlags(&c.aux_stream, cudaStreamNonBlocking));
  TPCOMM_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&c.h_error), sizeof(device::ErrorRecord), cudaHostAllocMapped));
  std::memset(c.h_error, 0, sizeof(device::ErrorRecord));
  TPCOMM_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&c.d_error), c.h_error, 0));
  TPCOMM_CUDA_CHECK(cudaMalloc(&c.d_abort, sizeof(uint32_t)));
  TPCOMM_CUDA_CHECK(cudaMemset(c.d_abort, 0, sizeof(uint32_t)));
}

// Loopback world: every rank is this process on c.device. Peer access is the device's own memory (no NVLink, no
// NVML question to ask); the mapping probe in setup_fast_path still runs, through the same peer tables.
static void gather_loopback_topology(const Communicator& comm, CommImpl& c) {
  RankInfo me{};
  me.host_hash = host_hash();
  me.pid = static_cast<int32_t>(getpid());
  me.cuda_device = c.device;
  TPCOMM_CUDA_CHECK(cudaDeviceGetPCIBusId(me.bus_id, sizeof(me.bus_id), c.device));
  c.ranks.resize(c.world);
  comm.host_all_gather(&me, c.ranks.data(), sizeof(RankInfo));
  for (int p = 0; p < c.world; ++p)
    if (c.ranks[p].pid != me.pid || c.ranks[p].cuda_device != c.device)
      throw Error(ErrorCode::kInternal, "loopback world: rank " + std::to_string(p) + " is not on this process and device");
  if (c.rank == 0) {
    for (const char* var : {"TPCOMM_FORCE_NCCL", "TPCOMM_DISABLE_P2P"})
      if (env_flag(var))
        log(LogLevel::kWarn, std::string(var) + " is ignored on a loopback world (it has no NCCL to run ops through)");
  }
  Topology t;
  t.world_size = c.world;
  t.nodes = 1;
  t.peer_access = true;  // one device: every rank's buffer is local memory
  t.nvlink = false;      // no link between the ranks at all
  t.nvml_available = false;
  t.loopback = true;
  t.fast_path = true;    // provisional until the probe, as on any world
  c.topo = t;
}

static void gather_topology(const Communicator& comm, CommImpl& c) {
  if (c.loopback) return gather_loopback_topology(comm, c);
  RankInfo me{};
  me.host_hash = host_hash();
  me.pid = static_cast<int32_t>(getpid());
  me.cuda_device = c.device;
  std::string forced;
  if (c.opts.force_nccl) forced = "CommOptions::force_nccl";
  if (env_flag("TPCOMM_FORCE_NCCL")) forced = "TPCOMM_FORCE_NCCL is set";
  if (env_flag("TPCOMM_DISABLE_P2P")) forced = "TPCOMM_DISABLE_P2P is set";
  me.force_nccl = forced.empty() ? 0 : 1;
  TPCOMM_CUDA_CHECK(cudaDeviceGetPCIBusId(me.bus_id, sizeof(me.bus_id), c.device));
  c.ranks.resize(c.world);
  comm.host_all_gather(&me, c.ranks.data(), sizeof(RankInfo));

  // My row of the peer-access and NVLink matrices, then everyone's.
  std::vector<int8_t> row(2 * kMaxRanks, static_cast<int8_t>(Tri::kUnknown));
  bool nvml_ok = false;
  for (int j = 0; j < c.world && j < kMaxRanks; ++j) {
    if (j == c.rank) continue;
    int peer_dev = -1;
    if (cudaDeviceGetByPCIBusId(&peer_dev, c.ranks[j].bus_id) == cudaSuccess && peer_dev >= 0) {
      int can = 0;
      if (peer_dev == c.device) can = 1;
      else if (cudaDeviceCanAccessPeer(&can, c.device, peer_dev) != cudaSuccess) can = -1;
      row[j] = static_cast<int8_t>(can < 0 ? Tri::kUnknown : (can ? Tri::kYes : Tri::kNo));
    } else {
      cudaGetLastError();  // not visible from this process (CUDA_VISIBLE_DEVICES): the probe decides
    }
    row[kMaxRanks + j] = static_cast<int8_t>(nvml_nvlink_between(c.ranks[c.rank].bus_id, c.ranks[j].bus_id, &nvml_ok));
  }
  std::vector<int8_t> rows(static_cast<std::size_t>(c.world) * row.size());
  std::vector<int32_t> nvml_flags(c.world);
  comm.host_all_gather(row.data(), rows.data(), row.size());
  int32_t nvml_i = nvml_ok ? 1 : 0;
  comm.host_all_gather(&nvml_i, nvml_flags.data(), sizeof(int32_t));

  TopologyInput in;
  in.ranks = c.ranks;
  for (const auto& r : c.ranks)
    if (r.force_nccl && forced.empty()) forced = "a peer rank was told to avoid the fast path";
  in.forced = forced;
  in.nvml_available = true;
  for (int32_t f : nvml_flags) in.nvml_available = in.nvml_available && f;
  const int w = std::min(c.world, kMaxRanks);
  in.peer.assign(c.world, std::vector<Tri>(c.world, Tri::kUnknown));
  in.nvlink.assign(c.world, std::vector<Tri>(c.world, Tri::kUnknown));
  for (int i = 0; i < w; ++i) {
    for (int j = 0; j < w; ++j) {
      if (i == j) continue;
      const int8_t* r = rows.data() + static_cast<std::size_t>(i) * row.size();
      // kUnknown (rank i cannot see rank j's device) is settled by the mapping probe later.
      in.peer[i][j] = static_cast<Tri>(r[j]);
      in.nvlink[i][j] = static_cast<Tri>(r[kMaxRanks + j]);
    }
  }
  c.topo = decide_topology(in);
}

// Allocates the all-reduce workspace (collective) and proves that writes through every peer mapping land.
static void setup_fast_path(const Communicator& comm, CommImpl& c) {
  const std::size_t W = static_cast<std::size_t>(c.world);
  auto round16 = [](std::size_t x) { return (x + 15) / 16 * 16; };
  c.two_chunk_cap = round16((c.opts.two_shot_max_bytes + W - 1) / W) + 16;  // + one vector of rounding slack
  c.one_cap = round16(c.opts.one_shot_max_bytes);
  // Barrier-free one-shot: the one-pass kernel's region holds up to kLLSmallMaxBytes, the pipelined
  // kernel's region the rest (none when lamport_max_bytes is smaller).
  c.ll_cap = round16(std::min(c.opts.lamport_max_bytes, kLLSmallMaxBytes));
  c.llp_cap = c.opts.lamport_max_bytes > kLLSmallMaxBytes ? round16(c.opts.lamport_max_bytes) : 0;
  // Fixed grids for the life of the communicator (the grid is part of the cross-rank protocol).
  auto env_int = [](const char* name, int def, int lo, int hi) {
    const char* v = std::getenv(name);
    return v ? std::clamp(std::atoi(v), lo, hi) : def;
  };
  c.blocks = env_int("TPCOMM_AR_BLOCKS", 128, 1, kMaxBlocks - 1);  // 128 beat 32/64/96/256 at 4-64 MiB (h200x2)
  c.ll_blocks = env_int("TPCOMM_AR_LL_BLOCKS", 64, 1, kMaxBlocks - 1);  // 64 beat 16/32 from 256 KiB up (h200x2)
  c.threads = env_int("TPCOMM_AR_THREADS", 512, 64, 512) / 32 * 32;
  if (c.loopback) {
    // The W ranks' grids share this GPU and every one of them spins on the others: they must be resident at once
    // (comm_impl.h, loopback_max_ctas). Divided from the occupancy of the heaviest all-reduce kernel; these kernels
    // use no shared memory, so registers and threads are what CTAs of different kernels share an SM by, and any
    // mix of them fits where the heaviest alone does.
    // One share of the device is left free besides the W ranks' grids: the copy-engine one-shot's same-device
    // copies run as driver copy kernels that need SM slots while the reduce kernels spin (same-device D2D copies
    // stalled beside a full grid in the async-TP native GEMM tests on nvidia-h200), and so does other work of the
    // ranks on the device.
    const int per_rank = loopback_max_ctas(c, all_reduce_min_ctas_per_sm(c.threads));  // loads those kernels too
    const int cap = std::max(1, static_cast<int>(int64_t(per_rank) * c.world / (c.world + 1)));
    loopback_preload_kernels();
    c.blocks = std::min(c.blocks, cap);
    c.ll_blocks = std::min(c.ll_blocks, cap);
  }
  // Data layout: [two-shot: 2 parities x (W slots + W gather) chunks][one-shot: 2 parities x W slots]
  //              [barrier-free: 3 buffers x W slots][pipelined barrier-free: 3 buffers x W slots]
  c.off_two = 0;
  c.off_one = c.off_two + 2 * 2 * W * c.two_chunk_cap;
  c.off_ll = c.off_one + 2 * W * c.one_cap;
  c.ce_cap = c.opts.copy_engine_max_bytes ? round16(c.opts.copy_engine_max_bytes) : 0;
  c.off_llp = c.off_ll + 3 * W * c.ll_cap;
  c.off_ce = c.off_llp + 3 * W * c.llp_cap;  // [copy-engine one-shot: W slots, single buffer]
  const std::size_t total = c.off_ce + W * c.ce_cap;
  TPCOMM_CUDA_CHECK(cudaStreamCreateWithFlags(&c.ce_stream, cudaStreamNonBlocking));
  TPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&c.ce_fork, cudaEventDisableTiming));
  TPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&c.ce_join, cudaEventDisableTiming));

  std::string why;
  c.ws = SymmetricAllocator::allocate_agreed(comm, total, kSignalPadBytes, &why);
  if (!c.ws) {
    c.topo.fast_path = false;
    c.topo.reason = "symmetric workspace could not be mapped on every rank: " + why;
    return;
  }
  c.topo.peer_access = true;

  // Barrier-free buffers start as "empty" (every 32-bit word = the sentinel).
  auto* ll = reinterpret_cast<uint32_t*>(static_cast<char*>(c.ws->local()) + c.off_ll);
  memset32(c.aux_stream, ll, 0x80000000u, 3 * W * (c.ll_cap + c.llp_cap) / 4);  // both regions (adjacent)
  TPCOMM_CUDA_CHECK(cudaMalloc(&c.d_state, sizeof(ArState)));
  TPCOMM_CUDA_CHECK(cudaMemsetAsync(c.d_state, 0, sizeof(ArState), c.aux_stream));
  TPCOMM_CUDA_CHECK(cudaMalloc(&c.d_regs, sizeof(RankData) * kMaxRegSlots));
  TPCOMM_CUDA_CHECK(cudaMemsetAsync(c.d_regs, 0, sizeof(RankData) * kMaxRegSlots, c.aux_stream));
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(c.aux_stream));

  // Probe: every rank writes a per-rank magic value into each peer's pad with a kernel (the same path the
  // collectives use), then each rank checks what arrived in its own pad.
  const uint32_t magic = 0x7C0D0000u ^ static_cast<uint32_t>(getpid() & 0xFFFF);
  std::vector<uint32_t> magics(c.world);
  comm.host_all_gather(&magic, magics.data(), sizeof(uint32_t));
  bool ok = true;
  try {
    launch_probe_write(c.ws->device_peer_signal_pads(), kPadProbeOffset / 4, c.rank, c.world, magic, c.aux_stream);
    TPCOMM_CUDA_CHECK(cudaStreamSynchronize(c.aux_stream));
  } catch (const Error& e) {
    ok = false;
    log(LogLevel::kWarn, std::string("peer probe write failed: ") + e.what());
  }
  comm.host_barrier();
  std::vector<uint32_t> got(c.world, 0);
  if (ok) {
    TPCOMM_CUDA_CHECK(cudaMemcpy(got.data(), reinterpret_cast<char*>(c.ws->local_signal_pad()) + kPadProbeOffset,
                                 sizeof(uint32_t) * c.world, cudaMemcpyDeviceToHost));
    for (int p = 0; p < c.world; ++p) ok = ok && got[p] == (magics[p] ^ static_cast<uint32_t>(p));
  }
  int32_t mine = ok ? 1 : 0;
  std::vector<int32_t> all(c.world);
  comm.host_all_gather(&mine, all.data(), sizeof(int32_t));
  c.topo.probe_ok = true;
  for (int p = 0; p < c.world; ++p) {
    if (!all[p]) {
      c.topo.probe_ok = false;
      c.topo.fast_path = false;
      c.topo.reason = "peer-memory probe failed on rank " + std::to_string(p) + " (written values did not arrive)";
      break;
    }
  }
  TPCOMM_CUDA_CHECK(cudaMemset(reinterpret_cast<char*>(c.ws->local_signal_pad()) + kPadProbeOffset, 0,
                               sizeof(uint32_t) * kMaxRanks));
  comm.host_barrier();
}

static void log_topology(const CommImpl& c) {
  if (c.rank != 0) return;
  std::ostringstream s;
  if (c.topo.loopback && c.topo.fast_path) {
    s << "fast path on: loopback world of " << c.world << " ranks on device " << c.device << " (one GPU, no NCCL; "
      << "all-reduce grids " << c.blocks << "/" << c.ll_blocks << " CTAs per rank so all ranks are resident; timings "
      << "measure nothing), probe ok";
    log(LogLevel::kInfo, s.str());
  } else if (c.topo.fast_path) {
    s << "fast path on: " << c.world << " ranks, peer access " << (c.topo.nvlink ? "over NVLink" : "(NVLink not confirmed by NVML)")
      << ", probe ok";
    log(LogLevel::kInfo, s.str());
  } else {
    s << "fast path off, every op runs through NCCL: " << c.topo.reason;
    log(LogLevel::kWarn, s.str());
  }
}

}  // namespace detail

using detail::CommImpl;

Communicator::Communicator(std::unique_ptr<CommImpl> impl) : impl_(std::move(impl)) {}

static std::unique_ptr<Communicator> finish(std::unique_ptr<Communicator> comm) {
  CommImpl& c = comm->impl();
  detail::init_common(c);
  detail::gather_topology(*comm, c);
  if (c.topo.fast_path) detail::setup_fast_path(*comm, c);
  detail::log_topology(c);
  return comm;
}

std::unique_ptr<Communicator> Communicator::create(int rank, int world_size, int device, const ncclUniqueId& id,
                                                   const CommOptions& options) {
  TPCOMM_ARG_CHECK(world_size >= 1, "world_size", "must be >= 1, got " + std::to_string(world_size));
  TPCOMM_ARG_CHECK(rank >= 0 && rank < world_size, "rank",
                   std::to_string(rank) + " is outside [0, " + std::to_string(world_size) + ")");
  int ndev = 0;
  TPCOMM_CUDA_CHECK(cudaGetDeviceCount(&ndev));
  TPCOMM_ARG_CHECK(device >= 0 && device < ndev, "device",
                   std::to_string(device) + " is not a visible CUDA device (" + std::to_string(ndev) + " visible)");
  auto impl = std::make_unique<CommImpl>();
  impl->rank = rank;
  impl->world = world_size;
  impl->device = device;
  impl->opts = options;
  TPCOMM_CUDA_CHECK(cudaSetDevice(device));
  TPCOMM_NCCL_CHECK(ncclCommInitRank(&impl->nccl, world_size, id, rank));
  impl->owns_nccl = true;
  return finish(std::unique_ptr<Communicator>(new Communicator(std::move(impl))));
}

std::unique_ptr<Communicator> Communicator::adopt(ncclComm_t comm, const CommOptions& options) {
  TPCOMM_ARG_CHECK(comm != nullptr, "comm", "null ncclComm_t");
  auto impl = std::make_unique<CommImpl>();
  TPCOMM_NCCL_CHECK(ncclCommUserRank(comm, &impl->rank));
  TPCOMM_NCCL_CHECK(ncclCommCount(comm, &impl->world));
  TPCOMM_NCCL_CHECK(ncclCommCuDevice(comm, &impl->device));
  impl->nccl = comm;
  impl->owns_nccl = false;
  impl->opts = options;
  return finish(std::unique_ptr<Communicator>(new Communicator(std::move(impl))));
}

std::unique_ptr<Communicator> Communicator::from_env(const CommOptions& options) {
  const detail::LaunchEnv env = detail::parse_launch_env(detail::process_env());
  ncclUniqueId id;
  if (!env.nccl_id_hex.empty()) {
    id = detail::decode_unique_id(env.nccl_id_hex);
  } else {
    // NCCL's bootstrap: with NCCL_COMM_ID set, every rank derives the same id and rank 0 listens there.
    setenv("NCCL_COMM_ID", env.nccl_comm_id.c_str(), 0);
    TPCOMM_NCCL_CHECK(ncclGetUniqueId(&id));
  }
  int ndev = 0;
  TPCOMM_CUDA_CHECK(cudaGetDeviceCount(&ndev));
  TPCOMM_ARG_CHECK(ndev > 0, "LOCAL_RANK", "no CUDA device is visible");
  const int device = env.local_world_size <= ndev ? env.local_rank : env.local_rank % ndev;
  return create(env.rank, env.world_size, device, id, options);
}

std::vector<std::unique_ptr<Communicator>> Communicator::create_local(const std::vector<int>& devices,
                                                                      const CommOptions& options) {
  TPCOMM_ARG_CHECK(!devices.empty(), "devices", "empty list");
  ncclUniqueId id;
  TPCOMM_NCCL_CHECK(ncclGetUniqueId(&id));
  const int n = static_cast<int>(devices.size());
  std::vector<std::unique_ptr<Communicator>> out(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        out[r] = create(r, n, devices[r], id, options);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

std::vector<std::unique_ptr<Communicator>> Communicator::create_loopback(int world_size, int device,
                                                                         const CommOptions& options) {
  TPCOMM_ARG_CHECK(world_size >= 1 && world_size <= detail::kMaxRanks, "world_size",
                   std::to_string(world_size) + " is outside [1, " + std::to_string(detail::kMaxRanks) + "]");
  int ndev = 0;
  TPCOMM_CUDA_CHECK(cudaGetDeviceCount(&ndev));
  TPCOMM_ARG_CHECK(device >= 0 && device < ndev, "device",
                   std::to_string(device) + " is not a visible CUDA device (" + std::to_string(ndev) + " visible)");
  TPCOMM_ARG_CHECK(!options.force_nccl, "force_nccl", "a loopback world has no NCCL communicator to run ops through");
  auto hub = std::make_shared<detail::LoopbackHub>(world_size);
  std::vector<std::unique_ptr<Communicator>> out(world_size);
  std::vector<std::exception_ptr> errors(world_size);
  std::atomic<int> first_failed{-1};
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto impl = std::make_unique<CommImpl>();
        impl->rank = r;
        impl->world = world_size;
        impl->device = device;
        impl->opts = options;
        impl->loopback = true;
        impl->hub = hub;
        auto comm = finish(std::unique_ptr<Communicator>(new Communicator(std::move(impl))));
        // The fast path is decided from all-gathered facts, so every rank comes to the same answer here.
        if (!comm->fast_path())
          throw Error(ErrorCode::kUnsupported, "create_loopback: the loopback world cannot run without its peer path: " +
                                                   comm->topology().reason);
        out[r] = std::move(comm);
      } catch (...) {
        errors[r] = std::current_exception();
        int none = -1;
        first_failed.compare_exchange_strong(none, r);
        std::string what = "unknown error";
        try {
          std::rethrow_exception(errors[r]);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        // The others stop waiting for this rank in the host exchange at once (not after the timeout).
        hub->abort("rank " + std::to_string(r) + " failed during create_loopback: " + what);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_failed.load() >= 0) std::rethrow_exception(errors[first_failed.load()]);  // the cause, not the echoes
  return out;
}

Communicator::~Communicator() {
  try {
    destroy();
  } catch (const std::exception& e) {
    log(LogLevel::kError, std::string("communicator destroyed while in use; resources leaked: ") + e.what());
  }
}

void Communicator::destroy() {
  if (!impl_ || impl_->destroyed) return;
  CommImpl& c = *impl_;
  cudaSetDevice(c.device);
  c.ensure_idle("destroy");
  cudaGetLastError();
  c.destroyed = true;
  c.atp.reset();
  for (auto& [key, ptr] : c.opened) cudaIpcCloseMemHandle(ptr);
  c.opened.clear();
  c.ws.reset();
  if (c.d_state) cudaFree(c.d_state);
  if (c.d_regs) cudaFree(c.d_regs);
  if (c.d_abort) cudaFree(c.d_abort);
  if (c.d_scratch) cudaFree(c.d_scratch);
  if (c.h_error) cudaFreeHost(c.h_error);
  for (const auto& e : c.stream_events) cudaEventDestroy(e.event);
  c.stream_events.clear();
  if (c.aux_stream) cudaStreamDestroy(c.aux_stream);
  if (c.ce_stream) cudaStreamDestroy(c.ce_stream);
  if (c.ce_fork) cudaEventDestroy(c.ce_fork);
  if (c.ce_join) cudaEventDestroy(c.ce_join);
  if (c.owns_nccl && c.nccl) ncclCommDestroy(c.nccl);
  c.d_state = nullptr;
  c.d_regs = nullptr;
  c.d_abort = nullptr;
  c.d_scratch = nullptr;
  c.h_error = nullptr;
  c.d_error = nullptr;
  c.aux_stream = nullptr;
  c.nccl = nullptr;
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::world_size() const { return impl_->world; }
int Communicator::device() const { return impl_->device; }
ncclComm_t Communicator::nccl() const {
  impl_->ensure_usable("nccl");
  if (impl_->loopback) throw Error(ErrorCode::kUnsupported, "nccl: a loopback world has no NCCL communicator");
  return impl_->nccl;
}
const Topology& Communicator::topology() const { return impl_->topo; }
const CommOptions& Communicator::options() const { return impl_->opts; }
detail::CommImpl& Communicator::impl() const { return *impl_; }

device::SyncContext Communicator::sync_context() const {
  impl_->ensure_usable("sync_context");
  return impl_->sync_ctx();
}

CommStats Communicator::stats() const {
  CommStats s;
  s.fast_calls = impl_->fast_calls.load();
  s.nccl_calls = impl_->nccl_calls.load();
  s.nccl_fallbacks = impl_->nccl_fallbacks.load();
  s.copy_in_calls = impl_->copy_in_calls.load();
  s.zero_copy_calls = impl_->zero_copy_calls.load();
  s.async_tp_fused_calls = impl_->atp_fused.load();
  s.async_tp_unfused_calls = impl_->atp_unfused.load();
  s.async_tp_fallbacks = impl_->atp_fallbacks.load();
  return s;
}

void Communicator::check() const {
  CommImpl& c = *impl_;
  if (c.destroyed) throw Error(ErrorCode::kInvalidState, "check: communicator was destroyed");
  const volatile device::ErrorRecord* e = c.h_error;
  const uint32_t code = e->code;
  if (code == device::kDevOk) return;
  c.broken = true;
  const int peer = e->peer;
  const uint32_t block = e->block, detail = e->detail;
  const std::string where = " (seen by rank " + std::to_string(c.rank) + ", block " + std::to_string(block) + ")";
  switch (code) {
    case device::kDevTimeout: {
      std::ostringstream s;
      s << "rank " << peer << " did not arrive within " << c.opts.timeout_s << " s" << where;
      throw Error(ErrorCode::kTimeout, s.str());
    }
    case device::kDevSizeMismatch:
      throw Error(ErrorCode::kMismatch, "rank " + std::to_string(peer) +
                                            " entered the collective with a different size (its byte count mod 2^32: " +
                                            std::to_string(detail) + ")" + where);
    case device::kDevNotRegistered:
      throw Error(ErrorCode::kInvalidState,
                  "a captured zero-copy all-reduce ran before register_graph_buffers() filled its peer pointers" + where);
    default:
      throw Error(ErrorCode::kInternal, "unknown device error code " + std::to_string(code) + where);
  }
}

void Communicator::synchronize(cudaStream_t stream) const {
  impl_->ensure_usable("synchronize");
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  check();
}

void Communicator::host_all_gather(const void* send, void* recv, std::size_t bytes) const {
  CommImpl& c = *impl_;
  c.ensure_usable("host_all_gather");
  TPCOMM_ARG_CHECK(bytes > 0, "bytes", "must be positive");
  if (c.loopback) {
    c.hub->all_gather(c.rank, send, recv, bytes, std::chrono::nanoseconds(c.timeout_ns));
    return;
  }
  const std::size_t need = bytes * c.world;
  if (need > c.scratch_bytes) {
    if (c.d_scratch) TPCOMM_CUDA_CHECK(cudaFree(c.d_scratch));
    c.d_scratch = nullptr;
    TPCOMM_CUDA_CHECK(cudaMalloc(&c.d_scratch, need));
    c.scratch_bytes = need;
  }
  char* scratch = static_cast<char*>(c.d_scratch);
  TPCOMM_CUDA_CHECK(cudaMemcpyAsync(scratch + bytes * c.rank, send, bytes, cudaMemcpyHostToDevice, c.aux_stream));
  TPCOMM_NCCL_CHECK(ncclAllGather(scratch + bytes * c.rank, scratch, bytes, ncclChar, c.nccl, c.aux_stream));
  TPCOMM_CUDA_CHECK(cudaMemcpyAsync(recv, scratch, need, cudaMemcpyDeviceToHost, c.aux_stream));
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(c.aux_stream));
}

void Communicator::host_barrier() const {
  if (impl_->loopback) {
    impl_->ensure_usable("host_barrier");
    impl_->hub->barrier(impl_->rank, std::chrono::nanoseconds(impl_->timeout_ns));
    return;
  }
  int32_t x = 1;
  std::vector<int32_t> all(impl_->world);
  host_all_gather(&x, all.data(), sizeof(x));
}

}  // namespace tpcomm
