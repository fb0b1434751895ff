#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>

#include "collectives/bench_kernels.cuh"
#include "common.h"

namespace tpcomm::bench {
namespace {

__device__ __forceinline__ uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T>
__device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void fill_kernel(T* p, std::size_t n, uint64_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = mix(seed * 0x9E3779B97F4A7C15ull + i);
    p[i] = from_f<T>(static_cast<float>((r >> 40) * (1.0 / 16777216.0) * 2.0 - 1.0));
  }
}

struct Acc {
  unsigned long long mismatches;
  unsigned long long hash;
  unsigned int max_diff_bits;  // float bits of the max |diff| (non-negative floats order like their bits)
};

template <typename T>
__global__ void compare_kernel(const T* a, const T* b, std::size_t n, Acc* acc) {
  unsigned long long mism = 0, h = 0;
  float md = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    uint32_t ba = 0, bb = 0;
    memcpy(&ba, &a[i], sizeof(T));
    memcpy(&bb, &b[i], sizeof(T));
    if (ba != bb) ++mism;
    h += mix(ba ^ (i * 0x9E3779B97F4A7C15ull));
    const float d = fabsf(to_f(a[i]) - to_f(b[i]));
    md = (d != d) ? INFINITY : fmaxf(md, d);
  }
  atomicAdd(&acc->mismatches, mism);
  atomicAdd(&acc->hash, h);
  atomicMax(&acc->max_diff_bits, __float_as_uint(md));
}

template <typename T>
__global__ void to_f64_kernel(const T* in, std::size_t n, double* out) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<double>(to_f(in[i]));
}

struct ErrAcc {
  unsigned long long max_abs_bits;    // double bits of max |a - e| (non-negative doubles order like their bits)
  unsigned long long max_exact_bits;  // double bits of max |e|
  double sum_sq_err, sum_sq_exact;
  unsigned long long hash;
};

__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ unsigned long long warp_max(unsigned long long x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <typename T>
__global__ void error_kernel(const T* a, const double* e, std::size_t n, ErrAcc* acc) {
  double md = 0, me = 0, se = 0, sx = 0;
  unsigned long long h = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    uint32_t ba = 0;
    memcpy(&ba, &a[i], sizeof(T));
    h += mix(ba ^ (i * 0x9E3779B97F4A7C15ull));
    const double d = static_cast<double>(to_f(a[i])) - e[i];
    md = (d != d) ? INFINITY : fmax(md, fabs(d));
    me = fmax(me, fabs(e[i]));
    se += d * d;
    sx += e[i] * e[i];
  }
  const unsigned long long mdb = warp_max(static_cast<unsigned long long>(__double_as_longlong(md)));
  const unsigned long long meb = warp_max(static_cast<unsigned long long>(__double_as_longlong(me)));
  se = warp_sum(se);
  sx = warp_sum(sx);
  for (int o = 16; o > 0; o >>= 1) h += __shfl_xor_sync(0xffffffffu, h, o);
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&acc->max_abs_bits, mdb);
    atomicMax(&acc->max_exact_bits, meb);
    atomicAdd(&acc->sum_sq_err, se);
    atomicAdd(&acc->sum_sq_exact, sx);
    atomicAdd(&acc->hash, h);
  }
}

}  // namespace

void to_f64(const void* in, std::size_t count, DType dtype, double* out, cudaStream_t s) {
  const int blocks = 1024, threads = 256;
  switch (dtype) {
    case DType::kFloat32: to_f64_kernel<<<blocks, threads, 0, s>>>(static_cast<const float*>(in), count, out); break;
    case DType::kFloat16: to_f64_kernel<<<blocks, threads, 0, s>>>(static_cast<const __half*>(in), count, out); break;
    case DType::kBFloat16: to_f64_kernel<<<blocks, threads, 0, s>>>(static_cast<const __nv_bfloat16*>(in), count, out); break;
    default: std::fprintf(stderr, "to_f64: unsupported dtype\n"); std::exit(2);
  }
  BENCH_CUDA(cudaGetLastError());
}

