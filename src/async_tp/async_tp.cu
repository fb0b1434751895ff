// Host side of the async-TP ops: engine dispatch, the decomposed pipeline (cuBLASLt GEMMs per chunk with the
// transfers on a side stream), the native engine's feeding (transfers + chunk signals around one persistent GEMM),
// the unfused NCCL + cuBLASLt path, workspace management. The pure planning logic is in plan.cpp.
//
// Cross-rank schedule (the same on every rank, so no rank waits on work a peer has not enqueued yet):
//  AG: start barrier (every peer finished the previous call, so its staging slots are free) -> the side stream pushes
//      this rank's shard (and sharded scales) to peers in rotated order r+1, r+2, ... each followed by a chunk signal
//      in the peer's pad; the main stream multiplies its own shard at once, then for s = 1..W-1 waits for the chunk of
//      rank r-s (the first to arrive) and multiplies it, writing straight into that chunk's rows of the output.
//  RS: start barrier -> the main stream computes the peers' output chunks first (r+1, r+2, ...; each pushed to its
//      owner by the side stream as soon as its GEMM ends) and its own chunk last, then waits for the W-1 partials of
//      its chunk and sums all W in rank order 0..W-1 in fp32, rounding once.
//  Signals are 0/1 words reset by their consumer; they are written again only after the next call's start barrier.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "async_tp/kernels.cuh"
#include "async_tp/native_gemm.h"
#include "async_tp/plan.h"
#include "async_tp/state.h"
#include "comm/comm_impl.h"
#include "common/check.h"
#include "tpcomm/async_tp.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/log.h"

namespace tpcomm {
namespace detail {

AsyncTpState::~AsyncTpState() {
  cudaSetDevice(device);
  ws.reset();
  lt.reset();
  if (d_epoch) cudaFree(d_epoch);
  if (d_counters) cudaFree(d_counters);
  if (scratch) cudaFree(scratch);
  if (tmp) cudaFree(tmp);
  for (cudaEvent_t e : ev_chunk)
    if (e) cudaEventDestroy(e);
  if (ev_fork) cudaEventDestroy(ev_fork);
  if (ev_join) cudaEventDestroy(ev_join);
  if (side) cudaStreamDestroy(side);
}

namespace {

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x, std::size_t a = kAlign) { return (x + a - 1) / a * a; }

bool capturing(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &st) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return st != cudaStreamCaptureStatusNone;
}

AsyncTpState& state(const Communicator& comm) {
  CommImpl& c = comm.impl();
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.atp) return *c.atp;
  auto s = std::make_shared<AsyncTpState>();
  s->device = c.device;
  s->rank = c.rank;
  s->world = c.world;
  TPCOMM_CUDA_CHECK(cudaSetDevice(c.device));
  TPCOMM_CUDA_CHECK(cudaMalloc(&s->d_epoch, sizeof(uint32_t)));
  TPCOMM_CUDA_CHECK(cudaMemset(s->d_epoch, 0, sizeof(uint32_t)));
  TPCOMM_CUDA_CHECK(cudaMalloc(&s->d_counters, sizeof(uint32_t) * kAtpMaxRanks));
  TPCOMM_CUDA_CHECK(cudaMemset(s->d_counters, 0, sizeof(uint32_t) * kAtpMaxRanks));
  // The transfers' stream gets the highest priority: a chunk copy or push kernel queued behind GEMM blocks would
  // delay every later chunk (PyTorch's _async_input_mm feeds its signals from a priority -1 stream too).
  int lo = 0, hi = 0;
  TPCOMM_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  TPCOMM_CUDA_CHECK(cudaStreamCreateWithPriority(&s->side, cudaStreamNonBlocking, hi));
  TPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&s->ev_fork, cudaEventDisableTiming));
  TPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&s->ev_join, cudaEventDisableTiming));
  for (cudaEvent_t& e : s->ev_chunk) TPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&s->sm_count, cudaDevAttrMultiProcessorCount, c.device));
  s->lt = std::make_unique<LtGemm>(c.device);
  // Load this file's kernels now: with lazy module loading, a first launch in the middle of a call could wait for
  // a peer's kernel that is spinning on this rank (one context: loopback worlds, create_local).
  const void* kernels[] = {reinterpret_cast<const void*>(atp_barrier_kernel), reinterpret_cast<const void*>(atp_wait_kernel),
                           reinterpret_cast<const void*>(atp_push_kernel), reinterpret_cast<const void*>(atp_copy2d_kernel),
                           reinterpret_cast<const void*>(atp_rs_reduce_kernel<__nv_bfloat16>),
                           reinterpret_cast<const void*>(atp_rs_reduce_kernel<__half>),
                           reinterpret_cast<const void*>(atp_rs_reduce_kernel<float>),
                           reinterpret_cast<const void*>(atp_transpose_kernel<__nv_bfloat16>),
                           reinterpret_cast<const void*>(atp_transpose_kernel<__half>),
                           reinterpret_cast<const void*>(atp_transpose_kernel<float>)};
  for (const void* k : kernels) {
    cudaFuncAttributes attr;
    TPCOMM_CUDA_CHECK(cudaFuncGetAttributes(&attr, k));
  }
  c.atp = s;
  return *c.atp;
}

// Collective when it grows (every rank makes the same call with the same shapes, so all grow at the same call).
void ensure_workspace(const Communicator& comm, AsyncTpState& s, std::size_t bytes, cudaStream_t stream) {
  if (s.ws && s.ws->bytes() >= bytes) return;
  if (capturing(stream))
    throw Error(ErrorCode::kInvalidState,
                "async TP: the staging workspace must grow to " + std::to_string(bytes) +
                    " bytes, which cannot happen during CUDA-graph capture; call tpcomm::reserve_async_tp() (or run the op "
                    "once eagerly) before capturing");
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(s.side));
  comm.host_barrier();  // no peer still reads or writes the old buffer
  s.ws.reset();
  const std::size_t unit = std::size_t(2) << 20;
  s.ws = SymmetricBuffer::allocate(comm, (bytes + unit - 1) / unit * unit, kAtpPadBytes);
  TPCOMM_CUDA_CHECK(cudaMemset(s.d_epoch, 0, sizeof(uint32_t)));  // the new pad's barrier flags are zero
  TPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
  comm.host_barrier();
}

