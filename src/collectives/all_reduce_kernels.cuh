// All-reduce kernels over the communicator's symmetric workspace. Framework-free: raw pointers, sizes and
// one params struct (passed __grid_constant__). Host dispatch: all_reduce.cu.
//
// Shared invariants
//  * Work unit = one 16-byte vector of the message (V = 16 / sizeof(T) elements); the last vector may be
//    partial. Unaligned caller pointers are read/written element by element (same results, slower).
//  * Reduction: fp32 accumulation over ranks 0..W-1 in that fixed order, one rounding at the end, on the
//    rank(s) that own a vector. All ranks therefore produce bitwise identical results.
//  * Mapping: vector v is handled by the same (block, thread) on every rank (grid-stride with identical
//    grids), which is what lets per-block barriers order the data a block touches.
//  * Workspace halves (one-shot copy-in, two-shot) alternate with BlockState::seq parity. Reusing a half
//    two launches later is safe because launch k+1 on this rank only passes its first barrier after every
//    peer has started launch k+1, i.e. finished launch k on its own stream.
//  * Each block reads its BlockState replica at the start and writes it at the end (fixed grids).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "comm/comm_impl.h"
#include "common/pdl.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/types.h"

namespace tpcomm::detail {

struct AllReduceParams {
  const void* input;
  void* output;
  std::size_t count;      // elements
  std::size_t nvec;       // 16-byte vectors (ceil)
  int rank;
  int world;
  uint32_t size_tag;      // byte count mod 2^32, compared in the barriers
  bool in_aligned;        // input 16-byte aligned
  bool out_aligned;       // output 16-byte aligned
  char* const* peer_ws;   // [world] workspace data bases
  std::size_t off;        // offset of the algorithm's region in the workspace data
  std::size_t cap;        // one-shot: bytes per half; two-shot: bytes per chunk; barrier-free: bytes per slot
  const RankData* reg;    // zero-copy one-shot: peers' input pointers (nullptr = copy-in)
  std::size_t reg_offset; // bytes from each registered pointer to this call's input
  int unroll;             // pipelined barrier-free one-shot: vectors per thread and round (1..4)
  ArState* state;
  device::BlockBarrier bar;
  device::SyncContext sync;
};

// ---- element helpers ---------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
union Vec {
  static constexpr int kN = 16 / sizeof(T);
  uint4 u;
  T e[kN];
};

template <typename T>
__device__ __forceinline__ uint4 load_vec(const T* base, std::size_t v, std::size_t count, bool aligned) {
  constexpr int N = Vec<T>::kN;
  const std::size_t e0 = v * N;
  if (aligned && e0 + N <= count) return *reinterpret_cast<const uint4*>(base + e0);
  Vec<T> r;
  r.u = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (e0 + i < count) r.e[i] = base[e0 + i];
  return r.u;
}

template <typename T>
__device__ __forceinline__ void store_vec(T* base, std::size_t v, std::size_t count, bool aligned, uint4 x) {
  constexpr int N = Vec<T>::kN;
  const std::size_t e0 = v * N;
  if (aligned && e0 + N <= count) {
    *reinterpret_cast<uint4*>(base + e0) = x;
    return;
  }
  Vec<T> r;
  r.u = x;
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (e0 + i < count) base[e0 + i] = r.e[i];
}

// Plain 16-byte accesses: ordering against peers comes from the barriers (bar.sync + st.release.sys /
// ld.acquire.sys), so data accesses need no per-access ordering and the compiler may keep many in flight.
__device__ __forceinline__ void st_v4(void* p, uint4 x) { *reinterpret_cast<uint4*>(p) = x; }
__device__ __forceinline__ uint4 ld_v4_volatile(const void* p) {
  uint4 x;
  asm volatile("ld.volatile.global.v4.b32 {%0,%1,%2,%3}, [%4];" : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w) : "l"(p) : "memory");
  return x;
}
// Peer data after an acquire: bypass L1 (cache at L2 only).
__device__ __forceinline__ uint4 ld_v4_cg(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }

