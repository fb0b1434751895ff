// Async tensor parallelism (seed 000): all-gather + GEMM and GEMM + reduce-scatter with the communication hidden
// behind the GEMM.
//
//   all_gather_matmul:     out_i = all_gather(A_shard, gather_dim) @ B_i        (column-parallel layers, fused QKV)
//   matmul_reduce_scatter: out   = reduce_scatter(A @ B, scatter_dim) (sum or avg over ranks)   (row-parallel layers)
//
// Engines (AsyncTpEngine):
//   kDecomposed: the shards move over NVLink (copy engine, or an SM copy kernel) while cuBLASLt GEMMs run on the
//                chunks that have landed; each chunk's GEMM writes its slice of the output directly; chunk order is
//                rotated by rank; every wait is a device-side wait with tpcomm's timeout. Every dtype cuBLASLt has.
//   kNative:     one persistent GEMM (our CUTLASS SM90 kernel) over the whole gathered A whose tile scheduler waits on
//                a per-chunk signal before it hands out a tile of that chunk, starting at this rank's chunk.
//   kUnfused:    the NCCL collective, then cuBLASLt (sequential; the fallback and the baseline).
//   kAuto:       the measured choice per shape (resolve_all_gather_matmul / resolve_matmul_reduce_scatter say which).
//
// Semantics follow torch.ops.symm_mem.fused_all_gather_matmul / fused_matmul_reduce_scatter and their scaled variants.
// Everything is enqueued on `stream` (plus tpcomm's own side streams forked from and joined back into it); nothing is
// allocated or host-synchronized once the communicator's async-TP workspace is large enough (reserve_async_tp() sizes
// it ahead of a CUDA-graph capture, where growing it is an error); CUDA-graph capturable.
//
// Fail fast: when the requested engine cannot run this call (dtype, layout, shape, alignment, no peer access, ranks
// across nodes) the call throws tpcomm::Error(kUnsupported) naming the reason, unless options.allow_fallback is set: then
// it runs kUnfused, logs once per communicator and op why, and CommStats counts it. Bad input throws kInvalidArgument
// naming the argument before anything is enqueued.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "tpcomm/types.h"

namespace tpcomm {

class Communicator;

constexpr int kMaxTensorDims = 6;
constexpr int kMaxFusedB = 4;  // B matrices sharing one gather of A (fused QKV, gate/up)

// A strided view of device memory, as a framework tensor is: sizes and strides in elements. data == nullptr means
// "absent" for the optional arguments.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kBFloat16;
  int ndim = 0;
  int64_t sizes[kMaxTensorDims] = {};
  int64_t strides[kMaxTensorDims] = {};

  // Row-major (C-contiguous) view.
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<int64_t> sizes);
  // A K x N matrix stored as the (N, K) row-major weight (column-major K x N: strides (1, K)).
  static TensorView weight_t(const void* data, DType dtype, int64_t K, int64_t N);
  bool present() const { return data != nullptr; }
  int64_t numel() const;
  bool is_contiguous() const;
  std::string shape_string() const;  // "(2, 128, 4096)"
};

enum class AsyncTpEngine : int { kAuto = 0, kDecomposed = 1, kNative = 2, kUnfused = 3 };
const char* async_tp_engine_name(AsyncTpEngine e) noexcept;           // "auto", "decomposed", "native", "unfused"
AsyncTpEngine parse_async_tp_engine(const std::string& text);         // throws kInvalidArgument("engine: ...")

// How the decomposed engine moves chunks: the copy engine (cudaMemcpyAsync + stream write-value signals: no SM taken
// from the GEMM) or an SM copy kernel on a few CTAs.
enum class AsyncTpTransport : int { kAuto = 0, kCopyEngine = 1, kSm = 2 };
const char* async_tp_transport_name(AsyncTpTransport t) noexcept;     // "auto", "ce", "sm"
AsyncTpTransport parse_async_tp_transport(const std::string& text);

// How an FP8 scale applies (detected from the scale tensor's shape, as PyTorch does):
//   kTensorwise:         numel 1.
//   kRowwiseSharded:     A: shard.shape[:-1] + (1,) -- one per row of this rank's shard, gathered with A.
//                        (Ambiguous shapes -- a shard shape equal to the gathered shape, i.e. W = 1 -- count as sharded.)
//   kRowwiseReplicated:  A: gathered.shape[:-1] + (1,) -- every rank holds all rows' scales; sliced locally.
//   kRowwise:            B (K x N): N values, one per output column (cuBLASLt OUTER_VEC). RS A: A.shape[:-1] + (1,).
//   kBlockwiseSharded:   A: 1x128 blocks, shard rows x ceil(K/128), row-major-in-memory "M-major": strides (1, ld),
//                        ld >= rows (the layout of Fp8Scaling::kBlock1x128 / cuBLASLt VEC128_32F); gathered with A.
//   kBlockwiseReplicated: A: the same over the gathered rows; sliced locally.
//   kBlockwise:          B (K x N): 128x128 blocks, sizes (ceil(K/128), ceil(N/128)), strides (1, ld), i.e. the
//                        Fp8Scaling::kBlock128x128 scales of the (N, K) weight (cuBLASLt BLK128x128_32F).
//                        RS A: 1x128 blocks of A (M-major).
enum class ScaleMode : int {
  kNone = 0,
  kTensorwise = 1,
  kRowwiseSharded = 2,
  kRowwiseReplicated = 3,
  kRowwise = 4,
  kBlockwiseSharded = 5,
  kBlockwiseReplicated = 6,
  kBlockwise = 7,
};
const char* scale_mode_name(ScaleMode m) noexcept;

