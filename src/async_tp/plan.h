// Pure host logic of the async-TP ops (no CUDA calls; CPU-tested in tests/async_tp/plan_test.cpp): argument
// validation, the mapping of gather/scatter dims of 3D+ tensors onto 2D (batched) GEMM chunks, FP8 scale-mode
// detection, and the engine choice.
//
// Geometry.
//  AG: A_shard (s0 .. s_{n-2}, K) gathered along d = gather_dim. View it as (outer, inner, K) with
//      outer = s0*..*s_{d-1}, inner = s_d*..*s_{n-2}; the gathered (and output) tensor is then (outer, W, inner, .):
//      rank p's shard lands, for every outer index o, at rows [o*W*inner + p*inner, +inner). One chunk = rank p's
//      shard = a batched GEMM of `outer` batches of (inner x K) @ (K x N), output batch stride W*inner*N.
//  RS: A (s0 .. s_{n-2}, k), output (s0 .. s_d/W .. s_{n-2}, N), d = scatter_dim.
//      d < n-1: outer = s0*..*s_{d-1}, c = (s_d/W) * s_{d+1}*..*s_{n-2}; chunk q (owned by rank q) is, for every outer
//               index o, A rows [o*W*c + q*c, +c): a batched GEMM of `outer` batches of (c x k) @ (k x N), written
//               contiguously as (outer, c, N) = the owner's output layout.
//      d = n-1 (scatter N): chunk q = all rows times B's columns [q*N/W, +N/W).
#pragma once

#include <cstdint>
#include <string>

#include "tpcomm/async_tp.h"

namespace tpcomm::detail {

// How a GEMM operand is laid out (row-major semantics: D (m x n) = A (m x k) @ B (k x n)).
struct BLayout {
  bool col_major = false;  // B stored (n, k) row-major (the weight layout; FP8 requires it)
  int64_t ld = 0;          // row stride (row-major: >= n) or column stride (col-major: >= k), elements
};

// Validates a B view (k x n, one unit stride) and returns its layout. Throws kInvalidArgument naming `arg`.
BLayout check_b(const TensorView& b, int64_t k, const char* arg);

struct AgPlan {
  int world = 1;
  int64_t outer = 1, inner = 0, K = 0;
  int64_t shard_rows = 0;  // outer * inner
  int num_b = 1;
  int64_t N[kMaxFusedB] = {};
  BLayout b_layout[kMaxFusedB];
  DType a_dtype = DType::kBFloat16, b_dtype = DType::kBFloat16, out_dtype[kMaxFusedB] = {};
  bool fp8 = false;
  ScaleMode a_scale = ScaleMode::kNone;
  ScaleMode b_scale[kMaxFusedB] = {};
  int64_t a_scale_ld = 0;  // blockwise: the M-major leading dim of the A scale tensor
  int64_t b_scale_ld[kMaxFusedB] = {};
  bool has_bias[kMaxFusedB] = {};
  bool return_a = false;
  std::size_t a_elem = 2;
  std::size_t shard_bytes = 0;        // one rank's A shard
  std::size_t scale_slot_bytes = 0;   // one rank's gathered scale slot (0 when scales are not gathered)
};

// Validates AllGatherMatmulArgs against the world size; throws kInvalidArgument naming the argument.
AgPlan plan_all_gather_matmul(const AllGatherMatmulArgs& args, int world);

struct RsPlan {
  int world = 1;
  bool scatter_n = false;          // scatter along the last dim
  int64_t outer = 1, c = 0;        // rows mode (see above)
  int64_t M = 0, k = 0, N = 0;     // A flattened to (M, k); N of B
  int64_t chunk_n = 0;             // columns of one chunk (N, or N/W when scatter_n)
  int64_t chunk_rows = 0;          // rows of one chunk's output (outer*c, or M)
  BLayout b_layout;
  DType a_dtype = DType::kBFloat16, b_dtype = DType::kBFloat16, out_dtype = DType::kBFloat16;
  bool fp8 = false;
  ScaleMode a_scale = ScaleMode::kNone, b_scale = ScaleMode::kNone;
  int64_t a_scale_ld = 0, b_scale_ld = 0;
  bool has_bias = false;
  std::size_t out_elem = 2;
  std::size_t chunk_bytes = 0;     // one chunk's partial output (chunk_rows x chunk_n, out dtype)
};

RsPlan plan_matmul_reduce_scatter(const MatmulReduceScatterArgs& args, int world);

// FP8 scale-mode detection (PyTorch's rules, see ScaleMode). `rows_shard`/`rows_gathered`: A rows of the shard and
// of the gathered tensor (leading dims flattened); for B, rows = K and cols = N. Throws kInvalidArgument naming `arg`
// when the shape matches no mode.
ScaleMode detect_ag_a_scale(const TensorView& scale, const TensorView& a_shard, int gather_dim, int world, int64_t K);
ScaleMode detect_b_scale(const TensorView& scale, int64_t K, int64_t N, const char* arg);
ScaleMode detect_rs_a_scale(const TensorView& scale, const TensorView& a, int64_t k);

// Engine choice (kAuto) for a validated plan; `why` receives the reason a fused engine is not possible.
struct EngineQuery {
  bool fast_path = true;            // the communicator's peer path works
  std::string fast_path_reason;     // why not
  bool loopback = false;
  bool native_built = true;         // the native kernel exists for this dtype/scale
  std::string native_reason;        // native_ag_gemm_unsupported() for this plan, or why native does not apply
};
AsyncTpDecision decide_ag(const AgPlan& plan, const AsyncTpOptions& opts, const EngineQuery& q);
AsyncTpDecision decide_rs(const RsPlan& plan, const AsyncTpOptions& opts, const EngineQuery& q);

// The order in which rank `rank` consumes the W chunks of an all-gather (its own first, then the chunk that
// arrives first: peers push in rotated order, rank q sends to q+1 first, so rank r receives r-1 first).
int ag_chunk_at(int step, int rank, int world);
// The order in which rank `rank` computes reduce-scatter chunks (peers' chunks first so their transfers overlap the
// remaining GEMMs, rank+1 first, its own last).
int rs_chunk_at(int step, int rank, int world);

}  // namespace tpcomm::detail