// Programmatic dependent launch (common/pdl.h): every kernel calls griddep_wait() before touching ArState,
// inputs or the workspace, so the protocol above is unchanged; what overlaps is the launch itself.

template <typename T, ReduceOp OP>
struct Acc {
  static constexpr int kN = Vec<T>::kN;
  float a[kN];
  __device__ __forceinline__ void set(uint4 x) {
    Vec<T> v;
    v.u = x;
#pragma unroll
    for (int i = 0; i < kN; ++i) a[i] = to_float(v.e[i]);
  }
  __device__ __forceinline__ void add(uint4 x) {
    Vec<T> v;
    v.u = x;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const float f = to_float(v.e[i]);
      if constexpr (OP == ReduceOp::kSum) a[i] += f;
      else if constexpr (OP == ReduceOp::kMax) a[i] = fmaxf(a[i], f);
      else a[i] = fminf(a[i], f);
    }
  }
  __device__ __forceinline__ uint4 get() const {
    Vec<T> v;
#pragma unroll
    for (int i = 0; i < kN; ++i) v.e[i] = from_float<T>(a[i]);
    return v.u;
  }
};

// ---- launch bookkeeping -------------------------------------------------------------------------------
// Each block owns its replica of the counters (see ArState): read at the start, written by thread 0 at
// the end. No atomics, no fences: the next launch on the stream starts after this one completes (PDL's
// griddepcontrol.wait included).
template <typename State>  // BlockState, LlpState
__device__ __forceinline__ void finish_block(State* bs, State next) {
  __syncthreads();
  if (threadIdx.x == 0) *bs = next;
}

// Start of every all-reduce kernel: wait for the predecessor grid (PDL), let the next one launch, and
// return this thread's place in the fixed grid-stride mapping.
struct GridPos {
  std::size_t stride, tid;
};
__device__ __forceinline__ GridPos begin_launch() {
  griddep_wait();
  griddep_launch_dependents();
  return {static_cast<std::size_t>(gridDim.x) * blockDim.x, static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x};
}

// Compile-time world size where it pays (W = 2 is the common TP=2 case); kW = 0 means "read p.world".
template <int kW>
struct World {
  static constexpr int kMax = kW > 0 ? kW : kMaxRanks;
  static constexpr int kUnroll = kW == 2 ? 4 : 2;  // 16-byte vectors in flight per thread and rank
  template <typename P>
  __device__ __forceinline__ static int size(const P& p) { return kW > 0 ? kW : p.world; }
};

// Reduces, for each u < U with v = base + u*stride < limit, vector v over ranks 0..W-1 in that order
// (the fixed order that makes results bitwise identical on all ranks): load(r, u, v) returns rank r's copy
// (u is a compile-time index after unrolling, so register arrays indexed by it stay in registers).
// All U loads of a rank are issued before any is used, so U vectors per rank are in flight.
template <typename T, ReduceOp OP, int kW, int U, typename Load>
__device__ __forceinline__ void reduce_ranks(Acc<T, OP> (&acc)[U], int W, std::size_t base, std::size_t stride,
                                             std::size_t limit, Load load) {
#pragma unroll
  for (int r = 0; r < World<kW>::kMax; ++r) {
    if (r >= W) break;
    uint4 x[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (base + u * stride < limit) x[u] = load(r, u, base + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * stride >= limit) continue;
      if (r == 0) acc[u].set(x[u]);
      else acc[u].add(x[u]);
    }
  }
}

// Writes the reduced vectors (v = base + u*stride < limit) to out; store(v, value) may also forward them.
template <typename T, ReduceOp OP, int U, typename Store>
__device__ __forceinline__ void store_reduced(const Acc<T, OP> (&acc)[U], std::size_t base, std::size_t stride,
                                              std::size_t limit, Store store) {
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (base + u * stride < limit) store(base + u * stride, acc[u].get());
}