void ensure_scratch(AsyncTpState& s, std::size_t bytes, cudaStream_t stream) {
  s.scratch_used = 0;
  if (s.scratch_bytes >= bytes) return;
  if (capturing(stream))
    throw Error(ErrorCode::kInvalidState,
                "async TP: the scale scratch must grow to " + std::to_string(bytes) +
                    " bytes, which cannot happen during CUDA-graph capture; call tpcomm::reserve_async_tp() (or run the op "
                    "once eagerly) before capturing");
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (s.scratch) TPCOMM_CUDA_CHECK(cudaFree(s.scratch));
  s.scratch = nullptr;
  s.scratch_bytes = 0;
  const std::size_t cap = align_up(bytes, std::size_t(1) << 20);
  TPCOMM_CUDA_CHECK(cudaMalloc(&s.scratch, cap));
  s.scratch_bytes = cap;
}

uint32_t hash_combine(uint32_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint32_t>(v >> (8 * i)) & 0xFF;
    h *= 16777619u;
  }
  return h;
}

void launch_barrier(CommImpl& c, AsyncTpState& s, uint32_t tag, cudaStream_t stream) {
  AtpBarrierParams p{};
  p.ctx = c.sync_ctx();
  p.bar.peer_flags = reinterpret_cast<uint64_t* const*>(s.ws->device_peer_signal_pads());
  p.bar.my_flags = reinterpret_cast<uint64_t*>(s.ws->local_signal_pad());
  p.bar.rank = c.rank;
  p.bar.world_size = c.world;
  p.bar.max_ranks = kAtpMaxRanks;
  p.epoch = s.d_epoch;
  p.tag = tag;
  atp_barrier_kernel<<<1, 32, 0, stream>>>(p);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

void launch_wait(CommImpl& c, uint32_t* signals, const int* idx, int count, cudaStream_t stream) {
  if (count == 0) return;
  AtpWaitParams p{};
  p.ctx = c.sync_ctx();
  p.signals = signals;
  p.count = count;
  for (int i = 0; i < count; ++i) {
    p.index[i] = idx[i];
    p.peer[i] = idx[i];
  }
  atp_wait_kernel<<<1, 32, 0, stream>>>(p);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

// SM transport: 16 CTAs of 512 threads move a chunk at close to NVLink rate while leaving the other SMs to the GEMM.
constexpr int kPushCtas = 16;
constexpr int kPushThreads = 512;

void push(AsyncTpState& s, AsyncTpTransport t, void* dst, const void* src, std::size_t bytes, uint32_t* signal, int slot,
          cudaStream_t stream) {
  if (t == AsyncTpTransport::kSm) {
    AtpPushParams p{};
    p.src = static_cast<const uint4*>(src);
    p.dst = static_cast<uint4*>(dst);
    p.vecs = bytes / 16;
    p.tail = static_cast<int>(bytes % 16);
    p.src_tail = static_cast<const uint8_t*>(src) + p.vecs * 16;
    p.dst_tail = static_cast<uint8_t*>(dst) + p.vecs * 16;
    p.counter = s.d_counters + slot;
    p.signal = signal;
    atp_push_kernel<<<kPushCtas, kPushThreads, 0, stream>>>(p);
    TPCOMM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  TPCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  // cuStreamWriteValue32 (default flags) fences before the write: the peer sees the data before the signal.
  stream_write_value32(stream, signal, 1u);
}

// Scale slices cuBLASLt can read: a pointer used as is when it is 16-byte aligned and dense, else a copy in the
// scratch arena (one batched copy kernel per chunk, flushed before its GEMMs).
struct SliceBatch {
  AsyncTpState& s;
  AtpCopy2dParams p{};
  explicit SliceBatch(AsyncTpState& st) : s(st) { p.count = 0; }
  const float* get(const float* src, int64_t rows, int64_t cols, int64_t src_ld, cudaStream_t stream) {
    const bool dense = rows == 1 || src_ld == cols;
    if (dense && reinterpret_cast<uintptr_t>(src) % 16 == 0) return src;
    const std::size_t bytes = align_up(static_cast<std::size_t>(rows * cols) * sizeof(float));
    if (s.scratch_used + bytes > s.scratch_bytes)
      throw Error(ErrorCode::kInternal, "async TP: scale scratch too small (" + std::to_string(s.scratch_bytes) + " bytes)");
    float* dst = reinterpret_cast<float*>(s.scratch + s.scratch_used);
    s.scratch_used += bytes;
    if (p.count == AtpCopy2dParams::kMax) flush(stream);
    const int i = p.count++;
    p.src[i] = src;
    p.dst[i] = dst;
    p.rows[i] = rows;
    p.cols[i] = cols;
    p.src_ld[i] = src_ld;
    p.dst_ld[i] = cols;
    return dst;
  }
  void flush(cudaStream_t stream) {
    if (p.count == 0) return;
    atp_copy2d_kernel<<<p.count, 256, 0, stream>>>(p);
    TPCOMM_CUDA_CHECK(cudaGetLastError());
    p.count = 0;
  }
};

LtScale lt_scale_of(ScaleMode m, bool is_a) {
  switch (m) {
    case ScaleMode::kNone: return LtScale::kNone;
    case ScaleMode::kTensorwise: return LtScale::kScalar;
    case ScaleMode::kRowwiseSharded:
    case ScaleMode::kRowwiseReplicated:
    case ScaleMode::kRowwise: return LtScale::kOuterVec;
    case ScaleMode::kBlockwiseSharded:
    case ScaleMode::kBlockwiseReplicated: return LtScale::kVec128;
    case ScaleMode::kBlockwise: return is_a ? LtScale::kVec128 : LtScale::kBlk128;
  }
  return LtScale::kNone;
}

bool is_rowwise(ScaleMode m) {
  return m == ScaleMode::kRowwiseSharded || m == ScaleMode::kRowwiseReplicated || m == ScaleMode::kRowwise;
}
bool is_blockwise_a(ScaleMode m) {
  return m == ScaleMode::kBlockwiseSharded || m == ScaleMode::kBlockwiseReplicated || m == ScaleMode::kBlockwise;
}

// One chunk's GEMM, row-major: D[o] (rows x n) = A[o] (rows x k) @ B for o < batch.
// A scale rows of batch o start at a_scale_row0 + o * a_scale_batch_rows in the scale tensor's row space.
struct ChunkGemm {
  const void* a = nullptr;
  int64_t rows = 0, k = 0, n = 0;
  int batch = 1;
  int64_t stride_a = 0;  // elements
  const void* b = nullptr;
  BLayout bl;
  void* d = nullptr;
  int64_t ldd = 0, stride_d = 0;
  DType ta = DType::kBFloat16, tb = DType::kBFloat16, td = DType::kBFloat16;
  ScaleMode sa = ScaleMode::kNone, sb = ScaleMode::kNone;
  const float* a_scale = nullptr;
  int64_t a_scale_row0 = 0, a_scale_batch_rows = 0, a_scale_ld = 0;  // blockwise: M-major ld
  const float* b_scale = nullptr;
  int64_t b_scale_col0 = 0, b_scale_ld = 0;  // rowwise: first column; blockwise: first 128-block column, ld
  const void* bias = nullptr;
  bool fast_accum = false;
};

void run_chunk(AsyncTpState& s, const ChunkGemm& g, cudaStream_t stream) {
  const std::size_t ea = dtype_size(g.ta), ed = dtype_size(g.td);
  LtGemmDesc d;
  d.m = g.rows;
  d.n = g.n;
  d.k = g.k;
  d.a_dtype = g.ta;
  d.b_dtype = g.tb;
  d.d_dtype = g.td;
  d.lda = g.k;
  d.b_col_major = g.bl.col_major;
  d.ldb = g.bl.ld;
  d.ldd = g.ldd;
  d.a_scale = lt_scale_of(g.sa, true);
  d.b_scale = lt_scale_of(g.sb, false);
  d.bias = g.bias != nullptr;
  d.fast_accum = g.fast_accum;
  const bool per_batch = is_rowwise(g.sa) || is_blockwise_a(g.sa);
  if (!per_batch) {
    d.batch = g.batch;
    d.stride_a = g.stride_a;
    d.stride_b = 0;
    d.stride_d = g.stride_d;
    LtGemmPtrs p;
    p.a = g.a;
    p.b = g.b;
    p.d = g.d;
    p.a_scale = g.a_scale;
    p.b_scale = g.b_scale;
    p.bias = g.bias;
    s.lt->run(d, p, stream);
    return;
  }
  // Rowwise / blockwise A scales differ per batch: one GEMM per batch with its scale slice.
  SliceBatch slices(s);
  std::vector<LtGemmPtrs> ptrs(g.batch);
  const float* bsc = g.b_scale;
  if (is_rowwise(g.sb)) bsc = slices.get(g.b_scale + g.b_scale_col0, 1, g.n, g.n, stream);
  if (g.sb == ScaleMode::kBlockwise) {
    const int64_t kb = (g.k + 127) / 128, nb = (g.n + 127) / 128;
    bsc = slices.get(g.b_scale + g.b_scale_col0 * g.b_scale_ld, nb, kb, g.b_scale_ld, stream);
  }
  for (int o = 0; o < g.batch; ++o) {
    LtGemmPtrs& p = ptrs[o];
    p.a = static_cast<const char*>(g.a) + static_cast<std::size_t>(o * g.stride_a) * ea;
    p.b = g.b;
    p.d = static_cast<char*>(g.d) + static_cast<std::size_t>(o * g.stride_d) * ed;
    p.b_scale = bsc;
    p.bias = g.bias;
    const int64_t r0 = g.a_scale_row0 + o * g.a_scale_batch_rows;
    if (is_rowwise(g.sa)) {
      p.a_scale = slices.get(g.a_scale + r0, 1, g.rows, g.rows, stream);
    } else {
      const int64_t kb = (g.k + 127) / 128;
      // M-major (kb x rows): block row j of this slice is at a_scale + j*ld + r0.
      p.a_scale = slices.get(g.a_scale + r0, kb, g.rows, g.a_scale_ld, stream);
    }
  }
  slices.flush(stream);
  if (!is_blockwise_a(g.sa)) {
    for (int o = 0; o < g.batch; ++o) s.lt->run(d, ptrs[o], stream);
    return;
  }
  // 1x128 x 128x128: cuBLASLt's block scaling in the orientation verified on H200 (our A in its A slot, fp32 D
  // column-major into a scratch), then one transpose kernel per batch writes the row-major output, adding the bias.
  d.d_col_major = true;
  d.d_dtype = DType::kFloat32;
  d.ldd = g.rows;
  d.bias = false;
  const std::size_t need = static_cast<std::size_t>(g.rows * g.n) * sizeof(float);
  if (s.tmp_bytes < need) {
    if (capturing(stream))
      throw Error(ErrorCode::kInvalidState, "async TP: the blockwise GEMM scratch must grow to " + std::to_string(need) +
                                                " bytes, which cannot happen during CUDA-graph capture; run the op once eagerly first");
    TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (s.tmp) TPCOMM_CUDA_CHECK(cudaFree(s.tmp));
    s.tmp = nullptr;
    s.tmp_bytes = 0;
    TPCOMM_CUDA_CHECK(cudaMalloc(&s.tmp, need));
    s.tmp_bytes = need;
  }
  for (int o = 0; o < g.batch; ++o) {
    LtGemmPtrs p = ptrs[o];
    void* out = p.d;
    p.d = s.tmp;
    s.lt->run(d, p, stream);
    AtpTransposeParams tp{};
    tp.src = s.tmp;
    tp.dst = out;
    tp.bias = g.bias;
    tp.rows = g.rows;
    tp.cols = g.n;
    tp.src_ld = g.rows;
    tp.dst_ld = g.ldd;
    const dim3 grid(static_cast<unsigned>((g.rows + 31) / 32), static_cast<unsigned>((g.n + 31) / 32)), block(32, 8);
    switch (g.td) {
      case DType::kBFloat16: atp_transpose_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(tp); break;
      case DType::kFloat16: atp_transpose_kernel<__half><<<grid, block, 0, stream>>>(tp); break;
      case DType::kFloat32: atp_transpose_kernel<float><<<grid, block, 0, stream>>>(tp); break;
      default: throw Error(ErrorCode::kInternal, "transpose: output dtype");
    }
    TPCOMM_CUDA_CHECK(cudaGetLastError());
  }
}

// Loopback worlds (every rank in one CUDA context): cuBLASLt loads a GEMM kernel's module at its first launch, and
// that load waits for kernels already running in the context, e.g. another rank's start barrier spinning on this
// rank: a deadlock until the timeout (seen on nvidia-h200 with the first call of a new shape). So the first call of
// each signature launches its chunk GEMM once while no rank has anything in flight (host barriers on both sides);
// later calls find the kernels loaded. Separate processes (the normal case) have separate contexts and skip this.
void warm_gemms_once(const Communicator& comm, AsyncTpState& s, uint64_t key, cudaStream_t stream,
                     const std::function<void()>& gemms) {
  if (!comm.loopback() || s.warmed.count(key) || capturing(stream)) return;
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(s.side));
  comm.host_barrier();
  gemms();
  TPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  comm.host_barrier();
  s.warmed.insert(key);
}

uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ull; }

void log_fallback_once(bool& logged, CommImpl& c, const char* op, const std::string& why) {
  c.atp_fallbacks++;
  if (logged) return;
  logged = true;
  log(LogLevel::kWarn, std::string(op) + " on rank " + std::to_string(c.rank) + " runs unfused (NCCL + cuBLASLt): " + why);
}

EngineQuery engine_query(const Communicator& comm) {
  EngineQuery q;
  q.fast_path = comm.fast_path();
  q.fast_path_reason = comm.topology().reason;
  q.loopback = comm.loopback();
  return q;
}

// ---- all-gather + matmul ------------------------------------------------------------------------------------------

std::size_t ag_ws_bytes(const AgPlan& p) {
  return align_up(p.world * p.shard_bytes) + p.world * p.scale_slot_bytes + kAlign;
}
char* ag_slot(AsyncTpState& s, const AgPlan& p, int rank) { return static_cast<char*>(s.ws->local()) + rank * p.shard_bytes; }
char* ag_peer_slot(AsyncTpState& s, const AgPlan& p, int peer, int rank) {
  return static_cast<char*>(s.ws->peer(peer)) + rank * p.shard_bytes;
}
float* ag_scale_slot(AsyncTpState& s, const AgPlan& p, int peer, int rank) {
  return reinterpret_cast<float*>(static_cast<char*>(s.ws->peer(peer)) + align_up(p.world * p.shard_bytes) + rank * p.scale_slot_bytes);
}

std::size_t ag_scratch_bytes(const AllGatherMatmulArgs& a, const AgPlan& p) {
  std::size_t b = 0;
  if (a.a_scale.present()) b += static_cast<std::size_t>(a.a_scale.numel()) * 4 * (p.a_scale == ScaleMode::kRowwiseSharded || p.a_scale == ScaleMode::kBlockwiseSharded ? p.world : 1);
  for (int i = 0; i < p.num_b; ++i)
    if (a.b_scale[i].present()) b += static_cast<std::size_t>(a.b_scale[i].numel()) * 4;
  return b + kAlign * (p.world * p.outer * (p.num_b + 1) + 8);
}

uint32_t ag_tag(const AgPlan& p) {
  uint32_t h = 2166136261u;
  h = hash_combine(h, 0xA6);
  h = hash_combine(h, static_cast<uint64_t>(p.shard_rows));
  h = hash_combine(h, static_cast<uint64_t>(p.K));
  for (int i = 0; i < p.num_b; ++i) h = hash_combine(h, static_cast<uint64_t>(p.N[i]));
  return h;
}

// The GEMMs of rank `src`'s chunk into every out_i.
void ag_chunk_gemms(AsyncTpState& s, const AllGatherMatmulArgs& args, const AgPlan& p, int src, const void* a_chunk,
                    const float* a_scale_chunk, cudaStream_t stream) {
  const int W = p.world;
  for (int i = 0; i < p.num_b; ++i) {
    ChunkGemm g;
    g.a = a_chunk;
    g.rows = p.inner;
    g.k = p.K;
    g.n = p.N[i];
    g.batch = static_cast<int>(p.outer);
    g.stride_a = p.inner * p.K;
    g.b = args.b[i].data;
    g.bl = p.b_layout[i];
    g.d = static_cast<char*>(args.out[i].data) + static_cast<std::size_t>(src * p.inner * p.N[i]) * dtype_size(p.out_dtype[i]);
    g.ldd = p.N[i];
    g.stride_d = W * p.inner * p.N[i];
    g.ta = p.a_dtype;
    g.tb = p.b_dtype;
    g.td = p.out_dtype[i];
    g.sa = p.a_scale;
    g.sb = p.b_scale[i];
    g.fast_accum = args.options.use_fast_accum;
    g.bias = p.has_bias[i] ? args.bias[i].data : nullptr;
    g.b_scale = static_cast<const float*>(args.b_scale[i].data);
    g.b_scale_ld = p.b_scale_ld[i];
    switch (p.a_scale) {
      case ScaleMode::kTensorwise: g.a_scale = static_cast<const float*>(args.a_scale.data); break;
      case ScaleMode::kRowwiseSharded:
        g.a_scale = a_scale_chunk;  // this chunk's shard_rows scales, dense
        g.a_scale_row0 = 0;
        g.a_scale_batch_rows = p.inner;
        break;
      case ScaleMode::kRowwiseReplicated:
        // Gathered rows space: batch o of rank src starts at row (o*W + src)*inner.
        g.a_scale = static_cast<const float*>(args.a_scale.data);
        g.a_scale_row0 = src * p.inner;
        g.a_scale_batch_rows = W * p.inner;
        break;
      case ScaleMode::kBlockwiseSharded:
        g.a_scale = a_scale_chunk;  // (kb x shard_rows) M-major, ld = shard_rows
        g.a_scale_row0 = 0;
        g.a_scale_batch_rows = p.inner;
        g.a_scale_ld = p.shard_rows;
        break;
      case ScaleMode::kBlockwiseReplicated:
        g.a_scale = static_cast<const float*>(args.a_scale.data);
        g.a_scale_row0 = src * p.inner;
        g.a_scale_batch_rows = W * p.inner;
        g.a_scale_ld = p.a_scale_ld;
        break;
      default: break;
    }
    run_chunk(s, g, stream);
  }
}

// This rank's own sharded scales, in the dense layout a gathered slot has (rowwise: shard_rows; blockwise: M-major
// with ld = shard_rows).
void copy_own_scale(const AllGatherMatmulArgs& args, const AgPlan& p, float* dst, cudaStream_t stream) {
  if (p.a_scale == ScaleMode::kRowwiseSharded) {
    TPCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, args.a_scale.data, p.scale_slot_bytes, cudaMemcpyDeviceToDevice, stream));
  } else if (p.a_scale == ScaleMode::kBlockwiseSharded) {
    const int64_t kb = (p.K + 127) / 128;
    TPCOMM_CUDA_CHECK(cudaMemcpy2DAsync(dst, p.shard_rows * 4, args.a_scale.data, p.a_scale_ld * 4, p.shard_rows * 4, kb,
                                        cudaMemcpyDeviceToDevice, stream));
  }
}