ExactError error_vs_exact(const void* a, const double* exact, std::size_t count, DType dtype, cudaStream_t s) {
  ErrAcc* d = nullptr;
  BENCH_CUDA(cudaMalloc(&d, sizeof(ErrAcc)));
  BENCH_CUDA(cudaMemsetAsync(d, 0, sizeof(ErrAcc), s));
  const int blocks = 1024, threads = 256;  // multiples of 32: every warp is full for the shuffles
  switch (dtype) {
    case DType::kFloat32: error_kernel<<<blocks, threads, 0, s>>>(static_cast<const float*>(a), exact, count, d); break;
    case DType::kFloat16: error_kernel<<<blocks, threads, 0, s>>>(static_cast<const __half*>(a), exact, count, d); break;
    case DType::kBFloat16: error_kernel<<<blocks, threads, 0, s>>>(static_cast<const __nv_bfloat16*>(a), exact, count, d); break;
    default: std::fprintf(stderr, "error_vs_exact: unsupported dtype\n"); std::exit(2);
  }
  BENCH_CUDA(cudaGetLastError());
  ErrAcc h{};
  BENCH_CUDA(cudaMemcpyAsync(&h, d, sizeof(ErrAcc), cudaMemcpyDeviceToHost, s));
  BENCH_CUDA(cudaStreamSynchronize(s));
  BENCH_CUDA(cudaFree(d));
  double md, me;
  std::memcpy(&md, &h.max_abs_bits, sizeof(md));
  std::memcpy(&me, &h.max_exact_bits, sizeof(me));
  ExactError r;
  r.max_abs = md;
  r.max_rel = me > 0 ? md / me : md;
  r.rms_rel = h.sum_sq_exact > 0 ? std::sqrt(h.sum_sq_err / h.sum_sq_exact) : std::sqrt(h.sum_sq_err);
  r.hash = h.hash;
  return r;
}

void fill_random(void* ptr, std::size_t count, DType dtype, uint64_t seed, cudaStream_t s) {
  const int blocks = 1024, threads = 256;
  switch (dtype) {
    case DType::kFloat32: fill_kernel<<<blocks, threads, 0, s>>>(static_cast<float*>(ptr), count, seed); break;
    case DType::kFloat16: fill_kernel<<<blocks, threads, 0, s>>>(static_cast<__half*>(ptr), count, seed); break;
    case DType::kBFloat16: fill_kernel<<<blocks, threads, 0, s>>>(static_cast<__nv_bfloat16*>(ptr), count, seed); break;
    default: std::fprintf(stderr, "fill_random: unsupported dtype\n"); std::exit(2);
  }
  BENCH_CUDA(cudaGetLastError());
}

void poison(void* ptr, std::size_t bytes, cudaStream_t s) { BENCH_CUDA(cudaMemsetAsync(ptr, 0xFF, bytes, s)); }

CompareResult compare(const void* a, const void* b, std::size_t count, DType dtype, cudaStream_t s) {
  Acc* d = nullptr;
  BENCH_CUDA(cudaMalloc(&d, sizeof(Acc)));
  BENCH_CUDA(cudaMemsetAsync(d, 0, sizeof(Acc), s));
  const int blocks = 1024, threads = 256;
  switch (dtype) {
    case DType::kFloat32: compare_kernel<<<blocks, threads, 0, s>>>(static_cast<const float*>(a), static_cast<const float*>(b), count, d); break;
    case DType::kFloat16: compare_kernel<<<blocks, threads, 0, s>>>(static_cast<const __half*>(a), static_cast<const __half*>(b), count, d); break;
    case DType::kBFloat16: compare_kernel<<<blocks, threads, 0, s>>>(static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b), count, d); break;
    default: std::fprintf(stderr, "compare: unsupported dtype\n"); std::exit(2);
  }
  BENCH_CUDA(cudaGetLastError());
  Acc h{};
  BENCH_CUDA(cudaMemcpyAsync(&h, d, sizeof(Acc), cudaMemcpyDeviceToHost, s));
  BENCH_CUDA(cudaStreamSynchronize(s));
  BENCH_CUDA(cudaFree(d));
  float md;
  std::memcpy(&md, &h.max_diff_bits, sizeof(md));
  return {static_cast<double>(md), h.mismatches, h.hash};
}

}  // namespace tpcomm::bench