// ---- barrier-free one-shot (flag in data) -------------------------------------------------------------
// Two kernels, each with its own workspace region, grid and BlockState counters, same protocol:
//  * all_reduce_one_shot_ll (messages <= kLLSmallMaxBytes, CommImpl::ll_blocks): one pass, lowest latency.
//  * all_reduce_one_shot_ll_pipelined (larger, CommImpl::blocks): rounds, the next pushed before the
//    current one is polled; own vectors stay in registers (own slot unused).
// Buffer layout per rank: 3 buffers x W slots x cap bytes; slot s holds rank s's message. Every 32-bit
// word of an empty slot is 0x80000000; writers turn -0.0 inputs into +0.0 so no payload word can equal it
// (for 16-bit types, a word would need a -0.0 in its upper half). Peers are at most one launch ahead
// (finishing launch k needs everyone's data for k; this holds for the subsequence of launches of either
// kernel too), so at launch k the buffer of launch k-1 is free to clear, and it is clear again (kernel
// boundaries order the clearing stores before our next pushes) before anyone can reach launch k+2 and
// write into it.
// No release/fence on the data path: a release drains the SM's NVLink queue (bench/NOTES.md), while here
// each vector carries its own validity.
constexpr uint32_t kEmptyWord = 0x80000000u;
template <typename T>
__device__ __forceinline__ uint4 sanitize(uint4 x) {
  uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(T) == 4) {
      if (w[i] == 0x80000000u) w[i] = 0;
    } else {
      if ((w[i] & 0xFFFFu) == 0x8000u) w[i] &= 0xFFFF0000u;
      if ((w[i] >> 16) == 0x8000u) w[i] &= 0x0000FFFFu;
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ bool vec_ready(uint4 x) {
  return x.x != kEmptyWord && x.y != kEmptyWord && x.z != kEmptyWord && x.w != kEmptyWord;
}

// Polls one 16-byte vector until it holds data and returns it; on timeout (reported, naming `peer`) or
// abort returns an empty vector (vec_ready() false). Returned by value, so callers' arrays stay in registers.
// static: this header is included by more than one translation unit (all_reduce.cu, all_reduce_fp8wire.cu).
static __device__ __noinline__ uint4 poll_vec(const AllReduceParams& p, const char* src, int peer) {
  const uint64_t start = device::global_timer_ns();
  for (uint32_t spin = 1;; ++spin) {
    const uint4 x = ld_v4_volatile(src);
    if (vec_ready(x)) return x;
    if ((spin & 63u) == 0) {
      if (device::aborted(p.sync)) break;
      if (device::global_timer_ns() - start > p.sync.timeout_ns) {
        device::report_error(p.sync, device::kDevTimeout, peer);
        break;
      }
    }
  }
  return make_uint4(kEmptyWord, kEmptyWord, kEmptyWord, kEmptyWord);
}

// The three-buffer ring of a barrier-free kernel, from its BlockState counters: this launch's buffer, the
// previous launch's (to clear) and how many vectors per slot that launch wrote.
struct LlRing {
  int idx, prev;
  std::size_t prev_nvec;
};
__device__ __forceinline__ LlRing ll_ring(uint32_t seq, const uint32_t (&used)[3]) {
  const int idx = static_cast<int>(seq % 3);
  const int prev = (idx + 2) % 3;
  return {idx, prev, used[prev]};
}
__device__ __forceinline__ void ll_ring_advance(uint32_t& seq, uint32_t (&used)[3], const LlRing& r, std::size_t nvec) {
  used[r.prev] = 0;  // cleared by this launch
  used[r.idx] = static_cast<uint32_t>(nvec);
  seq += 1;
}

template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_one_shot_ll_pipelined(const __grid_constant__ AllReduceParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  constexpr int U = Wd::kUnroll;
  const int W = Wd::size(p);
  LlpState* ls = &p.state->llp[blockIdx.x];
  LlpState st = *ls;
  const LlRing ring = ll_ring(st.seq, st.used);
  const int idx = ring.idx, prev = ring.prev;
  const std::size_t prev_nvec = ring.prev_nvec;
  const std::size_t buf_bytes = static_cast<std::size_t>(W) * p.cap;
  const T* in = static_cast<const T*>(p.input);
  const char* mine = p.peer_ws[p.rank] + p.off + idx * buf_bytes;    // peers' vectors arrive here
  char* prev_buf = p.peer_ws[p.rank] + p.off + prev * buf_bytes;    // launch k-1's buffer, cleared here
  const uint4 empty = make_uint4(kEmptyWord, kEmptyWord, kEmptyWord, kEmptyWord);

  // Round r = vectors r * tile + tid + u * stride (u < uc) of every rank's message; the host picks uc
  // (p.unroll, 1..U) so that mid-size messages still get several rounds.
  const int uc = p.unroll < 1 ? 1 : (p.unroll < U ? p.unroll : U);  // U: this instantiation's registers
  const std::size_t tile = stride * uc;
  const std::size_t rounds = (p.nvec + tile - 1) / tile;
  const std::size_t clear_rounds = (prev_nvec + tile - 1) / tile;
  auto load_push = [&](std::size_t r, uint4 (&x)[U]) {
    const std::size_t base = r * tile + tid;
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (u < uc && base + u * stride < p.nvec) x[u] = sanitize<T>(load_vec(in, base + u * stride, p.count, p.in_aligned));
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q) {
      if (q >= W) break;
      if (q == p.rank) continue;
      char* dst = p.peer_ws[q] + p.off + idx * buf_bytes + p.rank * p.cap;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < uc && base + u * stride < p.nvec) st_v4(dst + (base + u * stride) * 16, x[u]);
    }
  };
  auto clear = [&](std::size_t r) {  // launch k-1's vectors of round r, in every peer's slot
    const std::size_t base = r * tile + tid;
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q) {
      if (q >= W) break;
      if (q == p.rank) continue;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < uc && base + u * stride < prev_nvec) st_v4(prev_buf + q * p.cap + (base + u * stride) * 16, empty);
    }
  };

  // Software pipeline: round r+1 is loaded and pushed before round r is polled, so the link always has
  // the next round queued while this thread waits for its peers' copies of round r.
  uint4 cur[U], nxt[U];
  if (rounds > 0) load_push(0, cur);
  bool ok = true;
  for (std::size_t r = 0; r < rounds; ++r) {
    if (r + 1 < rounds) load_push(r + 1, nxt);
    const std::size_t base = r * tile + tid;
    Acc<T, OP> acc[U];
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q) {  // fixed rank order: bitwise identical results on every rank
      if (q >= W || !ok) break;
      uint4 x[U];
      if (q == p.rank) {
#pragma unroll
        for (int u = 0; u < U; ++u) x[u] = cur[u];
      } else {
        const char* src = mine + q * p.cap;
#pragma unroll
        for (int u = 0; u < U; ++u)  // all U loads issued before any is checked
          if (u < uc && base + u * stride < p.nvec) x[u] = ld_v4_volatile(src + (base + u * stride) * 16);
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (ok && u < uc && base + u * stride < p.nvec && !vec_ready(x[u])) {
            x[u] = poll_vec(p, src + (base + u * stride) * 16, q);
            ok = vec_ready(x[u]);
          }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= uc || base + u * stride >= p.nvec) continue;
        if (q == 0) acc[u].set(x[u]);
        else acc[u].add(x[u]);
      }
    }
    if (ok)
      store_reduced<T, OP, U>(acc, base, stride, base + uc * stride < p.nvec ? base + uc * stride : p.nvec,
                              [&](std::size_t v, uint4 x) { store_vec(static_cast<T*>(p.output), v, p.count, p.out_aligned, x); });
    clear(r);