enum class RsReduce : int { kSum = 0, kAvg = 1 };

struct AsyncTpOptions {
  AsyncTpEngine engine = AsyncTpEngine::kAuto;
  AsyncTpTransport transport = AsyncTpTransport::kAuto;
  // When the requested fused engine cannot run: run kUnfused (NCCL + cuBLASLt), log once why, count it
  // (CommStats::async_tp_fallbacks), instead of throwing kUnsupported.
  bool allow_fallback = false;
  // FP8: cuBLASLt's fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM), as torch._scaled_mm(use_fast_accum).
  bool use_fast_accum = false;
  // Native engine: CTAs of the persistent GEMM (0 = every SM; a loopback world divides the SMs among its ranks so
  // that all ranks' kernels are resident at once).
  int max_ctas = 0;
};

struct AllGatherMatmulArgs {
  // (..., m, K) on every rank, contiguous; gathered along gather_dim (any dim but the last).
  TensorView a_shard;
  int gather_dim = 0;
  int num_b = 1;
  // B_i: (K, N_i), any layout with a unit stride in one dim (row-major (K, N_i), or the transposed (N_i, K) weight;
  // FP8 needs the transposed weight, as torch._scaled_mm does).
  TensorView b[kMaxFusedB];
  // out_i: the gathered shape with the last dim N_i, contiguous, dtype bf16 (f16, f32 where cuBLASLt allows).
  TensorView out[kMaxFusedB];
  // Optional: the gathered A itself (gathered shape, contiguous, A's dtype).
  TensorView a_gathered;
  // FP8 only (A and B e4m3; e5m2 A allowed): scales (f32) as described at ScaleMode, detected from their shapes.
  TensorView a_scale;
  TensorView b_scale[kMaxFusedB];
  // Optional (N_i), dtype of out_i.
  TensorView bias[kMaxFusedB];
  AsyncTpOptions options;
};

struct MatmulReduceScatterArgs {
  // (..., M, k): this rank's slice of the contraction dim, contiguous.
  TensorView a;
  // (k, N), as B of AllGatherMatmulArgs.
  TensorView b;
  // The caller's output: A's shape with the last dim N and sizes[scatter_dim] divided by the world size, contiguous.
  // scatter_dim refers to that (3D+) output even though the GEMM runs on the flattened 2D view of A (seed 000's
  // orig_scatter_dim); the last dim (scattering N) is allowed.
  TensorView out;
  int scatter_dim = 0;
  RsReduce reduce = RsReduce::kSum;
  TensorView a_scale;  // FP8: tensorwise, rowwise A.shape[:-1] + (1,), or 1x128 blockwise
  TensorView b_scale;
  TensorView bias;     // optional (N): added once (on the reduced result)
  AsyncTpOptions options;
};

// Enqueue. Return the engine that ran.
AsyncTpEngine all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args, cudaStream_t stream);
AsyncTpEngine matmul_reduce_scatter(const Communicator& comm, const MatmulReduceScatterArgs& args, cudaStream_t stream);

// What a call with these args would run (kAuto resolved), and, when that is kUnfused or the requested engine
// cannot run, why (empty otherwise). Validates the args like the call (throws the same errors). No GPU work.
struct AsyncTpDecision {
  AsyncTpEngine engine = AsyncTpEngine::kUnfused;
  AsyncTpTransport transport = AsyncTpTransport::kCopyEngine;
  bool fused = false;
  std::string reason;
};
AsyncTpDecision resolve_all_gather_matmul(const Communicator& comm, const AllGatherMatmulArgs& args);
AsyncTpDecision resolve_matmul_reduce_scatter(const Communicator& comm, const MatmulReduceScatterArgs& args);

// Grows the communicator's async-TP workspace (collective: every rank calls it with the same sizes) so calls whose
// gathered A (AG) or full A @ B output (RS) fit in these bytes need no allocation: call it before capturing a graph.
void reserve_async_tp(const Communicator& comm, std::size_t ag_gathered_bytes, std::size_t rs_output_bytes);

}  // namespace tpcomm