// Copies rank src's shard (contiguous, outer x inner x K) into its rows of the gathered A.
void copy_to_gathered(const AllGatherMatmulArgs& args, const AgPlan& p, int src, const void* shard, cudaStream_t stream) {
  const std::size_t row = static_cast<std::size_t>(p.inner * p.K) * p.a_elem;
  char* dst = static_cast<char*>(args.a_gathered.data) + src * row;
  TPCOMM_CUDA_CHECK(cudaMemcpy2DAsync(dst, p.world * row, shard, row, row, p.outer, cudaMemcpyDeviceToDevice, stream));
}

void ag_decomposed(const Communicator& comm, AsyncTpState& s, const AllGatherMatmulArgs& args, const AgPlan& p,
                   AsyncTpTransport t, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  const int W = p.world, r = c.rank;
  const bool sharded_scale = p.scale_slot_bytes > 0;
  launch_barrier(c, s, ag_tag(p), stream);
  // Own dense scale slot first (the own chunk's GEMM reads it; the side stream, forked after it, sends its bytes).
  float* own_scale = sharded_scale ? ag_scale_slot(s, p, r, r) : nullptr;
  if (sharded_scale) copy_own_scale(args, p, own_scale, stream);
  TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_fork, stream));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(s.side, s.ev_fork, 0));
  for (int step = 1; step < W; ++step) {
    const int q = (r + step) % W;
    if (sharded_scale)
      TPCOMM_CUDA_CHECK(cudaMemcpyAsync(ag_scale_slot(s, p, q, r), own_scale, p.scale_slot_bytes, cudaMemcpyDeviceToDevice, s.side));
    push(s, t, ag_peer_slot(s, p, q, r), args.a_shard.data, p.shard_bytes, s.peer_ag_signal(q, r), q, s.side);
  }
  if (p.return_a) copy_to_gathered(args, p, r, args.a_shard.data, s.side);
  // Own chunk at once, then the peers' in arrival order.
  ag_chunk_gemms(s, args, p, r, args.a_shard.data, own_scale, stream);
  for (int step = 1; step < W; ++step) {
    const int src = ag_chunk_at(step, r, W);
    launch_wait(c, s.ag_signals(), &src, 1, stream);
    const void* chunk = ag_slot(s, p, src);
    ag_chunk_gemms(s, args, p, src, chunk, sharded_scale ? ag_scale_slot(s, p, r, src) : nullptr, stream);
    if (p.return_a) {
      TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_chunk[src], stream));
      TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(s.side, s.ev_chunk[src], 0));
      copy_to_gathered(args, p, src, chunk, s.side);
    }
  }
  TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_join, s.side));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(stream, s.ev_join, 0));
}

