// Host side of the all-reduce: validation, algorithm choice, zero-copy registration, and the one place that
// maps (dtype, op, algorithm) to kernel templates.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "collectives/all_reduce_args.h"
#include "collectives/all_reduce_fp8wire.h"
#include "collectives/all_reduce_kernels.cuh"
#include "collectives/all_reduce_loopback.h"
#include "comm/comm_impl.h"
#include "comm/loopback_launch.h"
#include "common/check.h"
#include "common/pdl.h"
#include "symm/symm_impl.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/communicator.h"
#include "tpcomm/log.h"

namespace tpcomm {
namespace {

std::atomic<bool> g_force_generic{false};  // test hook, see detail::set_force_generic_world_kernels

using detail::AllReduceParams;
using detail::CommImpl;

using KernelFn = void (*)(AllReduceParams);
using CeKernelFn = void (*)(detail::CeParams);

template <typename T, ReduceOp OP>
CeKernelFn pick_ce_world(int world) {
  return world == 2 && !g_force_generic.load(std::memory_order_relaxed) ? detail::all_reduce_ce_reduce<T, OP, 2>
                                                                        : detail::all_reduce_ce_reduce<T, OP, 0>;
}
template <typename T>
CeKernelFn pick_ce_op(ReduceOp op, int world) {
  switch (op) {
    case ReduceOp::kSum: return pick_ce_world<T, ReduceOp::kSum>(world);
    case ReduceOp::kMax: return pick_ce_world<T, ReduceOp::kMax>(world);
    case ReduceOp::kMin: return pick_ce_world<T, ReduceOp::kMin>(world);
  }
  throw Error(ErrorCode::kInvalidArgument, "op: unknown reduce op " + std::to_string(static_cast<int>(op)));
}
CeKernelFn pick_ce_kernel(DType dtype, ReduceOp op, int world) {
  switch (dtype) {
    case DType::kFloat32: return pick_ce_op<float>(op, world);
    case DType::kFloat16: return pick_ce_op<__half>(op, world);
    case DType::kBFloat16: return pick_ce_op<__nv_bfloat16>(op, world);
    default: break;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string("dtype: ") + dtype_name(dtype) + " is not supported (f32, f16, bf16)");
}

template <typename T, ReduceOp OP, int kW>
KernelFn pick_algo(AllReduceAlgo algo, bool large) {
  switch (algo) {
    case AllReduceAlgo::kOneShotLL:
      return large ? detail::all_reduce_one_shot_ll_pipelined<T, OP, kW> : detail::all_reduce_one_shot_ll<T, OP, kW>;
    case AllReduceAlgo::kOneShot: return detail::all_reduce_one_shot<T, OP, kW>;
    case AllReduceAlgo::kTwoShot: return detail::all_reduce_two_shot<T, OP, kW>;
    default: break;
  }
  throw Error(ErrorCode::kInternal, "no kernel for algorithm " + std::string(all_reduce_algo_name(algo)));
}

template <typename T, ReduceOp OP>
KernelFn pick_world(int world, AllReduceAlgo algo, bool large) {
  // W = 2 is specialized (unrolled rank loops, more loads in flight); other sizes read p.world.
  return world == 2 && !g_force_generic.load(std::memory_order_relaxed) ? pick_algo<T, OP, 2>(algo, large)
                                                                        : pick_algo<T, OP, 0>(algo, large);
}

template <typename T>
KernelFn pick_op(ReduceOp op, int world, AllReduceAlgo algo, bool large) {
  switch (op) {
    case ReduceOp::kSum: return pick_world<T, ReduceOp::kSum>(world, algo, large);
    case ReduceOp::kMax: return pick_world<T, ReduceOp::kMax>(world, algo, large);
    case ReduceOp::kMin: return pick_world<T, ReduceOp::kMin>(world, algo, large);
  }
  throw Error(ErrorCode::kInvalidArgument, "op: unknown reduce op " + std::to_string(static_cast<int>(op)));
}

// The single runtime -> template mapping; anything outside {f32,f16,bf16} x {sum,max,min} x {ll,one,two}
// x world sizes 1..8 fails here, loudly. `large`: a barrier-free message above kLLSmallMaxBytes (pipelined
// kernel).
KernelFn pick_kernel(DType dtype, ReduceOp op, int world, AllReduceAlgo algo, bool large) {
  if (world < 1 || world > detail::kMaxRanks)
    throw Error(ErrorCode::kUnsupported, "world size " + std::to_string(world) + " has no fast-path kernel");
  switch (dtype) {
    case DType::kFloat32: return pick_op<float>(op, world, algo, large);
    case DType::kFloat16: return pick_op<__half>(op, world, algo, large);
    case DType::kBFloat16: return pick_op<__nv_bfloat16>(op, world, algo, large);
    default: break;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string("dtype: ") + dtype_name(dtype) + " is not supported (f32, f16, bf16)");
}

// Vectors per thread and round of the pipelined barrier-free kernel: up to 4 (the W = 2 register budget),
// fewer when that leaves under 4 rounds, so a 2-4 MiB message is still pipelined (TPCOMM_AR_LL_UNROLL pins it).
int ll_unroll(std::size_t nvec, std::size_t threads) {
  static const int pinned = [] {
    const char* e = std::getenv("TPCOMM_AR_LL_UNROLL");
    return e ? std::clamp(std::atoi(e), 1, 4) : 0;
  }();
  if (pinned) return pinned;
  const std::size_t per_thread = (nvec + threads - 1) / threads;
  return static_cast<int>(std::clamp<std::size_t>(per_thread / 4, 1, 4));
}

std::size_t cap_of(const CommImpl& c, AllReduceAlgo a) {
  switch (a) {
    case AllReduceAlgo::kOneShotLL: return c.opts.lamport_max_bytes;
    case AllReduceAlgo::kOneShot: return c.opts.one_shot_max_bytes;
    case AllReduceAlgo::kTwoShot: return c.opts.two_shot_max_bytes;
    case AllReduceAlgo::kOneShotCE: return c.ce_cap;
    default: return ~std::size_t(0);
  }
}

const char* cap_option(AllReduceAlgo a) {
  switch (a) {
    case AllReduceAlgo::kOneShotLL: return "CommOptions::lamport_max_bytes";
    case AllReduceAlgo::kOneShot: return "CommOptions::one_shot_max_bytes";
    case AllReduceAlgo::kOneShotCE: return "CommOptions::copy_engine_max_bytes";
    default: return "CommOptions::two_shot_max_bytes";
  }
}

bool capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone;
}

int new_reg_slot(CommImpl& c) {
  if (c.next_reg_slot >= detail::kMaxRegSlots)
    throw Error(ErrorCode::kUnsupported, "register_buffer: all " + std::to_string(detail::kMaxRegSlots) +
                                             " zero-copy slots are in use");
  return c.next_reg_slot++;
}

// Exchanges `ptrs` (one per entry, same order on all ranks) and fills the given RankData slots.
void exchange_and_fill(const Communicator& comm, const std::vector<const void*>& ptrs, const std::vector<std::size_t>& bytes,
                       const std::vector<int>& slots) {
  CommImpl& c = comm.impl();
  const int W = c.world;
  int64_t n = static_cast<int64_t>(ptrs.size());
  std::vector<int64_t> counts(W);
  comm.host_all_gather(&n, counts.data(), sizeof(n));
  for (int q = 0; q < W; ++q)
    if (counts[q] != n)
      throw Error(ErrorCode::kMismatch, "register: rank " + std::to_string(q) + " registers " + std::to_string(counts[q]) +
                                            " buffers, rank " + std::to_string(c.rank) + " " + std::to_string(n));
  if (n == 0) return;
  std::vector<detail::ExportedRange> mine(n), all(static_cast<std::size_t>(n) * W);
  for (int64_t i = 0; i < n; ++i) mine[i] = detail::export_range(ptrs[i], bytes[i]);
  comm.host_all_gather(mine.data(), all.data(), sizeof(detail::ExportedRange) * n);
  std::vector<detail::RankData> rd(n);
  std::string failure;
  for (int64_t i = 0; i < n && failure.empty(); ++i) {
    std::memset(&rd[i], 0, sizeof(detail::RankData));
    for (int q = 0; q < W && failure.empty(); ++q) {
      const auto& e = all[static_cast<std::size_t>(q) * n + i];
      try {
        void* base = c.map_peer_allocation(q, e.handle, e.base, e.pid, nullptr);
        rd[i].ptrs[q] = static_cast<const char*>(base) + e.offset;
      } catch (const Error& err) {
        // Typically cudaErrorAlreadyMapped: small cudaMalloc blocks of one peer share an IPC-exportable
        // chunk, which can be opened only once. Register the enclosing (larger) buffer instead.
        failure = "ptr: rank " + std::to_string(q) + "'s buffer cannot be mapped on rank " + std::to_string(c.rank) +
                  " (" + err.what() + "); register one larger long-lived buffer instead of many small ones";
      }
    }
    rd[i].ptrs[c.rank] = ptrs[i];
  }
  // Agree, so that every rank throws or none does.
  int32_t ok = failure.empty() ? 1 : 0;
  std::vector<int32_t> oks(W);
  comm.host_all_gather(&ok, oks.data(), sizeof(ok));
  for (int q = 0; q < W; ++q)
    if (!oks[q])
      throw Error(ErrorCode::kInvalidArgument, failure.empty() ? "ptr: rank " + std::to_string(q) + " could not map a peer's buffer" : failure);
  for (int64_t i = 0; i < n; ++i)
    TPCOMM_CUDA_CHECK(cudaMemcpy(c.d_regs + slots[i], &rd[i], sizeof(detail::RankData), cudaMemcpyHostToDevice));
}

const detail::Registration* find_registration(const CommImpl& c, const void* p, std::size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (auto it = c.registrations.rbegin(); it != c.registrations.rend(); ++it)  // newest first
    if (a >= it->begin && a + bytes <= it->end) return &*it;
  return nullptr;
}

template <typename P, typename K>
void launch(const CommImpl& c, K kernel, const P& params, int blocks, int threads, cudaStream_t stream) {
  detail::launch_cross_rank(c, kernel, dim3(blocks), dim3(threads), 0, stream, params);  // PDL unless loopback
}

// Copy-engine one-shot (see all_reduce_ce_ready / all_reduce_ce_reduce for the protocol).
void run_copy_engine_one_shot(CommImpl& c, const void* input, void* output, std::size_t count, std::size_t bytes,
                              DType dtype, ReduceOp op, cudaStream_t stream) {
  constexpr std::size_t kChunkBytes = std::size_t(4) << 20;  // 10 us of NVLink per chunk; up to 16 chunks
  std::size_t chunk = kChunkBytes;
  while ((bytes + chunk - 1) / chunk > static_cast<std::size_t>(detail::kCeMaxChunks)) chunk *= 2;
  detail::CeParams p{};
  p.input = input;
  p.output = output;
  p.count = count;
  p.nvec = (bytes + 15) / 16;
  p.chunk_vecs = chunk / 16;
  p.nchunks = static_cast<int>((bytes + chunk - 1) / chunk);
  p.rank = c.rank;
  p.world = c.world;
  p.in_aligned = reinterpret_cast<uintptr_t>(input) % 16 == 0;
  p.out_aligned = reinterpret_cast<uintptr_t>(output) % 16 == 0;
  p.slots = static_cast<const char*>(c.ws->local()) + c.off_ce;
  p.cap = c.ce_cap;
  p.flags = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(c.ws->local_signal_pad()) + detail::kPadCeOffset);
  p.state = c.d_state;
  p.bar.peer_flags = reinterpret_cast<uint64_t* const*>(c.ws->device_peer_signal_pads());
  p.bar.my_flags = reinterpret_cast<uint64_t*>(c.ws->local_signal_pad());
  p.bar.rank = c.rank;
  p.bar.world_size = c.world;
  p.bar.max_ranks = detail::kMaxRanks;
  p.sync = c.sync_ctx();
  p.size_tag = static_cast<uint32_t>(bytes);
  launch(c, detail::all_reduce_ce_ready, p, 1, 32, stream);
  TPCOMM_CUDA_CHECK(cudaEventRecord(c.ce_fork, stream));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(c.ce_stream, c.ce_fork, 0));
  for (int k = 0; k < p.nchunks; ++k) {
    const std::size_t off = static_cast<std::size_t>(k) * chunk;
    const std::size_t len = std::min(chunk, bytes - off);
    for (int q = 0; q < c.world; ++q) {
      if (q == c.rank) continue;
      char* dst = static_cast<char*>(c.ws->peer(q)) + c.off_ce + static_cast<std::size_t>(c.rank) * c.ce_cap + off;
      TPCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, static_cast<const char*>(input) + off, len, cudaMemcpyDeviceToDevice, c.ce_stream));
    }
    // Flag every peer, and myself: my own flag says my copy engine has finished reading this input chunk,
    // so an in-place reduce may overwrite it.
    for (int q = 0; q < c.world; ++q) {
      auto* flag = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(c.ws->peer_signal_pad(q)) + detail::kPadCeOffset) +
                   k * detail::kMaxRanks + c.rank;
      stream_write_value32(c.ce_stream, flag, 1u);
    }
  }
  launch(c, pick_ce_kernel(dtype, op, c.world), p, c.blocks, c.threads, stream);
  TPCOMM_CUDA_CHECK(cudaEventRecord(c.ce_join, c.ce_stream));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(stream, c.ce_join, 0));
}

}  // namespace

