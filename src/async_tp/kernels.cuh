// Device kernels of the async-TP engines (raw pointers, one params struct each). The GEMMs themselves are cuBLASLt
// (decomposed engine) or src/async_tp/native_gemm.cu (native engine); these are the glue around them:
//   atp_barrier_kernel   start-of-call cross-rank barrier (every peer finished reading the staging buffers it
//                        shares with us in the previous call), with a shape tag so mismatched calls are caught;
//   atp_wait_kernel      one block waits for a list of chunk signals (timeout -> error naming the rank), then
//                        resets them to 0 (one block only, so no other block can still be reading them);
//   atp_push_kernel      SM transport: copies bytes into a peer's buffer on a few CTAs; the last CTA to finish
//                        publishes the chunk signal (release, system scope);
//   atp_rs_reduce_kernel sums the W partials of this rank's output chunk in rank order 0..W-1 in fp32, applies avg
//                        and bias, rounds once;
//   atp_copy2d_kernel    gathers scale slices into 16-byte-aligned staging (cuBLASLt needs aligned scale pointers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tpcomm/device/sync.cuh"

namespace tpcomm::detail {

constexpr int kAtpMaxRanks = 8;

struct AtpBarrierParams {
  device::SyncContext ctx;
  device::BlockBarrier bar;
  uint32_t* epoch;  // local device counter of this communicator's async-TP barriers
  uint32_t tag;     // hash of the op and its shapes: equal on every rank, else kMismatch
};

__global__ void atp_barrier_kernel(AtpBarrierParams p) {
  __shared__ uint32_t s_epoch;
  if (threadIdx.x == 0) s_epoch = *p.epoch + 1;
  __syncthreads();
  const uint32_t e = s_epoch;
  device::block_barrier(p.ctx, p.bar, e, p.tag);
  if (threadIdx.x == 0) *p.epoch = e;
}

struct AtpWaitParams {
  device::SyncContext ctx;
  uint32_t* signals;            // local signal array
  int index[kAtpMaxRanks];      // signals[index[i]] must become non-zero
  int peer[kAtpMaxRanks];       // the rank that sets it (for the timeout report)
  int count;
};

__global__ void atp_wait_kernel(AtpWaitParams p) {
  const int i = threadIdx.x;
  bool ok = true;
  if (i < p.count) ok = device::wait_until(p.ctx, p.signals + p.index[i], p.peer[i], [](uint32_t v) { return v != 0u; });
  __syncthreads();
  // Reset for the next call: the peer writes the signal again only after the next call's start barrier, which this
  // rank enters after this kernel (stream order). On a timeout the signal is left as is (the call failed).
  if (i < p.count && ok) p.signals[p.index[i]] = 0u;
}

struct AtpPushParams {
  const uint4* src;
  uint4* dst;               // peer memory (or local on a loopback world)
  std::size_t vecs;         // 16-byte vectors
  const uint8_t* src_tail;  // bytes beyond the vectors (bytes % 16), copied by the last CTA
  uint8_t* dst_tail;
  int tail;
  uint32_t* counter;        // local, zero between launches
  uint32_t* signal;         // the peer's chunk signal, set to 1 when all CTAs are done
};

__global__ void atp_push_kernel(AtpPushParams p) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < p.vecs; i += 4 * stride) {
    const uint4 a = p.src[i], b = p.src[i + stride], c = p.src[i + 2 * stride], d = p.src[i + 3 * stride];
    p.dst[i] = a;
    p.dst[i + stride] = b;
    p.dst[i + 2 * stride] = c;
    p.dst[i + 3 * stride] = d;
  }
  for (; i < p.vecs; i += stride) p.dst[i] = p.src[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    // Make this CTA's stores visible system-wide before counting it; the last CTA publishes the signal.
    __threadfence_system();
    const uint32_t done = atomicAdd(p.counter, 1u);
    if (done == gridDim.x - 1) {
      for (int t = 0; t < p.tail; ++t) p.dst_tail[t] = p.src_tail[t];
      __threadfence_system();
      *p.counter = 0u;
      device::put_signal(p.signal, 1u);
    }
  }
}