NativeAgGemmParams native_params(const Communicator& comm, AsyncTpState& s, const AllGatherMatmulArgs& args, const AgPlan& p,
                                 int i) {
  NativeAgGemmParams n;
  n.a = s.ws ? s.ws->local() : nullptr;
  n.b = args.b[i].data;
  n.d = args.out[i].data;
  n.M = p.shard_rows * p.world;
  n.N = p.N[i];
  n.K = p.K;
  n.ab_dtype = p.a_dtype;
  n.d_dtype = p.out_dtype[i];
  n.num_chunks = p.world;
  n.pivot_chunk = comm.rank();
  n.chunk_signals = s.ws ? s.ag_signals() : nullptr;
  n.sync = comm.impl().sync_ctx();
  n.max_ctas = args.options.max_ctas;
  if (comm.loopback() && n.max_ctas == 0) {
    // Loopback world: W ranks' persistent GEMMs share the GPU, and the peers' chunks arrive by same-device copies,
    // which run as kernels and need free SMs beside the spinning GEMMs (at W = 4 with SMs/W - 1 CTAs per rank, i.e.
    // 4 free SMs, the loopback test timed out on nvidia-h200). Each rank takes half its share, so half the GPU stays
    // free for the copies and the one-block barrier and wait kernels.
    n.max_ctas = std::max(2, s.sm_count / p.world / 2 / 2 * 2);
  }
  switch (p.a_scale) {
    case ScaleMode::kTensorwise:
      n.scale = NativeScale::kTensorwise;
      n.a_scale = static_cast<const float*>(args.a_scale.data);
      n.b_scale = static_cast<const float*>(args.b_scale[i].data);
      break;
    case ScaleMode::kRowwiseSharded:
      n.scale = NativeScale::kRowwise;
      n.a_scale = s.ws ? ag_scale_slot(s, p, comm.rank(), 0) : nullptr;  // the W slots, packed: the gathered M scales
      n.b_scale = static_cast<const float*>(args.b_scale[i].data);
      break;
    case ScaleMode::kRowwiseReplicated:
      n.scale = NativeScale::kRowwise;
      n.a_scale = static_cast<const float*>(args.a_scale.data);
      n.b_scale = static_cast<const float*>(args.b_scale[i].data);
      break;
    default: n.scale = NativeScale::kNone; break;
  }
  return n;
}