namespace detail {
void set_force_generic_world_kernels(bool on) { g_force_generic.store(on); }

// Every kernel launched with CommImpl::blocks or ll_blocks, in both world forms (the W = 2 one and the generic one,
// which the test hook can switch to at any time; counting both at every W only makes the bound more conservative).
// The queries also load every all-reduce kernel now (see loopback_preload_kernels in comm_impl.h).
int all_reduce_min_ctas_per_sm(int threads) {
  cudaFuncAttributes attr{};
  TPCOMM_CUDA_CHECK(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(all_reduce_ce_ready)));
  int least = 1 << 30;
  auto take = [&](auto kernel) {
    int n = 0;
    TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, reinterpret_cast<const void*>(kernel), threads, 0));
    least = std::min(least, n);
  };
  auto take_world = [&](auto t, auto op_c, auto w_c) {
    using T = decltype(t);
    constexpr ReduceOp OP = decltype(op_c)::value;
    constexpr int kW = decltype(w_c)::value;
    take(all_reduce_one_shot_ll<T, OP, kW>);
    take(all_reduce_one_shot_ll_pipelined<T, OP, kW>);
    take(all_reduce_one_shot<T, OP, kW>);
    take(all_reduce_two_shot<T, OP, kW>);
    take(all_reduce_ce_reduce<T, OP, kW>);
  };
  auto take_op = [&](auto t, auto op_c) {
    take_world(t, op_c, std::integral_constant<int, 2>{});
    take_world(t, op_c, std::integral_constant<int, 0>{});
  };
  auto take_type = [&](auto t) {
    take_op(t, std::integral_constant<ReduceOp, ReduceOp::kSum>{});
    take_op(t, std::integral_constant<ReduceOp, ReduceOp::kMax>{});
    take_op(t, std::integral_constant<ReduceOp, ReduceOp::kMin>{});
  };
  take_type(float{});
  take_type(__half{});
  take_type(__nv_bfloat16{});
  least = std::min(least, fp8_wire_min_ctas_per_sm(threads));  // the FP8-wire two-shot (all_reduce_fp8wire.cu)
  return least;
}
}  // namespace detail