#pragma unroll
    for (int u = 0; u < U; ++u) cur[u] = nxt[u];
  }
  for (std::size_t r = rounds; r < clear_rounds; ++r) clear(r);
  ll_ring_advance(st.seq, st.used, ring, p.nvec);
  finish_block(ls, st);
}

template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_one_shot_ll(const __grid_constant__ AllReduceParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  const int W = Wd::size(p);
  BlockState* bs = &p.state->blocks[blockIdx.x];
  BlockState st = *bs;
  const LlRing ring = ll_ring(st.ll_seq, st.ll_used);
  const int idx = ring.idx, prev = ring.prev;
  const std::size_t prev_nvec = ring.prev_nvec;
  const std::size_t buf_bytes = static_cast<std::size_t>(W) * p.cap;
  const T* in = static_cast<const T*>(p.input);

  // 1. Push my vectors into slot `rank` of buffer idx on every rank.
  for (std::size_t v = tid; v < p.nvec; v += stride) {
    const uint4 x = sanitize<T>(load_vec(in, v, p.count, p.in_aligned));
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q) {
      if (q >= W) break;
      st_v4(p.peer_ws[q] + p.off + idx * buf_bytes + p.rank * p.cap + v * 16, x);
    }
  }
  // 2. Poll my own buffer until every rank's vector arrived, reduce in rank order.
  const char* mine = p.peer_ws[p.rank] + p.off + idx * buf_bytes;
  bool ok = true;
  for (std::size_t v = tid; v < p.nvec && ok; v += stride) {
    uint4 x[Wd::kMax];
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q)
      if (q < W) x[q] = ld_v4_volatile(mine + q * p.cap + v * 16);
    Acc<T, OP> acc;
