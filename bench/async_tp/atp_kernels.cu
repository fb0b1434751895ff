#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "async_tp/atp_kernels.cuh"
#include "common.h"

namespace tpcomm::bench::atp {
namespace {

struct DevStats {
  unsigned int worst_row_bits;  // float bits of the worst row's relative error (non-negative floats order like their bits)
  double sum_sq_diff;
  double sum_sq_ref;
  unsigned long long nonfinite;
  unsigned long long mismatches;
  unsigned long long hash;
};
static_assert(sizeof(DevStats) <= 64, "scratch is 64 bytes");

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kThreads = 256;

// One block per row (grid-strided over rows).
__global__ void compare_kernel(const uint16_t* out, const uint16_t* ref, int64_t rows, int64_t cols, DevStats* st) {
  __shared__ double s_sd[kThreads / 32], s_sr[kThreads / 32];
  __shared__ unsigned long long s_nf[kThreads / 32], s_mm[kThreads / 32], s_h[kThreads / 32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    double sd = 0, sr = 0;
    unsigned long long nf = 0, mm = 0, h = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const std::size_t i = std::size_t(row) * cols + c;
      const uint16_t bo = out[i], br = ref[i];
      const float o = __uint_as_float(uint32_t(bo) << 16), r = __uint_as_float(uint32_t(br) << 16);
      if (bo != br) ++mm;
      h += mix64(bo ^ (i * 0x9E3779B97F4A7C15ull));
      if (!isfinite(o)) {
        ++nf;
      } else {
        const double d = double(o) - double(r);
        sd += d * d;
      }
      sr += double(r) * double(r);
    }
    sd = warp_sum(sd);
    sr = warp_sum(sr);
    nf = warp_sum(nf);
    mm = warp_sum(mm);
    h = warp_sum(h);
    const int w = threadIdx.x / 32;
    if ((threadIdx.x & 31) == 0) { s_sd[w] = sd; s_sr[w] = sr; s_nf[w] = nf; s_mm[w] = mm; s_h[w] = h; }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int k = 1; k < kThreads / 32; ++k) { sd += s_sd[k]; sr += s_sr[k]; nf += s_nf[k]; mm += s_mm[k]; h += s_h[k]; }
      atomicAdd(&st->sum_sq_diff, sd);
      atomicAdd(&st->sum_sq_ref, sr);
      atomicAdd(&st->nonfinite, nf);
      atomicAdd(&st->mismatches, mm);
      atomicAdd(&st->hash, h);
      const float rel = nf ? INFINITY : (sr > 0 ? float(sqrt(sd / sr)) : (sd > 0 ? INFINITY : 0.0f));
      atomicMax(&st->worst_row_bits, __float_as_uint(rel));
    }
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ float load_f(const T* p, std::size_t i);
template <> __device__ __forceinline__ float load_f<float>(const float* p, std::size_t i) { return p[i]; }
template <> __device__ __forceinline__ float load_f<__nv_bfloat16>(const __nv_bfloat16* p, std::size_t i) {
  return __bfloat162float(p[i]);
}

template <typename T>
__global__ void reduce_ranks_kernel(const T* in, int world, std::size_t n, __nv_bfloat16* out) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    float acc = load_f(in, i);
    for (int r = 1; r < world; ++r) acc += load_f(in, r * n + i);
    out[i] = __float2bfloat16_rn(acc);
  }
}

__device__ __forceinline__ double operand(const void* p, DType t, std::size_t i) {
  if (t == DType::kBFloat16) return double(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
  __nv_fp8_e4m3 v;
  v.__x = static_cast<const uint8_t*>(p)[i];
  return double(float(v));
}

struct DirectParams {
  const void* a;
  const float* a_scale;
  const void* b;
  const float* b_scale;
  const void* d;
  int64_t M, N, K;
  DType ab, dt;
  bool b_nk;
  ScaleKind scale;
  uint64_t seed;
};

// One block per sample; threads stride over K; float64 accumulation.
__global__ void direct_kernel(DirectParams p, DevStats* st) {
  const uint64_t r = mix64(p.seed * 0x9E3779B97F4A7C15ull + blockIdx.x);
  const int64_t m = static_cast<int64_t>(r % static_cast<uint64_t>(p.M));
  const int64_t n = static_cast<int64_t>((r >> 32) % static_cast<uint64_t>(p.N));
  const int64_t kb_count = (p.K + 127) / 128;
  double acc = 0;
  for (int64_t k = threadIdx.x; k < p.K; k += blockDim.x) {
    double a = operand(p.a, p.ab, std::size_t(m) * p.K + k);
    double b = operand(p.b, p.ab, p.b_nk ? std::size_t(n) * p.K + k : std::size_t(k) * p.N + n);
    switch (p.scale) {
      case ScaleKind::kTensor: a *= p.a_scale[0]; b *= p.b_scale[0]; break;
      case ScaleKind::kRow: a *= p.a_scale[m]; b *= p.b_scale[n]; break;
      case ScaleKind::kBlock:
        a *= p.a_scale[(k / 128) * p.M + m];
        b *= p.b_scale[(n / 128) * kb_count + k / 128];
        break;
      default: break;
    }
    acc += a * b;
  }
  __shared__ double s[kThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) s[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < kThreads / 32; ++k) acc += s[k];
    const std::size_t di = std::size_t(m) * p.N + n;
    const double got = p.dt == DType::kFloat32 ? double(static_cast<const float*>(p.d)[di])
                                               : double(__bfloat162float(static_cast<const __nv_bfloat16*>(p.d)[di]));
    if (!isfinite(got)) {
      atomicAdd(&st->nonfinite, 1ull);
    } else {
      atomicAdd(&st->sum_sq_diff, (got - acc) * (got - acc));
    }
    atomicAdd(&st->sum_sq_ref, acc * acc);
  }
}