template <typename T>
struct AtpNum;
template <>
struct AtpNum<float> {
  __device__ static float to_f(float v) { return v; }
  __device__ static float from_f(float v) { return v; }
};
template <>
struct AtpNum<__nv_bfloat16> {
  __device__ static float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct AtpNum<__half> {
  __device__ static float to_f(__half v) { return __half2float(v); }
  __device__ static __half from_f(float v) { return __float2half_rn(v); }
};

struct AtpReduceParams {
  const void* slots[kAtpMaxRanks];  // rank p's partial of this rank's chunk (local memory), rows x cols, dense
  void* out;                        // rows x cols, dense
  const void* bias;                 // cols values (already offset to this chunk's columns), or null
  int64_t rows, cols;
  int world;
  float scale;                      // 1 (sum) or 1/W (avg)
};

// 16-byte vectors of T; cols * sizeof(T) is a multiple of 16 (validated on the host).
template <typename T>
__global__ void atp_rs_reduce_kernel(AtpReduceParams p) {
  constexpr int kV = 16 / sizeof(T);
  const int64_t vec_per_row = p.cols / kV;
  const int64_t total = p.rows * vec_per_row;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) acc[j] = 0.0f;
    for (int r = 0; r < p.world; ++r) {  // fixed rank order 0..W-1: the same sum on every run
      const uint4 raw = reinterpret_cast<const uint4*>(p.slots[r])[v];
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kV; ++j) acc[j] += AtpNum<T>::to_f(x[j]);
    }
    const int64_t col0 = (v % vec_per_row) * kV;
    uint4 outv;
    T* o = reinterpret_cast<T*>(&outv);
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      float y = acc[j] * p.scale;
      if (p.bias) y += AtpNum<T>::to_f(static_cast<const T*>(p.bias)[col0 + j]);
      o[j] = AtpNum<T>::from_f(y);
    }
    reinterpret_cast<uint4*>(p.out)[v] = outv;
  }
}

struct AtpCopy2dParams {
  static constexpr int kMax = 16;
  const float* src[kMax];
  float* dst[kMax];
  int64_t rows[kMax], cols[kMax], src_ld[kMax], dst_ld[kMax];
  int count;
};

// Block b copies slice b % count; rows x cols floats, row r at src + r*src_ld -> dst + r*dst_ld.
__global__ void atp_copy2d_kernel(AtpCopy2dParams p) {
  for (int s = blockIdx.x; s < p.count; s += gridDim.x) {
    const int64_t n = p.rows[s] * p.cols[s];
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const int64_t r = i / p.cols[s], c = i % p.cols[s];
      p.dst[s][r * p.dst_ld[s] + c] = p.src[s][r * p.src_ld[s] + c];
    }
  }
}

struct AtpTransposeParams {
  const float* src;  // rows x cols, column-major (ld src_ld >= rows): the unswapped cuBLASLt GEMM's fp32 D
  void* dst;         // rows x cols, row-major (ld dst_ld >= cols), output dtype
  const void* bias;  // cols values of the output dtype, or null
  int64_t rows, cols, src_ld, dst_ld;
};

// 32x32 tiles through shared memory (33 columns: no bank conflicts on the transposed read); block (32, 8). The fp32
// D is rounded once, after the bias is added, as cuBLASLt's bias epilogue does.
template <typename T>
__global__ void atp_transpose_kernel(AtpTransposeParams p) {
  __shared__ float tile[32][33];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 32, c0 = static_cast<int64_t>(blockIdx.y) * 32;
  for (int j = threadIdx.y; j < 32; j += blockDim.y) {
    const int64_t c = c0 + j, r = r0 + threadIdx.x;
    if (r < p.rows && c < p.cols) tile[j][threadIdx.x] = p.src[c * p.src_ld + r];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += blockDim.y) {
    const int64_t r = r0 + j, c = c0 + threadIdx.x;
    if (r < p.rows && c < p.cols) {
      float v = tile[threadIdx.x][j];
      if (p.bias) v += AtpNum<T>::to_f(static_cast<const T*>(p.bias)[c]);
      static_cast<T*>(p.dst)[r * p.dst_ld + c] = AtpNum<T>::from_f(v);
    }
  }
}

}  // namespace tpcomm::detail