#pragma unroll
    for (int q = 0; q < Wd::kMax; ++q) {
      if (q >= W) break;
      if (!vec_ready(x[q]) && !vec_ready(x[q] = poll_vec(p, mine + q * p.cap + v * 16, q))) {
        ok = false;
        break;
      }
      if (q == 0) acc.set(x[q]);
      else acc.add(x[q]);
    }
    if (ok) store_vec(static_cast<T*>(p.output), v, p.count, p.out_aligned, acc.get());
  }
  // 3. Clear the previous launch's buffer (every slot, as many vectors as that launch wrote).
  char* prev_buf = p.peer_ws[p.rank] + p.off + prev * buf_bytes;
  const uint4 empty = make_uint4(kEmptyWord, kEmptyWord, kEmptyWord, kEmptyWord);
  for (std::size_t i = tid; i < prev_nvec * W; i += stride) {
    const std::size_t slot = i / prev_nvec, v = i % prev_nvec;
    st_v4(prev_buf + slot * p.cap + v * 16, empty);
  }
  ll_ring_advance(st.ll_seq, st.ll_used, ring, p.nvec);
  finish_block(bs, st);
}

// ---- one-shot with one barrier -------------------------------------------------------------------------
// Copy-in (push): each rank writes its input into slot[my rank] of every peer's workspace half (seq
// parity), one barrier, then reduces locally: its own input plus the W-1 received slots. Remote traffic is
// writes only, (W-1)*bytes per rank, and nothing is copied twice. Zero-copy (p.reg != nullptr): one
// barrier, read every peer's registered input directly, and a second barrier keeps each input alive until
// all peers have read it.
template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_one_shot(const __grid_constant__ AllReduceParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  constexpr int U = Wd::kUnroll;
  const int W = Wd::size(p);
  BlockState* bs = &p.state->blocks[blockIdx.x];
  BlockState st = *bs;
  const std::size_t half = p.off + (st.seq & 1u) * static_cast<std::size_t>(W) * p.cap;
  const T* in = static_cast<const T*>(p.input);
  const bool zero_copy = p.reg != nullptr;

  if (!zero_copy) {
    // Pipelined push: iteration it+1's input is loaded and pushed (posted NVLink writes) before waiting
    // for iteration it's peers and reducing it, so local reduction overlaps the link. One split barrier
    // per iteration (arrive after the push, wait before the reduce); the own input stays in registers
    // between its push and its reduce.
    // Iterations of U vectors per thread (4 MiB per iteration with 128 x 512 threads at W = 2): smaller
    // iterations measured slower at 2-8 MiB (each pays a load + link + flag latency chain).
    constexpr int ur = U;
    const std::size_t tile = stride * ur;
    const std::size_t iters = (p.nvec + tile - 1) / tile;
    const char* mine = p.peer_ws[p.rank] + half;
    uint4 cur[U], nxt[U];
    auto load_push = [&](std::size_t it, uint4 (&x)[U]) {
      const std::size_t base = it * tile + tid;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (u < ur && base + u * stride < p.nvec) x[u] = load_vec(in, base + u * stride, p.count, p.in_aligned);
#pragma unroll
      for (int q = 0; q < Wd::kMax; ++q) {
        if (q >= W) break;
        if (q == p.rank) continue;
        char* dst = p.peer_ws[q] + half + p.rank * p.cap;
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (u < ur && base + u * stride < p.nvec) st_v4(dst + (base + u * stride) * 16, x[u]);
      }
    };
    const uint32_t e0 = st.epoch;
    load_push(0, cur);
    device::block_arrive(p.bar, e0 + 1, p.size_tag);
    bool ok = true;
    for (std::size_t it = 0; it < iters && ok; ++it) {
      if (it + 1 < iters) load_push(it + 1, nxt);
      ok = device::block_wait(p.sync, p.bar, e0 + 1 + static_cast<uint32_t>(it), p.size_tag);
      if (!ok) break;
      const std::size_t base = it * tile + tid;
      Acc<T, OP> acc[U];
      reduce_ranks<T, OP, kW, U>(acc, W, base, stride, p.nvec, [&](int r, int u, std::size_t v) {
        return r == p.rank ? cur[u] : ld_v4_cg(mine + r * p.cap + v * 16);
      });
      store_reduced<T, OP, U>(acc, base, stride, p.nvec,
                              [&](std::size_t v, uint4 x) { store_vec(static_cast<T*>(p.output), v, p.count, p.out_aligned, x); });
      if (it + 1 < iters) {
        device::block_arrive(p.bar, e0 + 2 + static_cast<uint32_t>(it), p.size_tag);
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
      }
    }
    st.epoch = e0 + static_cast<uint32_t>(iters);
    st.seq += 1;
    finish_block(bs, st);
    return;
  }
  bool ok = device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);
  if (ok && zero_copy) {  // a graph replayed before register_graph_buffers() has null peer pointers
    if (threadIdx.x < W && p.reg->ptrs[threadIdx.x] == nullptr) device::report_error(p.sync, device::kDevNotRegistered, threadIdx.x);
    ok = __syncthreads_and(!device::aborted(p.sync));
  }
  if (ok) {
    for (std::size_t base = tid; base < p.nvec; base += stride * U) {
      Acc<T, OP> acc[U];
      reduce_ranks<T, OP, kW, U>(acc, W, base, stride, p.nvec, [&](int r, int, std::size_t v) {
        const T* src = reinterpret_cast<const T*>(static_cast<const char*>(p.reg->ptrs[r]) + p.reg_offset);
        return (v + 1) * 16 > p.count * sizeof(T) ? load_vec(src, v, p.count, true)  // partial last vector
                                                  : ld_v4_cg(src + v * Vec<T>::kN);
      });
      store_reduced<T, OP, U>(acc, base, stride, p.nvec,
                              [&](std::size_t v, uint4 x) { store_vec(static_cast<T*>(p.output), v, p.count, p.out_aligned, x); });
    }
    if (zero_copy) device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);
  }
  st.seq += 1;
  finish_block(bs, st);
}