void ag_native(const Communicator& comm, AsyncTpState& s, const AllGatherMatmulArgs& args, const AgPlan& p,
               AsyncTpTransport t, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  const int W = p.world, r = c.rank;
  const bool sharded_scale = p.scale_slot_bytes > 0;
  launch_barrier(c, s, ag_tag(p), stream);
  TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_fork, stream));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(s.side, s.ev_fork, 0));
  // The native GEMM reads the whole gathered A from the staging slots, its own shard included.
  float* own_scale = sharded_scale ? ag_scale_slot(s, p, r, r) : nullptr;
  if (sharded_scale) copy_own_scale(args, p, own_scale, s.side);
  TPCOMM_CUDA_CHECK(cudaMemcpyAsync(ag_slot(s, p, r), args.a_shard.data, p.shard_bytes, cudaMemcpyDeviceToDevice, s.side));
  stream_write_value32(s.side, s.ag_signals() + r, 1u);
  for (int step = 1; step < W; ++step) {
    const int q = (r + step) % W;
    if (sharded_scale)
      TPCOMM_CUDA_CHECK(cudaMemcpyAsync(ag_scale_slot(s, p, q, r), own_scale, p.scale_slot_bytes, cudaMemcpyDeviceToDevice, s.side));
    push(s, t, ag_peer_slot(s, p, q, r), args.a_shard.data, p.shard_bytes, s.peer_ag_signal(q, r), q, s.side);
  }
  for (int i = 0; i < p.num_b; ++i) launch_native_ag_gemm(native_params(comm, s, args, p, i), stream);
  if (p.return_a) {
    // Every chunk has landed once the first GEMM ran: one copy of the staging slots (packed = the gathered layout).
    TPCOMM_CUDA_CHECK(cudaMemcpyAsync(args.a_gathered.data, s.ws->local(), W * p.shard_bytes, cudaMemcpyDeviceToDevice, stream));
  }
  memset32(stream, s.ag_signals(), 0u, W);
  TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_join, s.side));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(stream, s.ev_join, 0));
}