__global__ void vary_kernel(__nv_bfloat16* p, int64_t rows, int64_t cols, uint64_t seed) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, cb = (i % cols) / 128;
    const int e = static_cast<int>(mix64(seed ^ (static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull + cb)) % 9) - 4;
    p[i] = __float2bfloat16_rn(ldexpf(__bfloat162float(p[i]), e));  // exact: a power of two times a bf16
  }
}

DevStats fetch(void* scratch, cudaStream_t s) {
  DevStats h{};
  BENCH_CUDA(cudaMemcpyAsync(&h, scratch, sizeof(DevStats), cudaMemcpyDeviceToHost, s));
  BENCH_CUDA(cudaStreamSynchronize(s));
  return h;
}

}  // namespace

double ErrStats::rel() const {
  if (nonfinite) return INFINITY;
  if (sum_sq_ref == 0) return sum_sq_diff == 0 ? 0 : INFINITY;
  return std::sqrt(sum_sq_diff / sum_sq_ref);
}

ErrStats compare_bf16(const void* out, const void* ref, int64_t rows, int64_t cols, void* scratch, cudaStream_t s) {
  BENCH_CUDA(cudaMemsetAsync(scratch, 0, sizeof(DevStats), s));
  const int grid = static_cast<int>(rows < 8192 ? rows : 8192);
  compare_kernel<<<grid > 0 ? grid : 1, kThreads, 0, s>>>(static_cast<const uint16_t*>(out),
                                                          static_cast<const uint16_t*>(ref), rows, cols,
                                                          static_cast<DevStats*>(scratch));
  BENCH_CUDA(cudaGetLastError());
  const DevStats h = fetch(scratch, s);
  ErrStats e;
  float worst;
  std::memcpy(&worst, &h.worst_row_bits, sizeof(worst));
  e.worst_row = worst;
  e.sum_sq_diff = h.sum_sq_diff;
  e.sum_sq_ref = h.sum_sq_ref;
  e.nonfinite = h.nonfinite;
  e.mismatches = h.mismatches;
  e.hash = h.hash;
  return e;
}

void reduce_ranks(const void* in, DType in_dtype, int world, std::size_t count, void* out, cudaStream_t s) {
  auto* o = static_cast<__nv_bfloat16*>(out);
  if (in_dtype == DType::kFloat32)
    reduce_ranks_kernel<<<1024, kThreads, 0, s>>>(static_cast<const float*>(in), world, count, o);
  else
    reduce_ranks_kernel<<<1024, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(in), world, count, o);
  BENCH_CUDA(cudaGetLastError());
}

void vary_magnitude(void* p, int64_t rows, int64_t cols, uint64_t seed, cudaStream_t s) {
  vary_kernel<<<1024, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(p), rows, cols, seed);
  BENCH_CUDA(cudaGetLastError());
}

DirectResult direct_check(const DirectCheck& c, void* scratch, cudaStream_t s) {
  DirectParams p{c.a, c.a_scale, c.b, c.b_scale, c.d, c.shape.M, c.shape.N, c.shape.K, c.shape.ab, c.shape.d,
                 c.shape.b_nk, c.shape.scale, c.seed};
  BENCH_CUDA(cudaMemsetAsync(scratch, 0, sizeof(DevStats), s));
  direct_kernel<<<c.samples, kThreads, 0, s>>>(p, static_cast<DevStats*>(scratch));
  BENCH_CUDA(cudaGetLastError());
  const DevStats h = fetch(scratch, s);
  DirectResult r;
  r.nonfinite = h.nonfinite;
  r.rel = h.nonfinite ? INFINITY : (h.sum_sq_ref > 0 ? std::sqrt(h.sum_sq_diff / h.sum_sq_ref) : 0);
  return r;
}

}  // namespace tpcomm::bench::atp