// ---- two-shot: reduce-scatter + all-gather, both pushed ------------------------------------------------
// The message is split into W chunks of `chunk` vectors; rank r owns chunk r. Per parity half, each rank's
// region holds W receive slots (one per source rank) and W gather slots (one per owner), `cap` bytes each.
//  1. push chunk c of my input into slot[my rank] of rank c       barrier
//  2. reduce my chunk from my W slots (local reads), write it to my output and push it into gather[r] of
//     every peer                                                  barrier
//  3. copy the other owners' chunks from my gather slots into my output.
// Stores to peers are posted writes (NVLink), which move data faster than remote reads.
template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_two_shot(const __grid_constant__ AllReduceParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  constexpr int U = Wd::kUnroll;
  const int W = Wd::size(p);
  BlockState* bs = &p.state->blocks[blockIdx.x];
  BlockState st = *bs;
  const std::size_t chunk = (p.nvec + W - 1) / W;
  const std::size_t region = p.off + (st.seq & 1u) * 2 * static_cast<std::size_t>(W) * p.cap;
  const T* in = static_cast<const T*>(p.input);
  T* out = static_cast<T*>(p.output);

  for (std::size_t base = tid; base < chunk; base += stride * U) {
#pragma unroll
    for (int c = 0; c < Wd::kMax; ++c) {
      if (c >= W) break;
      uint4 x[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::size_t j = base + u * stride, v = c * chunk + j;
        if (j < chunk && v < p.nvec) x[u] = load_vec(in, v, p.count, p.in_aligned);
      }
      char* dst = p.peer_ws[c] + region + p.rank * p.cap;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::size_t j = base + u * stride, v = c * chunk + j;
        if (j < chunk && v < p.nvec) st_v4(dst + j * 16, x[u]);
      }
    }
  }
  bool ok = device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);
  if (ok) {
    const char* slots = p.peer_ws[p.rank] + region;
    // j indexes my chunk; it ends at the chunk or at the message, whichever comes first.
    const std::size_t own = p.rank * chunk;
    const std::size_t jlimit = own >= p.nvec ? 0 : (p.nvec - own < chunk ? p.nvec - own : chunk);
    for (std::size_t base = tid; base < jlimit; base += stride * U) {
      Acc<T, OP> acc[U];
      reduce_ranks<T, OP, kW, U>(acc, W, base, stride, jlimit,
                                 [&](int r, int, std::size_t j) { return ld_v4_cg(slots + r * p.cap + j * 16); });
      store_reduced<T, OP, U>(acc, base, stride, jlimit, [&](std::size_t j, uint4 x) {
        store_vec(out, own + j, p.count, p.out_aligned, x);
#pragma unroll
        for (int q = 0; q < Wd::kMax; ++q) {
          if (q >= W) break;
          if (q != p.rank) st_v4(p.peer_ws[q] + region + (W + p.rank) * p.cap + j * 16, x);
        }
      });
    }
    ok = device::block_barrier(p.sync, p.bar, ++st.epoch, p.size_tag);
  }
  if (ok) {
    const char* gather = p.peer_ws[p.rank] + region + static_cast<std::size_t>(W) * p.cap;
    for (std::size_t base = tid; base < chunk; base += stride * U) {
#pragma unroll
      for (int c = 0; c < Wd::kMax; ++c) {
        if (c >= W) break;
        if (c == p.rank) continue;
        uint4 x[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const std::size_t j = base + u * stride, v = c * chunk + j;
          if (j < chunk && v < p.nvec) x[u] = ld_v4_cg(gather + c * p.cap + j * 16);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const std::size_t j = base + u * stride, v = c * chunk + j;
          if (j < chunk && v < p.nvec) store_vec(out, v, p.count, p.out_aligned, x[u]);
        }
      }
    }
  }
  st.seq += 1;
  finish_block(bs, st);
}