ncclDataType_t nccl_bytes_type() { return ncclUint8; }

void ag_unfused(const Communicator& comm, AsyncTpState& s, const AllGatherMatmulArgs& args, const AgPlan& p, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  if (comm.loopback())
    throw Error(ErrorCode::kUnsupported, "all_gather_matmul: the unfused engine needs NCCL, which a loopback world does not have");
  const int W = p.world, r = c.rank;
  const bool sharded_scale = p.scale_slot_bytes > 0;
  TPCOMM_NCCL_CHECK(ncclAllGather(args.a_shard.data, s.ws->local(), p.shard_bytes, nccl_bytes_type(), c.nccl, stream));
  if (sharded_scale) {
    float* own = ag_scale_slot(s, p, r, r);
    copy_own_scale(args, p, own, stream);
    TPCOMM_NCCL_CHECK(ncclAllGather(own, ag_scale_slot(s, p, r, 0), p.scale_slot_bytes, nccl_bytes_type(), c.nccl, stream));
  }
  for (int src = 0; src < W; ++src)
    ag_chunk_gemms(s, args, p, src, ag_slot(s, p, src), sharded_scale ? ag_scale_slot(s, p, r, src) : nullptr, stream);
  if (p.return_a)
    for (int src = 0; src < W; ++src) copy_to_gathered(args, p, src, ag_slot(s, p, src), stream);
}

// ---- matmul + reduce-scatter --------------------------------------------------------------------------------------

std::size_t rs_ws_bytes(const RsPlan& p) { return 2 * p.world * p.chunk_bytes + 2 * kAlign; }
char* rs_recv(AsyncTpState& s, const RsPlan& p, int peer, int slot) {
  return static_cast<char*>(s.ws->peer(peer)) + slot * p.chunk_bytes;
}
char* rs_send(AsyncTpState& s, const RsPlan& p, int q) {
  return static_cast<char*>(s.ws->local()) + align_up(p.world * p.chunk_bytes) + q * p.chunk_bytes;
}

std::size_t rs_scratch_bytes(const MatmulReduceScatterArgs& a, const RsPlan& p) {
  std::size_t b = 0;
  if (a.a_scale.present()) b += static_cast<std::size_t>(a.a_scale.numel()) * 4;
  if (a.b_scale.present()) b += static_cast<std::size_t>(a.b_scale.numel()) * 4;
  return b + kAlign * (p.world * p.outer * 2 + 8);
}

uint32_t rs_tag(const RsPlan& p) {
  uint32_t h = 2166136261u;
  h = hash_combine(h, 0x25);
  h = hash_combine(h, static_cast<uint64_t>(p.M));
  h = hash_combine(h, static_cast<uint64_t>(p.k));
  h = hash_combine(h, static_cast<uint64_t>(p.N));
  h = hash_combine(h, static_cast<uint64_t>(p.chunk_rows));
  return h;
}

void rs_chunk_gemm(AsyncTpState& s, const MatmulReduceScatterArgs& args, const RsPlan& p, int q, void* dst, cudaStream_t stream) {
  const int W = p.world;
  ChunkGemm g;
  g.k = p.k;
  g.ta = p.a_dtype;
  g.tb = p.b_dtype;
  g.td = p.out_dtype;
  g.bl = p.b_layout;
  g.d = dst;
  g.sa = p.a_scale;
  g.sb = p.b_scale;
  g.fast_accum = args.options.use_fast_accum;
  g.a_scale = static_cast<const float*>(args.a_scale.data);
  g.a_scale_ld = p.a_scale_ld;
  g.b_scale = static_cast<const float*>(args.b_scale.data);
  g.b_scale_ld = p.b_scale_ld;
  const std::size_t eb = dtype_size(p.b_dtype), ea = dtype_size(p.a_dtype);
  if (p.scatter_n) {
    g.a = args.a.data;
    g.rows = p.M;
    g.batch = 1;
    g.n = p.chunk_n;
    g.ldd = p.chunk_n;
    const int64_t col0 = q * p.chunk_n;
    g.b = static_cast<const char*>(args.b.data) + static_cast<std::size_t>(p.b_layout.col_major ? col0 * p.b_layout.ld : col0) * eb;
    g.b_scale_col0 = p.b_scale == ScaleMode::kBlockwise ? col0 / 128 : col0;
    g.a_scale_row0 = 0;
    g.a_scale_batch_rows = p.M;
  } else {
    g.a = static_cast<const char*>(args.a.data) + static_cast<std::size_t>(q * p.c * p.k) * ea;
    g.rows = p.c;
    g.batch = static_cast<int>(p.outer);
    g.stride_a = W * p.c * p.k;
    g.n = p.N;
    g.b = args.b.data;
    g.ldd = p.N;
    g.stride_d = p.c * p.N;
    g.a_scale_row0 = q * p.c;
    g.a_scale_batch_rows = W * p.c;
  }
  run_chunk(s, g, stream);
}

