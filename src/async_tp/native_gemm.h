// The native async-TP GEMM: one persistent CUTLASS SM90 (TMA, warp-specialized) GEMM over the whole gathered A whose
// tile scheduler waits, before it hands out a tile, until every chunk of A that the tile's rows touch has landed
// (chunk_signals[c] != 0), visiting chunks starting at `pivot_chunk` (this rank's own shard, already local) so the
// GEMM starts at once and consumes the peers' chunks in the order they arrive. One launch, no wave quantization from
// splitting the GEMM per chunk. cuBLASLt 13 cannot do this (its atomic-sync chunk counters were removed in CUDA 13.0).
//
// Host-only header (no CUTLASS types): src/async_tp/native_gemm.cu implements it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "tpcomm/device/sync_types.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

enum class NativeScale : int { kNone = 0, kTensorwise = 1, kRowwise = 2 };

struct NativeAgGemmParams {
  // A: M x K row-major (lda = K), the gathered activations; chunk c is rows [c*M/num_chunks, (c+1)*M/num_chunks).
  const void* a = nullptr;
  // B: K x N column-major (ldb = K), i.e. the (N, K) row-major weight.
  const void* b = nullptr;
  // D: M x N row-major (ldd = N).
  void* d = nullptr;
  int64_t M = 0, N = 0, K = 0;
  DType ab_dtype = DType::kBFloat16;  // kBFloat16, or kFloat8E4M3 (A and B)
  DType d_dtype = DType::kBFloat16;   // kBFloat16
  // FP8 scales (f32): kTensorwise: a_scale[0], b_scale[0]; kRowwise: a_scale[M] (per row of A), b_scale[N] (per
  // column of D). D = (A * a_scale) @ (B * b_scale), accumulated in fp32.
  NativeScale scale = NativeScale::kNone;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  // Chunk signals, device memory (local), one uint32 per chunk: a tile of chunk c may load A once signal[c] != 0
  // (acquire). The kernel does not reset them (the caller does, after the GEMM, on the same stream).
  const uint32_t* chunk_signals = nullptr;
  int num_chunks = 1;
  int pivot_chunk = 0;
  // The rank whose data chunk c is (for the timeout report): chunk c comes from rank c.
  // A wait that exceeds sync.timeout_ns reports kDevTimeout naming the chunk's rank into sync.error, raises
  // sync.abort, and the kernel finishes without reading that chunk (the output is then undefined; the host raises).
  device::SyncContext sync{};
  int max_ctas = 0;  // 0 = one per SM
};

// Empty when the native kernel can run these params on `device`, else the reason (one line): dtype/layout not
// built, M not a multiple of num_chunks, alignment (TMA needs 16-byte aligned rows), architecture not sm_90.
std::string native_ag_gemm_unsupported(const NativeAgGemmParams& p, int device);

// Enqueues the kernel. Throws Error(kUnsupported) with native_ag_gemm_unsupported()'s reason, kCudaError on a launch
// failure. No allocation on the hot path (CUTLASS workspace, if any, comes from a cache grown outside capture).
void launch_native_ag_gemm(const NativeAgGemmParams& p, cudaStream_t stream);

}  // namespace tpcomm::detail
