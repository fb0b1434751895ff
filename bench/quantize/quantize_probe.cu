// tpcomm-bench quantize --probe: memory-path microbenchmarks that separate "what the machine does" from "what the
// quantize kernels do": SM copy kernels with different store widths and cache policies, a TMA (bulk-copy engine)
// store path, read-only and write-only kernels, cudaMemcpyAsync and cudaMemsetAsync, all on the same buffers.
// Each line reports GB/s counting bytes read + bytes written.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "quantize/quantize_probe.h"

namespace tpcomm::bench {
namespace {

constexpr int kProbeThreads = 256;

template <int kPolicy>  // 0 = st.global (wb), 1 = st.global.cs, 2 = st.global.wt
__device__ __forceinline__ void st16(uint4* p, uint4 v) {
  if constexpr (kPolicy == 0) *p = v;
  else if constexpr (kPolicy == 1) __stcs(p, v);
  else __stwt(p, v);
}

template <int kPolicy>
__global__ void probe_copy16(const uint4* __restrict__ in, uint4* __restrict__ out, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = in[i + u * stride];
#pragma unroll
    for (int u = 0; u < 4; ++u) st16<kPolicy>(out + i + u * stride, v[u]);
  }
  for (; i < n; i += stride) st16<kPolicy>(out + i, in[i]);
}

// One 16-byte chunk per thread, one short block per 256 chunks (the shape of a simple elementwise kernel).
__global__ void probe_copy16_once(const uint4* __restrict__ in, uint4* __restrict__ out, size_t n) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = in[i];
}

template <int kPolicy>  // 8-byte stores of the low half: 2 bytes read per byte written
__global__ void probe_cast21(const uint4* __restrict__ in, uint2* __restrict__ out, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const uint4 v = in[i];
    const uint2 o = make_uint2(v.x ^ v.y, v.z ^ v.w);
    if constexpr (kPolicy == 0) out[i] = o;
    else __stcs(out + i, o);
  }
}

// Dequantization-shaped traffic: each 16-byte output vector comes from kIn (8 or 4) input bytes (fp8 -> bf16
// reads 1 byte per 2 written, e2m1 -> bf16 1 per 4), 4 vectors per thread with all loads first (the shape of
// the dequant kernels). Shows the machine's rate for write-heavy mixes, which the 1 GiB copy does not.
template <int kIn>
__global__ void probe_expand(const uint8_t* __restrict__ in, uint4* __restrict__ out, size_t n) {
  const size_t base = blockIdx.x * size_t(blockDim.x) * 4 + threadIdx.x;
  uint32_t w[4][kIn / 4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const size_t i = base + u * blockDim.x;
    if (i >= n) continue;
    if constexpr (kIn == 8) {
      const uint2 v = reinterpret_cast<const uint2*>(in)[i];
      w[u][0] = v.x;
      w[u][1] = v.y;
    } else {
      w[u][0] = reinterpret_cast<const uint32_t*>(in)[i];
    }
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const size_t i = base + u * blockDim.x;
    if (i >= n) continue;
    const uint32_t a = w[u][0], b = kIn == 8 ? w[u][kIn / 4 - 1] : ~w[u][0];
    out[i] = make_uint4(a, b, a ^ b, a + b);
  }
}

__global__ void probe_write16(uint4* __restrict__ out, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride) out[i] = make_uint4(i, 1, 2, 3);
}