void launch_reduce(const RsPlan& p, const void* const* slots, void* out, const void* bias, float scale, int world,
                   cudaStream_t stream) {
  AtpReduceParams rp{};
  for (int i = 0; i < world; ++i) rp.slots[i] = slots[i];
  rp.out = out;
  rp.bias = bias;
  rp.rows = p.chunk_rows;
  rp.cols = p.chunk_n;
  rp.world = world;
  rp.scale = scale;
  const int64_t vecs = p.chunk_rows * p.chunk_n * static_cast<int64_t>(p.out_elem) / 16;
  const int blocks = static_cast<int>(std::min<int64_t>((vecs + 255) / 256, 1024));
  switch (p.out_dtype) {
    case DType::kBFloat16: atp_rs_reduce_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(rp); break;
    case DType::kFloat16: atp_rs_reduce_kernel<__half><<<blocks, 256, 0, stream>>>(rp); break;
    case DType::kFloat32: atp_rs_reduce_kernel<float><<<blocks, 256, 0, stream>>>(rp); break;
    default: throw Error(ErrorCode::kInternal, "reduce: output dtype");
  }
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

const void* rs_bias(const MatmulReduceScatterArgs& args, const RsPlan& p, int rank) {
  if (!p.has_bias) return nullptr;
  return static_cast<const char*>(args.bias.data) + (p.scatter_n ? static_cast<std::size_t>(rank * p.chunk_n) * p.out_elem : 0);
}

void rs_decomposed(const Communicator& comm, AsyncTpState& s, const MatmulReduceScatterArgs& args, const RsPlan& p,
                   AsyncTpTransport t, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  const int W = p.world, r = c.rank;
  launch_barrier(c, s, rs_tag(p), stream);
  for (int step = 0; step < W; ++step) {
    const int q = rs_chunk_at(step, r, W);
    if (q == r) {
      rs_chunk_gemm(s, args, p, q, rs_recv(s, p, r, r), stream);
      continue;
    }
    void* dst = rs_send(s, p, q);
    rs_chunk_gemm(s, args, p, q, dst, stream);
    TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_chunk[q], stream));
    TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(s.side, s.ev_chunk[q], 0));
    push(s, t, rs_recv(s, p, q, r), dst, p.chunk_bytes, s.peer_rs_signal(q, r), q, s.side);
  }
  int idx[kAtpMaxRanks];
  int n = 0;
  for (int src = 0; src < W; ++src)
    if (src != r) idx[n++] = src;
  launch_wait(c, s.rs_signals(), idx, n, stream);
  const void* slots[kAtpMaxRanks];
  for (int src = 0; src < W; ++src) slots[src] = rs_recv(s, p, r, src);
  launch_reduce(p, slots, args.out.data, rs_bias(args, p, r), args.reduce == RsReduce::kAvg ? 1.0f / W : 1.0f, W, stream);
  TPCOMM_CUDA_CHECK(cudaEventRecord(s.ev_join, s.side));
  TPCOMM_CUDA_CHECK(cudaStreamWaitEvent(stream, s.ev_join, 0));
}

void rs_unfused(const Communicator& comm, AsyncTpState& s, const MatmulReduceScatterArgs& args, const RsPlan& p, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  if (comm.loopback())
    throw Error(ErrorCode::kUnsupported, "matmul_reduce_scatter: the unfused engine needs NCCL, which a loopback world does not have");
  const int W = p.world;
  for (int q = 0; q < W; ++q) rs_chunk_gemm(s, args, p, q, rs_send(s, p, q), stream);
  const std::size_t count = p.chunk_bytes / p.out_elem;
  TPCOMM_NCCL_CHECK(ncclReduceScatter(rs_send(s, p, 0), args.out.data, count, to_nccl(p.out_dtype, "out"),
                                      args.reduce == RsReduce::kAvg ? ncclAvg : ncclSum, c.nccl, stream));
  if (p.has_bias) {
    const void* slots[1] = {args.out.data};
    launch_reduce(p, slots, args.out.data, rs_bias(args, p, c.rank), 1.0f, 1, stream);
  }
}

}  // namespace
}  // namespace detail

using detail::AgPlan;
using detail::AsyncTpState;
using detail::CommImpl;
using detail::RsPlan;

namespace detail {
namespace {
// The decision for an already validated plan (all_gather_matmul plans once and decides from it).
AsyncTpDecision decide_all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args, const AgPlan& p);
}  // namespace
}  // namespace detail

AsyncTpDecision resolve_all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args) {
  comm.impl().ensure_usable("all_gather_matmul");
  return detail::decide_all_gather_matmul(comm, args, detail::plan_all_gather_matmul(args, comm.world_size()));
}

namespace detail {
namespace {
AsyncTpDecision decide_all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args, const AgPlan& p) {
  detail::EngineQuery q = detail::engine_query(comm);
  // The native kernel's own support check, on a plan with the real shapes (pointers are checked in the call).
  if (p.outer == 1 && p.num_b >= 1) {
    detail::NativeAgGemmParams np;
    np.a = args.a_shard.data;  // alignment stand-in: the staging slots are 256-byte aligned
    np.b = args.b[0].data;
    np.d = args.out[0].data;
    np.M = p.shard_rows * p.world;
    np.N = p.N[0];
    np.K = p.K;
    np.ab_dtype = p.a_dtype;
    np.d_dtype = p.out_dtype[0];
    np.num_chunks = p.world;
    np.chunk_signals = reinterpret_cast<const uint32_t*>(args.a_shard.data);
    np.sync = comm.impl().sync_ctx();
    np.scale = p.a_scale == ScaleMode::kTensorwise ? detail::NativeScale::kTensorwise
               : (p.a_scale == ScaleMode::kRowwiseSharded || p.a_scale == ScaleMode::kRowwiseReplicated) ? detail::NativeScale::kRowwise
                                                                                                           : detail::NativeScale::kNone;
    for (int i = 0; i < p.num_b && q.native_reason.empty(); ++i) {
      np.N = p.N[i];
      np.b = args.b[i].data;
      np.d = args.out[i].data;
      if (np.scale != detail::NativeScale::kNone) {  // stand-ins (the call passes the real, gathered ones)
        np.a_scale = static_cast<const float*>(args.a_scale.data);
        np.b_scale = static_cast<const float*>(args.b_scale[i].data);
      }
      q.native_reason = detail::native_ag_gemm_unsupported(np, comm.device());
    }
  }
  return detail::decide_ag(p, args.options, q);
}
}  // namespace
}  // namespace detail

AsyncTpDecision resolve_matmul_reduce_scatter(const Communicator& comm, const MatmulReduceScatterArgs& args) {
  comm.impl().ensure_usable("matmul_reduce_scatter");
  const RsPlan p = detail::plan_matmul_reduce_scatter(args, comm.world_size());
  return detail::decide_rs(p, args.options, detail::engine_query(comm));
}