AllReduceAlgo resolve_all_reduce(const Communicator& comm, std::size_t bytes, AllReduceAlgo requested) {
  const CommImpl& c = comm.impl();
  if (c.loopback && requested == AllReduceAlgo::kNccl)
    throw Error(ErrorCode::kUnsupported, "algo: nccl cannot run: a loopback world has no NCCL communicator");
  if (c.loopback && requested == AllReduceAlgo::kAuto)
    return detail::select_all_reduce_loopback(c.ar_table, bytes, cap_of(c, AllReduceAlgo::kOneShotLL),
                                              cap_of(c, AllReduceAlgo::kOneShot), cap_of(c, AllReduceAlgo::kTwoShot),
                                              cap_of(c, AllReduceAlgo::kOneShotCE));
  if (requested == AllReduceAlgo::kNccl) return requested;
  if (requested != AllReduceAlgo::kAuto) {
    if (!c.topo.fast_path)
      throw Error(ErrorCode::kUnsupported, std::string("algo: ") + all_reduce_algo_name(requested) +
                                               " needs peer memory, unavailable here: " + c.topo.reason);
    if (bytes > cap_of(c, requested))
      throw Error(ErrorCode::kInvalidArgument, "count: " + std::to_string(bytes) + " bytes exceed the " +
                                                   all_reduce_algo_name(requested) + " workspace of " +
                                                   std::to_string(cap_of(c, requested)) + " bytes (" + cap_option(requested) + ")");
    return requested;
  }
  return select_all_reduce(c.ar_table, bytes, c.topo.fast_path, cap_of(c, AllReduceAlgo::kOneShotLL),
                           cap_of(c, AllReduceAlgo::kOneShot), cap_of(c, AllReduceAlgo::kTwoShot),
                           cap_of(c, AllReduceAlgo::kOneShotCE));
}

