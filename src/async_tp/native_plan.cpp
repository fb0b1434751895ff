// Host logic of the native async-TP GEMM: schedule and checks (native_plan.h), and the support query.
#include "async_tp/native_plan.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

namespace tpcomm::detail {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

std::string num(int64_t v) { return std::to_string(v); }

}  // namespace

NativeTileShape native_tile_shape(const NativeAgGemmParams& p) {
  if (p.ab_dtype == DType::kFloat8E4M3) return kNativeTileFp8;
  return p.tile_config == 1 ? kNativeTileBf16Coop : kNativeTileBf16Pingpong;
}

NativeSchedule make_native_schedule(int64_t M, int64_t N, int num_chunks, int pivot_chunk, const NativeTileShape& tile,
                                    int band) {
  NativeSchedule s;
  s.M = M;
  s.num_chunks = num_chunks;
  s.chunk_rows = M / num_chunks;
  s.tile_m = tile.m;
  s.cluster_m = tile.cluster_m;
  s.tiles_m = static_cast<int32_t>(ceil_div(M, tile.m));
  s.tiles_n = static_cast<int32_t>(ceil_div(N, tile.n));
  s.groups = static_cast<int32_t>(ceil_div(s.tiles_m, tile.cluster_m));
  s.band = std::clamp(band > 0 ? band : kNativeDefaultBand, 1, s.groups);
  // First m tile starting at or after the pivot chunk's first row: a tile that straddles the previous chunk and the
  // pivot chunk would wait for the previous (a peer's) chunk, so it comes last instead.
  const int64_t pivot_row = static_cast<int64_t>(pivot_chunk) * s.chunk_rows;
  s.first_tile = static_cast<int32_t>(ceil_div(pivot_row, tile.m) % s.tiles_m);
  s.num_work = s.groups * s.tiles_n;
  return s;
}

std::string native_invalid_argument(const NativeAgGemmParams& p) {
  if (p.a == nullptr) return "a: null pointer";
  if (p.b == nullptr) return "b: null pointer";
  if (p.d == nullptr) return "d: null pointer";
  if (p.M <= 0 || p.M > kInt32Max) return "M: must be in [1, 2^31), got " + num(p.M);
  if (p.N <= 0 || p.N > kInt32Max) return "N: must be in [1, 2^31), got " + num(p.N);
  if (p.K <= 0 || p.K > kInt32Max) return "K: must be in [1, 2^31), got " + num(p.K);
  if (p.lda != 0 && p.lda < p.K) return "lda: " + num(p.lda) + " is below K = " + num(p.K);
  if (p.ldb != 0 && p.ldb < p.K) return "ldb: " + num(p.ldb) + " is below K = " + num(p.K);
  if (p.ldd != 0 && p.ldd < p.N) return "ldd: " + num(p.ldd) + " is below N = " + num(p.N);
  if (p.num_chunks < 1) return "num_chunks: must be >= 1, got " + num(p.num_chunks);
  if (p.M % p.num_chunks != 0)
    return "M: " + num(p.M) + " is not a multiple of num_chunks = " + num(p.num_chunks);
  if (p.pivot_chunk < 0 || p.pivot_chunk >= p.num_chunks)
    return "pivot_chunk: " + num(p.pivot_chunk) + " is outside [0, num_chunks = " + num(p.num_chunks) + ")";
  if (p.chunks_per_rank < 1 || p.num_chunks % p.chunks_per_rank != 0)
    return "chunks_per_rank: " + num(p.chunks_per_rank) + " does not divide num_chunks = " + num(p.num_chunks);
  if (p.chunk_signals == nullptr) return "chunk_signals: null pointer";
  if (reinterpret_cast<uintptr_t>(p.chunk_signals) % 4 != 0) return "chunk_signals: not 4-byte aligned";
  if (p.sync.error == nullptr) return "sync.error: null pointer";
  if (p.sync.abort == nullptr) return "sync.abort: null pointer";
  if (p.sync.timeout_ns == 0) return "sync.timeout_ns: must be positive";
  if (p.scale == NativeScale::kTensorwise || p.scale == NativeScale::kRowwise) {
    if (p.a_scale == nullptr) return "a_scale: null pointer (scale mode needs it)";
    if (p.b_scale == nullptr) return "b_scale: null pointer (scale mode needs it)";
    if (reinterpret_cast<uintptr_t>(p.a_scale) % 4 != 0) return "a_scale: not 4-byte aligned";
    if (reinterpret_cast<uintptr_t>(p.b_scale) % 4 != 0) return "b_scale: not 4-byte aligned";
  } else if (p.scale != NativeScale::kNone) {
    return "scale: unknown value " + num(static_cast<int>(p.scale));
  }
  if (p.max_ctas < 0) return "max_ctas: must be >= 0, got " + num(p.max_ctas);
  if (p.raster_band < 0) return "raster_band: must be >= 0, got " + num(p.raster_band);
  if (p.tile_config != 0 && p.tile_config != 1) return "tile_config: must be 0 or 1, got " + num(p.tile_config);
  return {};
}