__global__ void probe_read16(const uint4* __restrict__ in, size_t n, uint32_t* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = in[i + u * stride];
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

// Copy through shared memory with TMA bulk stores (cp.async.bulk.global.shared::cta): each block stages 8 KiB
// with ordinary loads, then one thread hands it to the bulk-copy engine. Two buffers alternate.
constexpr int kTmaChunk = 8192;
__global__ void __launch_bounds__(kProbeThreads) probe_copy_tma(const uint4* __restrict__ in, uint8_t* __restrict__ out,
                                                                size_t nbytes) {
  __shared__ alignas(128) uint4 buf[2][kTmaChunk / 16];
  const size_t nchunks = nbytes / kTmaChunk;
  int b = 0;
  for (size_t c = blockIdx.x; c < nchunks; c += gridDim.x, b ^= 1) {
    if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
    __syncthreads();
    const uint4* src = in + c * (kTmaChunk / 16);
    uint4 v[kTmaChunk / 16 / kProbeThreads];
#pragma unroll
    for (int u = 0; u < kTmaChunk / 16 / kProbeThreads; ++u) v[u] = src[threadIdx.x + u * kProbeThreads];
#pragma unroll
    for (int u = 0; u < kTmaChunk / 16 / kProbeThreads; ++u) buf[b][threadIdx.x + u * kProbeThreads] = v[u];
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (threadIdx.x == 0) {
      const uint32_t saddr = static_cast<uint32_t>(__cvta_generic_to_shared(&buf[b][0]));
      asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(out + c * kTmaChunk), "r"(saddr),
                   "r"(kTmaChunk)
                   : "memory");
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
  }
  if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

}  // namespace

std::vector<ProbeResult> run_memory_probe(uint8_t* a, uint8_t* b, size_t bytes, bool once) {
  int sms = 0;
  BENCH_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaStream_t st;
  BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  uint32_t* sink = nullptr;
  BENCH_CUDA(cudaMalloc(&sink, 4));
  const size_t n16 = bytes / 16;
  const unsigned grid = static_cast<unsigned>(sms * 8);
  const auto* in16 = reinterpret_cast<const uint4*>(a);
  auto* out16 = reinterpret_cast<uint4*>(b);
  struct P {
    std::string name;
    double moved;  // bytes read + written
    std::function<void()> fn;
  };
  std::vector<P> probes = {
      {"sm_copy16_wb", 2.0 * bytes, [&] { probe_copy16<0><<<grid, kProbeThreads, 0, st>>>(in16, out16, n16); }},
      {"sm_copy16_cs", 2.0 * bytes, [&] { probe_copy16<1><<<grid, kProbeThreads, 0, st>>>(in16, out16, n16); }},
      {"sm_copy16_wt", 2.0 * bytes, [&] { probe_copy16<2><<<grid, kProbeThreads, 0, st>>>(in16, out16, n16); }},
      {"sm_copy16_once", 2.0 * bytes,
       [&] { probe_copy16_once<<<static_cast<unsigned>(n16 / kProbeThreads), kProbeThreads, 0, st>>>(in16, out16, n16); }},
      {"sm_copy_tma_store", 2.0 * bytes, [&] { probe_copy_tma<<<grid, kProbeThreads, 0, st>>>(in16, b, bytes); }},
      {"sm_cast21_wb", 1.5 * bytes,
       [&] { probe_cast21<0><<<grid, kProbeThreads, 0, st>>>(in16, reinterpret_cast<uint2*>(b), n16); }},
      {"sm_cast21_cs", 1.5 * bytes,
       [&] { probe_cast21<1><<<grid, kProbeThreads, 0, st>>>(in16, reinterpret_cast<uint2*>(b), n16); }},
      {"sm_expand12", 1.5 * bytes,
       [&] { probe_expand<8><<<static_cast<unsigned>((n16 + 4 * kProbeThreads - 1) / (4 * kProbeThreads)), kProbeThreads, 0, st>>>(a, out16, n16); }},
      {"sm_expand14", 1.25 * bytes,
       [&] { probe_expand<4><<<static_cast<unsigned>((n16 + 4 * kProbeThreads - 1) / (4 * kProbeThreads)), kProbeThreads, 0, st>>>(a, out16, n16); }},
      {"sm_write16", 1.0 * bytes, [&] { probe_write16<<<grid, kProbeThreads, 0, st>>>(out16, n16); }},
      {"sm_read16", 1.0 * bytes, [&] { probe_read16<<<grid, kProbeThreads, 0, st>>>(in16, n16, sink); }},
      {"cudaMemcpyAsync_d2d", 2.0 * bytes,
       [&] { BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st)); }},
      {"cudaMemsetAsync", 1.0 * bytes, [&] { BENCH_CUDA(cudaMemsetAsync(b, 0, bytes, st)); }},
  };
  std::vector<ProbeResult> out;
  for (auto& p : probes) {
    double us = 0;
    if (once) {
      p.fn();
      BENCH_CUDA(cudaStreamSynchronize(st));
    } else {
      us = time_eager_us(st, p.fn, 4, 5, 2);
    }
    BENCH_CUDA(cudaGetLastError());
    out.push_back({p.name, us, once ? 0.0 : p.moved / (us * 1e3)});
  }
  cudaFree(sink);
  cudaStreamDestroy(st);
  return out;
}

}  // namespace tpcomm::bench