AllReduceAlgo all_reduce(const Communicator& comm, const void* input, void* output, std::size_t count, DType dtype,
                         ReduceOp op, cudaStream_t stream, const AllReduceOptions& options) {
  CommImpl& c = comm.impl();
  c.ensure_usable("all_reduce");
  comm.check();
  if (!detail::check_all_reduce_args(input, output, count, dtype, op, options)) return options.algo;
  if (detail::fp8_wire_runs(c, count, dtype, options)) {
    // Opt-in FP8 wire (AllReduceWire::kFp8): the two-shot protocol with e4m3 payloads (all_reduce_fp8wire.cu). A
    // kAuto call it does not fit falls through to the exact choice below; a pinned one threw.
    detail::run_fp8_wire_two_shot(c, input, output, count, dtype, op, options, g_force_generic.load(std::memory_order_relaxed),
                                  stream);
    c.fast_calls++;
    c.zero_copy_calls++;  // pushes the caller's buffer, as the exact two-shot
    c.note_enqueued(stream);
    return AllReduceAlgo::kTwoShot;
  }
  const std::size_t bytes = count * dtype_size(dtype);

  AllReduceAlgo algo = resolve_all_reduce(comm, bytes, options.algo);
  if (log_level() >= LogLevel::kDebug)
    log(LogLevel::kDebug, std::string("all_reduce: ") + std::to_string(bytes) + " bytes " + dtype_name(dtype) + " -> " +
                              all_reduce_algo_name(algo) + (options.algo == AllReduceAlgo::kAuto ? " (auto)" : " (pinned)"));
  if (algo == AllReduceAlgo::kOneShotCE && bytes > static_cast<std::size_t>(detail::kCeMaxChunks) * c.ce_cap)
    throw Error(ErrorCode::kInternal, "copy-engine chunking");

  if (algo == AllReduceAlgo::kNccl) {
    if (!c.topo.fast_path && options.algo == AllReduceAlgo::kAuto) {
      // The one warning line is the communicator's (rank 0, at creation: "fast path off, every op runs
      // through NCCL: <reason>"); per call there is only the counter, and a debug line the first time.
      c.nccl_fallbacks++;
      if (!c.logged_fallback && log_level() >= LogLevel::kDebug) {
        c.logged_fallback = true;
        log(LogLevel::kDebug, "all_reduce runs through NCCL on rank " + std::to_string(c.rank) + ": " + c.topo.reason);
      }
    }
    TPCOMM_NCCL_CHECK(ncclAllReduce(input, output, count, detail::to_nccl(dtype, "dtype"), detail::to_nccl(op, "op"),
                                    c.nccl, stream));
    c.nccl_calls++;
    c.note_enqueued(stream);
    return algo;
  }

  if (algo == AllReduceAlgo::kOneShotCE) {
    run_copy_engine_one_shot(c, input, output, count, bytes, dtype, op, stream);
    c.fast_calls++;
    c.zero_copy_calls++;
    c.note_enqueued(stream);
    return algo;
  }
  const bool ll_large = algo == AllReduceAlgo::kOneShotLL && bytes > detail::kLLSmallMaxBytes;
  const KernelFn kernel = pick_kernel(dtype, op, c.world, algo, ll_large);
  AllReduceParams p{};
  p.input = input;
  p.output = output;
  p.count = count;
  p.nvec = (bytes + 15) / 16;
  p.rank = c.rank;
  p.world = c.world;
  p.size_tag = static_cast<uint32_t>(bytes);
  p.in_aligned = reinterpret_cast<uintptr_t>(input) % 16 == 0;
  p.out_aligned = reinterpret_cast<uintptr_t>(output) % 16 == 0;
  p.peer_ws = reinterpret_cast<char* const*>(c.ws->device_peer_ptrs());
  p.state = c.d_state;
  p.bar.peer_flags = reinterpret_cast<uint64_t* const*>(c.ws->device_peer_signal_pads());
  p.bar.my_flags = reinterpret_cast<uint64_t*>(c.ws->local_signal_pad());
  p.bar.rank = c.rank;
  p.bar.world_size = c.world;
  p.bar.max_ranks = detail::kMaxRanks;
  p.sync = c.sync_ctx();
  switch (algo) {
    case AllReduceAlgo::kOneShotLL:
      p.off = ll_large ? c.off_llp : c.off_ll;
      p.cap = ll_large ? c.llp_cap : c.ll_cap;
      p.unroll = ll_large ? ll_unroll(p.nvec, static_cast<std::size_t>(c.blocks) * c.threads) : 0;
      break;
    case AllReduceAlgo::kOneShot: p.off = c.off_one; p.cap = c.one_cap; break;
    default: p.off = c.off_two; p.cap = c.two_chunk_cap; break;
  }
  if (options.zero_copy) {
    const detail::Registration* r = find_registration(c, input, bytes);
    if (r) {
      p.reg = c.d_regs + r->slot;
      p.reg_offset = reinterpret_cast<uintptr_t>(input) - r->begin;
    } else if (c.capture_depth > 0 && capturing(stream)) {
      const int slot = new_reg_slot(c);
      c.pending_graph.emplace_back(input, slot);
      p.reg = c.d_regs + slot;
      p.reg_offset = 0;
    } else {
      throw Error(ErrorCode::kInvalidArgument,
                  "input: not registered for zero-copy (call register_buffer(), or capture inside a GraphCapture scope)");
    }
    c.zero_copy_calls++;
  } else if (algo == AllReduceAlgo::kOneShot) {
    c.copy_in_calls++;
  } else {
    c.zero_copy_calls++;  // barrier-free one-shot and two-shot push the caller's buffer directly
  }

  // Fixed grids (see ArState): the grid is part of the cross-rank protocol and of the per-block state.
  launch(c, kernel, p, algo == AllReduceAlgo::kOneShotLL && !ll_large ? c.ll_blocks : c.blocks, c.threads, stream);
  c.fast_calls++;
  c.note_enqueued(stream);
  return algo;
}