AsyncTpEngine all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  c.ensure_usable("all_gather_matmul");
  comm.check();
  const AgPlan p = detail::plan_all_gather_matmul(args, c.world);
  AsyncTpDecision d = detail::decide_all_gather_matmul(comm, args, p);
  const AsyncTpEngine requested = args.options.engine;
  if (!d.fused && requested != AsyncTpEngine::kUnfused) {
    if (!args.options.allow_fallback)
      throw Error(ErrorCode::kUnsupported, "all_gather_matmul: the " + std::string(async_tp_engine_name(requested)) +
                                               " engine cannot run this call: " + d.reason +
                                               " (set AsyncTpOptions::allow_fallback to run NCCL + cuBLASLt instead)");
  }
  if (d.engine == AsyncTpEngine::kUnfused && comm.loopback())
    throw Error(ErrorCode::kUnsupported, "all_gather_matmul: the unfused engine (NCCL) cannot run on a loopback world" +
                                             std::string(d.fused || d.reason.empty() ? "" : ": " + d.reason));
  TPCOMM_CUDA_CHECK(cudaSetDevice(c.device));
  AsyncTpState& s = detail::state(comm);
  detail::ensure_workspace(comm, s, detail::ag_ws_bytes(p), stream);
  detail::ensure_scratch(s, detail::ag_scratch_bytes(args, p), stream);
  if (d.engine == AsyncTpEngine::kDecomposed) {
    uint64_t key = detail::mix(detail::ag_tag(p), 0xA6);
    key = detail::mix(key, static_cast<uint64_t>(p.a_dtype) | static_cast<uint64_t>(p.a_scale) << 8);
    for (int i = 0; i < p.num_b; ++i)
      key = detail::mix(key, static_cast<uint64_t>(p.out_dtype[i]) | static_cast<uint64_t>(p.b_scale[i]) << 8 |
                                 static_cast<uint64_t>(p.b_layout[i].col_major) << 16 | static_cast<uint64_t>(p.has_bias[i]) << 17 |
                                 static_cast<uint64_t>(p.b_layout[i].ld) << 20);
    detail::warm_gemms_once(comm, s, key, stream, [&] {
      // Every chunk's GEMM has the own chunk's shape; its rows of the outputs are written again by the call.
      const bool sharded = p.scale_slot_bytes > 0;
      float* own_scale = sharded ? detail::ag_scale_slot(s, p, c.rank, c.rank) : nullptr;
      if (sharded) detail::copy_own_scale(args, p, own_scale, stream);
      detail::ag_chunk_gemms(s, args, p, c.rank, args.a_shard.data, own_scale, stream);
    });
    s.scratch_used = 0;
  }
  switch (d.engine) {
    case AsyncTpEngine::kDecomposed:
      detail::ag_decomposed(comm, s, args, p, d.transport, stream);
      c.atp_fused++;
      break;
    case AsyncTpEngine::kNative:
      detail::ag_native(comm, s, args, p, d.transport, stream);
      c.atp_fused++;
      break;
    default:
      detail::ag_unfused(comm, s, args, p, stream);
      if (requested == AsyncTpEngine::kUnfused) c.atp_unfused++;
      else detail::log_fallback_once(s.logged_fallback_ag, c, "all_gather_matmul", d.reason);
      break;
  }
  c.note_enqueued(stream);
  return d.engine;
}

AsyncTpEngine matmul_reduce_scatter(const Communicator& comm, const MatmulReduceScatterArgs& args, cudaStream_t stream) {
  CommImpl& c = comm.impl();
  c.ensure_usable("matmul_reduce_scatter");
  comm.check();
  const RsPlan p = detail::plan_matmul_reduce_scatter(args, c.world);
  AsyncTpDecision d = detail::decide_rs(p, args.options, detail::engine_query(comm));
  const AsyncTpEngine requested = args.options.engine;
  if (!d.fused && requested != AsyncTpEngine::kUnfused) {
    if (!args.options.allow_fallback)
      throw Error(ErrorCode::kUnsupported, "matmul_reduce_scatter: the " + std::string(async_tp_engine_name(requested)) +
                                               " engine cannot run this call: " + d.reason +
                                               " (set AsyncTpOptions::allow_fallback to run cuBLASLt + NCCL instead)");
  }
  if (d.engine == AsyncTpEngine::kUnfused && comm.loopback())
    throw Error(ErrorCode::kUnsupported, "matmul_reduce_scatter: the unfused engine (NCCL) cannot run on a loopback world" +
                                             std::string(d.fused || d.reason.empty() ? "" : ": " + d.reason));
  TPCOMM_CUDA_CHECK(cudaSetDevice(c.device));
  AsyncTpState& s = detail::state(comm);
  detail::ensure_workspace(comm, s, detail::rs_ws_bytes(p), stream);
  detail::ensure_scratch(s, detail::rs_scratch_bytes(args, p), stream);
  if (d.engine == AsyncTpEngine::kDecomposed) {
    uint64_t key = detail::mix(detail::rs_tag(p), 0x25);
    key = detail::mix(key, static_cast<uint64_t>(p.a_dtype) | static_cast<uint64_t>(p.a_scale) << 8 |
                               static_cast<uint64_t>(p.b_scale) << 12 | static_cast<uint64_t>(p.out_dtype) << 16 |
                               static_cast<uint64_t>(p.b_layout.col_major) << 20 | static_cast<uint64_t>(p.b_layout.ld) << 24);
    // The own chunk's GEMM writes this rank's receive slot, which the call writes again.
    detail::warm_gemms_once(comm, s, key, stream, [&] { detail::rs_chunk_gemm(s, args, p, c.rank, detail::rs_recv(s, p, c.rank, c.rank), stream); });
    s.scratch_used = 0;
    detail::rs_decomposed(comm, s, args, p, d.transport, stream);
    c.atp_fused++;
  } else {
    detail::rs_unfused(comm, s, args, p, stream);
    if (requested == AsyncTpEngine::kUnfused) c.atp_unfused++;
    else detail::log_fallback_once(s.logged_fallback_rs, c, "matmul_reduce_scatter", d.reason);
  }
  c.note_enqueued(stream);
  return d.engine;
}

void reserve_async_tp(const Communicator& comm, std::size_t ag_gathered_bytes, std::size_t rs_output_bytes) {
  CommImpl& c = comm.impl();
  c.ensure_usable("reserve_async_tp");
  TPCOMM_CUDA_CHECK(cudaSetDevice(c.device));
  AsyncTpState& s = detail::state(comm);
  // AG: the gathered A plus its gathered scales (at most 1/32 of an FP8 A: 1x128 blocks of 4 bytes); RS: W receive
  // and W send chunks of the output.
  const std::size_t ag = ag_gathered_bytes + ag_gathered_bytes / 16 + 2 * detail::kAlign;
  const std::size_t rs = 2 * rs_output_bytes + 2 * detail::kAlign;
  cudaStream_t st = s.side;
  detail::ensure_workspace(comm, s, std::max(ag, rs), st);
  detail::ensure_scratch(s, ag_gathered_bytes / 16 + rs_output_bytes / 16 + (std::size_t(1) << 20), st);
}

}  // namespace tpcomm
