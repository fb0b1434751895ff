// Host side of the FP8-wire two-shot all-reduce: when it runs, its parameters, and the one runtime -> template
// mapping of its kernels (dtype x op x world). Called from all_reduce() (all_reduce.cu); the kernels are in
// all_reduce_fp8wire_kernels.cuh, their own translation unit so the exact algorithms' unit does not grow.
#include <string>

#include "collectives/all_reduce_args.h"
#include "collectives/all_reduce_fp8wire.h"
#include "collectives/all_reduce_fp8wire_kernels.cuh"
#include "comm/comm_impl.h"
#include "comm/loopback_launch.h"
#include "common/check.h"
#include "common/pdl.h"
#include "symm/symm_impl.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/log.h"

namespace tpcomm::detail {
namespace {

using Fp8WireKernel = void (*)(Fp8WireParams);

template <typename T, ReduceOp OP>
Fp8WireKernel pick_fp8_world(int world, bool generic) {
  // W = 2 is specialized (unrolled rank loops, more loads in flight), as for the exact algorithms.
  return world == 2 && !generic ? all_reduce_two_shot_fp8wire<T, OP, 2> : all_reduce_two_shot_fp8wire<T, OP, 0>;
}
template <typename T>
Fp8WireKernel pick_fp8_op(ReduceOp op, int world, bool generic) {
  switch (op) {
    case ReduceOp::kSum: return pick_fp8_world<T, ReduceOp::kSum>(world, generic);
    case ReduceOp::kMax: return pick_fp8_world<T, ReduceOp::kMax>(world, generic);
    case ReduceOp::kMin: return pick_fp8_world<T, ReduceOp::kMin>(world, generic);
  }
  throw Error(ErrorCode::kInvalidArgument, "op: unknown reduce op " + std::to_string(static_cast<int>(op)));
}
Fp8WireKernel pick_fp8_kernel(DType dtype, ReduceOp op, int world, bool generic) {
  if (world < 1 || world > kMaxRanks)
    throw Error(ErrorCode::kUnsupported, "world size " + std::to_string(world) + " has no fast-path kernel");
  switch (dtype) {
    case DType::kFloat32: return pick_fp8_op<float>(op, world, generic);
    case DType::kFloat16: return pick_fp8_op<__half>(op, world, generic);
    case DType::kBFloat16: return pick_fp8_op<__nv_bfloat16>(op, world, generic);
    default: break;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string("dtype: ") + dtype_name(dtype) +
                                               " is not supported by the FP8 wire (f32, f16, bf16)");
}

}  // namespace

int fp8_wire_min_ctas_per_sm(int threads) {
  int least = 1 << 30;
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin})
      for (bool generic : {false, true}) {
        int n = 0;
        TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &n, reinterpret_cast<const void*>(pick_fp8_kernel(dt, op, 2, generic)), threads, 0));
        least = n < least ? n : least;
      }
  return least;
}

bool fp8_wire_runs(const CommImpl& c, std::size_t count, DType dtype, const AllReduceOptions& options) {
  if (options.wire != AllReduceWire::kFp8 || count == 0) return false;
  const bool pinned = options.algo == AllReduceAlgo::kTwoShot;  // else kAuto (check_all_reduce_args)
  if (!c.topo.fast_path) {
    if (pinned)
      throw Error(ErrorCode::kUnsupported, "algo: two_shot with the FP8 wire needs peer memory, unavailable here: " + c.topo.reason);
    return false;
  }
  // kAuto at W = 1: nothing crosses a wire, so the exact path (a copy) is strictly better.
  if (!pinned && c.world < 2) return false;
  const Fp8WireLayout l = fp8_wire_layout(count, dtype_size(dtype), c.world, options.fp8_block,
                                          options.gather_wire == AllReduceWire::kFp8);
  if (l.slot_bytes() > c.two_chunk_cap) {
    if (pinned)
      throw Error(ErrorCode::kInvalidArgument,
                  "count: " + std::to_string(count) + " elements need " + std::to_string(l.slot_bytes()) +
                      " bytes per FP8-wire slot, over the two-shot workspace's " + std::to_string(c.two_chunk_cap) +
                      " (CommOptions::two_shot_max_bytes)");
    return false;
  }
  return true;
}

void run_fp8_wire_two_shot(CommImpl& c, const void* input, void* output, std::size_t count, DType dtype, ReduceOp op,
                           const AllReduceOptions& options, bool generic, cudaStream_t stream) {
  const bool gather_fp8 = options.gather_wire == AllReduceWire::kFp8;
  const Fp8WireLayout l = fp8_wire_layout(count, dtype_size(dtype), c.world, options.fp8_block, gather_fp8);
  if (l.slot_bytes() > c.two_chunk_cap) throw Error(ErrorCode::kInternal, "FP8-wire slot over the workspace");
  const Fp8WireKernel kernel = pick_fp8_kernel(dtype, op, c.world, generic);
  if (log_level() >= LogLevel::kDebug)
    log(LogLevel::kDebug, "all_reduce: " + std::to_string(count * dtype_size(dtype)) + " bytes " + dtype_name(dtype) +
                              " -> two_shot, FP8 wire (block " + std::to_string(l.block) + ", all-gather " +
                              (gather_fp8 ? "fp8" : dtype_name(dtype)) + ")");
  Fp8WireParams p{};
  p.input = input;
  p.output = output;
  p.count = count;
  p.rank = c.rank;
  p.world = c.world;
  p.size_tag = fp8_wire_size_tag(count * dtype_size(dtype), options.fp8_block, gather_fp8);
  p.in_aligned = reinterpret_cast<uintptr_t>(input) % 16 == 0;
  p.out_aligned = reinterpret_cast<uintptr_t>(output) % 16 == 0;
  p.gather_fp8 = gather_fp8;
  p.block_lanes = static_cast<int>(l.block / kFp8WireGroup);
  p.nblocks = l.nblocks;
  p.chunk_blocks = l.chunk_blocks;
  p.scale_offset = l.scale_offset;
  p.peer_ws = reinterpret_cast<char* const*>(c.ws->device_peer_ptrs());
  p.off = c.off_two;
  p.cap = c.two_chunk_cap;
  p.state = c.d_state;
  p.bar.peer_flags = reinterpret_cast<uint64_t* const*>(c.ws->device_peer_signal_pads());
  p.bar.my_flags = reinterpret_cast<uint64_t*>(c.ws->local_signal_pad());
  p.bar.rank = c.rank;
  p.bar.world_size = c.world;
  p.bar.max_ranks = kMaxRanks;
  p.sync = c.sync_ctx();
  // The barrier algorithms' fixed grid (CommImpl::blocks): part of the cross-rank protocol and of the per-block
  // state this kernel shares with them. PDL unless on a loopback world (comm/loopback_launch.h).
  launch_cross_rank(c, kernel, dim3(c.blocks), dim3(c.threads), 0, stream, p);
}

}  // namespace tpcomm::detail

namespace tpcomm {

AllReducePlan plan_all_reduce(const Communicator& comm, std::size_t count, DType dtype, const AllReduceOptions& options) {
  const detail::CommImpl& c = comm.impl();
  c.ensure_usable("plan_all_reduce");
  detail::check_all_reduce_options(dtype, ReduceOp::kSum, options);
  if (detail::fp8_wire_runs(c, count, dtype, options)) return {AllReduceAlgo::kTwoShot, AllReduceWire::kFp8};
  return {resolve_all_reduce(comm, count * dtype_size(dtype), options.algo), AllReduceWire::kExact};
}

}  // namespace tpcomm