void register_buffer(const Communicator& comm, void* ptr, std::size_t bytes) {
  CommImpl& c = comm.impl();
  c.ensure_usable("register_buffer");
  TPCOMM_ARG_CHECK(ptr != nullptr, "ptr", "null pointer");
  TPCOMM_ARG_CHECK(bytes > 0, "bytes", "must be positive");
  if (!c.topo.fast_path)
    throw Error(ErrorCode::kUnsupported, "register_buffer: peer memory is unavailable: " + c.topo.reason);
  std::lock_guard<std::mutex> lock(c.mu);
  const int slot = new_reg_slot(c);
  exchange_and_fill(comm, {ptr}, {bytes}, {slot});
  detail::Registration r{reinterpret_cast<uintptr_t>(ptr), reinterpret_cast<uintptr_t>(ptr) + bytes, slot};
  // A new registration replaces any older one it overlaps (the memory was freed and reused).
  auto& regs = c.registrations;
  regs.erase(std::remove_if(regs.begin(), regs.end(), [&](const detail::Registration& o) { return o.begin < r.end && r.begin < o.end; }),
             regs.end());
  regs.push_back(r);
}

GraphCapture::GraphCapture(const Communicator& comm) : comm_(comm) {
  comm.impl().ensure_usable("GraphCapture");
  comm.impl().capture_depth++;
}
GraphCapture::~GraphCapture() { comm_.impl().capture_depth--; }

void register_graph_buffers(const Communicator& comm) {
  CommImpl& c = comm.impl();
  c.ensure_usable("register_graph_buffers");
  std::lock_guard<std::mutex> lock(c.mu);
  std::vector<const void*> ptrs;
  std::vector<std::size_t> bytes;
  std::vector<int> slots;
  for (auto& [p, s] : c.pending_graph) {
    ptrs.push_back(p);
    bytes.push_back(1);
    slots.push_back(s);
  }
  exchange_and_fill(comm, ptrs, bytes, slots);
  c.pending_graph.clear();
}

}  // namespace tpcomm