// ---- copy-engine one-shot ----------------------------------------------------------------------------
// Per call, on the caller's stream: ce_ready (1 block: reset this rank's arrival flags, then a cross-rank
// barrier, so every peer has finished reducing the previous call and its slot for us is free) -> fork to the
// communicator's copy stream: for each 4 MiB chunk, cudaMemcpyAsync of the chunk into slot[my rank] of every
// peer, then cuStreamWriteValue32(peer flag[chunk][my rank] = 1) -> meanwhile ce_reduce on the caller's
// stream waits for each chunk's flags and reduces it (own input + W-1 slots) -> join.
// Flags only ever go 0 -> 1 (copy stream) -> 0 (ce_ready of the next call on the receiver), so the written
// value is a constant and the whole sequence can be captured in a CUDA graph.
struct CeParams {
  const void* input;
  void* output;
  std::size_t count;
  std::size_t nvec;
  std::size_t chunk_vecs;
  int nchunks;
  int rank;
  int world;
  bool in_aligned;
  bool out_aligned;
  const char* slots;   // this rank's copy-engine region: W slots of `cap` bytes
  std::size_t cap;
  uint32_t* flags;     // this rank's arrival flags [kCeMaxChunks][kMaxRanks]
  ArState* state;
  device::BlockBarrier bar;
  device::SyncContext sync;
  uint32_t size_tag;
};