std::string native_unsupported_host(const NativeAgGemmParams& p) {
  if (p.ab_dtype != DType::kBFloat16 && p.ab_dtype != DType::kFloat8E4M3)
    return std::string("ab_dtype: the native GEMM is built for bf16 and e4m3 only, got ") + dtype_name(p.ab_dtype);
  if (p.d_dtype != DType::kBFloat16)
    return std::string("d_dtype: the native GEMM writes bf16 only, got ") + dtype_name(p.d_dtype);
  if (p.ab_dtype == DType::kBFloat16 && p.scale != NativeScale::kNone)
    return "scale: bf16 inputs take no scales (scale must be kNone)";
  const int64_t es = static_cast<int64_t>(dtype_size(p.ab_dtype));
  const int64_t lda = p.lda ? p.lda : p.K, ldb = p.ldb ? p.ldb : p.K, ldd = p.ldd ? p.ldd : p.N;
  // TMA: global addresses 16-byte aligned, every stride but the innermost a multiple of 16 bytes.
  if (!aligned16(p.a)) return "a: not 16-byte aligned (TMA)";
  if (!aligned16(p.b)) return "b: not 16-byte aligned (TMA)";
  if (!aligned16(p.d)) return "d: not 16-byte aligned (TMA)";
  if ((lda * es) % 16 != 0)
    return "lda: row stride of A (" + num(lda) + " elements) is not a multiple of 16 bytes (TMA)";
  if ((ldb * es) % 16 != 0)
    return "ldb: column stride of B (" + num(ldb) + " elements) is not a multiple of 16 bytes (TMA)";
  if ((ldd * 2) % 16 != 0)
    return "ldd: row stride of D (" + num(ldd) + " elements) is not a multiple of 16 bytes (TMA)";
  if (p.tile_config == 1 && p.ab_dtype != DType::kBFloat16) return "tile_config: 1 (128x256x64 cooperative) is built for bf16 only";
  if (p.max_ctas == 1) return "max_ctas: 1 is below one cluster (the kernel runs CTAs in pairs)";
  const NativeTileShape t = native_tile_shape(p);
  const int64_t work = ceil_div(ceil_div(p.M, t.m), t.cluster_m) * ceil_div(p.N, t.n);
  if (work > kInt32Max) return "M, N: too many output tiles (" + num(work) + " clusters of work)";
  return {};
}

std::string native_ag_gemm_unsupported(const NativeAgGemmParams& p, int device) {
  std::string why = native_invalid_argument(p);
  if (!why.empty()) return why;
  why = native_unsupported_host(p);
  if (!why.empty()) return why;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();  // the failed query must not linger as the thread's last error
    return "device " + std::to_string(device) + ": its compute capability cannot be read";
  }
  if (major != 9 || minor != 0)
    return "device " + std::to_string(device) + ": compute capability " + std::to_string(major) + "." +
           std::to_string(minor) + " (the native GEMM is built for sm_90a only)";
  return {};
}

}  // namespace tpcomm::detail
