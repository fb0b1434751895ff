// The native async-TP GEMM: one persistent CUTLASS SM90 (TMA, warp-specialized) GEMM over the whole gathered A whose
// tile scheduler waits, before it hands out a tile, until every chunk of A that the tile's rows touch has landed
// (chunk_signals[c] != 0), visiting chunks starting at `pivot_chunk` (this rank's own shard, already local) so the
// GEMM starts at once and consumes the peers' chunks in the order they arrive. One launch, no wave quantization from
// splitting. cuBLASLt 13 cannot do this (its atomic-sync chunk counters were removed in CUDA 13.0).
//
// Host-only header (no CUTLASS types). src/async_tp/native_gemm.cu holds the kernels and the launch,
// src/async_tp/native_plan.{h,cpp} the host logic (tile schedule, support checks), testable without a GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "tpcomm/device/sync_types.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

enum class NativeScale : int { kNone = 0, kTensorwise = 1, kRowwise = 2 };

struct NativeAgGemmParams {
  // A: M x K row-major (row stride lda, 0 = K), the gathered activations; chunk c is rows
  // [c*M/num_chunks, (c+1)*M/num_chunks).
  const void* a = nullptr;
  // B: K x N column-major (column stride ldb, 0 = K), i.e. the (N, K) row-major weight.
  const void* b = nullptr;
  // D: M x N row-major (row stride ldd, 0 = N; ldd > N writes a column slice of a wider output).
  void* d = nullptr;
  int64_t M = 0, N = 0, K = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  DType ab_dtype = DType::kBFloat16;  // kBFloat16, or kFloat8E4M3 (A and B)
  DType d_dtype = DType::kBFloat16;   // kBFloat16
  // FP8 scales (f32, device pointers, read by the kernel): kTensorwise: a_scale[0], b_scale[0]; kRowwise: a_scale[M]
  // (per row of A), b_scale[N] (per column of D). D = (A * a_scale) @ (B * b_scale), accumulated in fp32, rounded to
  // bf16 once. kNone with FP8 means unit scales; bf16 takes kNone only. With kRowwise, the rows of a_scale that belong
  // to chunk c must have landed before chunk c's signal is raised, like the rows of A (the epilogue reads them after
  // the tile's mainloop, which is ordered after the signal).
  NativeScale scale = NativeScale::kNone;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  // Chunk signals, device memory (local), one uint32 per chunk: a tile that touches rows of chunk c loads A only once
  // signal[c] != 0 (acquire, system scope). The kernel does not reset them (the caller does, after the GEMM, on the
  // same stream). Writers: cuStreamWriteValue32 after a copy on the same stream, or st.release.sys from a kernel.
  const uint32_t* chunk_signals = nullptr;
  int num_chunks = 1;
  // First chunk visited: the tiles whose rows start in it come first, then the following chunks, wrapping around.
  int pivot_chunk = 0;
  // Chunk c holds data of rank c / chunks_per_rank (num_chunks a multiple of it); that rank is the one a timeout
  // names. A wait that exceeds sync.timeout_ns reports kDevTimeout naming the chunk's rank into sync.error, raises
  // sync.abort, and stops waiting: the kernel then finishes normally with the output undefined (tiles of chunks that
  // did not arrive read whatever A holds); the host raises. Once sync.abort is set, no wait blocks any more.
  int chunks_per_rank = 1;
  device::SyncContext sync{};
  // Upper bound on the persistent grid's CTAs (0 = as many as fit on the device, one per SM). The kernel runs in
  // clusters of 2 CTAs, so a bound is rounded down to even and must be >= 2. Loopback worlds (W ranks' GEMMs on one
  // GPU) give each rank at most SMs / W so all ranks' kernels are resident together.
  int max_ctas = 0;
  // M-tile groups (of one cluster, 2 x 128 rows) per raster band: the tiles of a band are handed out along N, band
  // after band in the pivot order. 0 = the built-in default (tuned on one H200).
  int raster_band = 0;
  // Tile configuration: 0 = the default for the dtype (native_plan.h: bf16 128x128x64 ping-pong, FP8 128x128x128
  // cooperative); 1 = bf16 with PyTorch's 128x256x64 cooperative tiles (kept for A/B measurements).
  int tile_config = 0;
};

// Empty when the native kernel can run these params on `device`, else the reason (one line, naming the field):
// dtype/scale combination not built, pointers or strides that TMA cannot address (16-byte alignment), M not a
// multiple of num_chunks, a bad pivot or chunk count, missing scales or signals, max_ctas == 1, a device that is not
// sm_90 (the kernel is built for sm_90a only).
std::string native_ag_gemm_unsupported(const NativeAgGemmParams& p, int device);

// Enqueues the kernel on `stream` (no programmatic dependent launch: the kernel reads the signals and A only after
// every earlier kernel of the stream has finished). Throws Error(kInvalidArgument) for malformed params (null
// pointers, sizes, pivot, chunk counts), Error(kUnsupported) with native_ag_gemm_unsupported()'s reason otherwise,
// kCudaError on a launch failure. No allocation and no host synchronization on the hot path: per device, the kernel
// attributes and occupancy are computed once; per argument set, the CUTLASS params (TMA descriptors) are cached.
// The kernels need no CUTLASS workspace (a non-zero size is reported as kInternal). CUDA-graph capturable.
void launch_native_ag_gemm(const NativeAgGemmParams& p, cudaStream_t stream);

}  // namespace tpcomm::detail