static __global__ void __launch_bounds__(64) all_reduce_ce_ready(const __grid_constant__ CeParams p) {  // static: see poll_vec
  griddep_wait();
  griddep_launch_dependents();
  for (int i = threadIdx.x; i < kCeMaxChunks * kMaxRanks; i += blockDim.x) p.flags[i] = 0;
  BlockState* bs = &p.state->blocks[kCeBarrierRow];
  BlockState st = *bs;
  // The barrier on flag row kCeBarrierRow (not blockIdx.x): this row belongs to this kernel alone.
  __syncthreads();
  bool ok = true;
  const int q = threadIdx.x;
  const uint32_t epoch = st.epoch + 1;
  if (q < p.world) {
    const uint64_t mine = (static_cast<uint64_t>(p.size_tag) << 32) | epoch;
    device::st_release_sys(p.bar.peer_flags[q] + kCeBarrierRow * p.bar.max_ranks + p.rank, mine);
    const uint64_t* slot = p.bar.my_flags + kCeBarrierRow * p.bar.max_ranks + q;
    ok = device::wait_until(p.sync, slot, q, [epoch](uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v) - epoch) >= 0; });
    if (ok) {
      const uint64_t v = device::ld_acquire_sys(slot);
      if (static_cast<uint32_t>(v) == epoch && static_cast<uint32_t>(v >> 32) != p.size_tag)
        device::report_error(p.sync, device::kDevSizeMismatch, q, static_cast<uint32_t>(v >> 32));
    }
  }
  __syncthreads();
  st.epoch = epoch;
  if (threadIdx.x == 0) *bs = st;
}

template <typename T, ReduceOp OP, int kW>
__global__ void __launch_bounds__(512) all_reduce_ce_reduce(const __grid_constant__ CeParams p) {
  const GridPos gp = begin_launch();
  const std::size_t stride = gp.stride, tid = gp.tid;
  using Wd = World<kW>;
  constexpr int U = Wd::kUnroll;
  const int W = Wd::size(p);
  const T* in = static_cast<const T*>(p.input);
  for (int k = 0; k < p.nchunks; ++k) {
    bool ok = true;
    const int q = threadIdx.x;
    if (q < W)  // q == rank: my own copies of this chunk are done (in place: its input may be overwritten)
      ok = device::wait_until(p.sync, p.flags + k * kMaxRanks + q, q, [](uint32_t v) { return v == 1u; });
    if (!__syncthreads_and(ok) || device::aborted(p.sync)) return;
    const std::size_t v0 = static_cast<std::size_t>(k) * p.chunk_vecs;
    const std::size_t v1 = v0 + p.chunk_vecs < p.nvec ? v0 + p.chunk_vecs : p.nvec;
    for (std::size_t base = v0 + tid; base < v1; base += stride * U) {
      Acc<T, OP> acc[U];
      reduce_ranks<T, OP, kW, U>(acc, W, base, stride, v1, [&](int r, int, std::size_t v) {
        return r == p.rank ? load_vec(in, v, p.count, p.in_aligned) : ld_v4_cg(p.slots + r * p.cap + v * 16);
      });
      store_reduced<T, OP, U>(acc, base, stride, v1,
                              [&](std::size_t v, uint4 x) { store_vec(static_cast<T*>(p.output), v, p.count, p.out_aligned, x); });
    }
  }
}

}  // namespace tpcomm::detail
