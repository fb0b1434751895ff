// The native async-TP GEMM (src/async_tp/native_gemm.h) fed the way the all-gather feeds it: A starts poisoned (NaN)
// except the pivot chunk; another stream copies each remaining chunk into place and then raises its signal, in a
// random order with random delays -- either the copy engine (cudaMemcpyAsync + cuStreamWriteValue32 after a host-side
// sleep) or a one-block SM kernel (copy, __syncthreads, st.release.sys). A tile that read A before its chunk landed
// would carry NaN into D; D itself starts poisoned, so a tile never written shows too. The result is compared with
// cuBLASLt on the unpoisoned data (bf16) or with a float64 reference of the dequantized operands (FP8 tensorwise /
// rowwise). A signal that never comes must end the kernel with kDevTimeout naming the chunk's rank. The last test
// times the kernel against cuBLASLt with all signals preset and prints the numbers.
#include <gtest/gtest.h>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "async_tp/native_gemm.h"
#include "async_tp/native_plan.h"
#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/error.h"
#include "tpcomm/symmetric_memory.h"

using namespace tpcomm;
using tpcomm::detail::NativeAgGemmParams;
using tpcomm::detail::NativeScale;
namespace qref = tpcomm::quant::ref;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

// Host -> device copy that has landed when it returns (the test's streams are non-blocking: they do not wait for
// legacy-stream work).
cudaError_t h2d(void* dst, const void* src, size_t bytes) {
  return static_cast<cudaError_t>(test::copy_to_device(dst, src, bytes));
}

template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&p, count * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  size_t bytes() const { return n * sizeof(T); }
};

// The device-side error record and abort flag of tpcomm's sync layer, owned by the test.
struct SyncState {
  device::ErrorRecord* h_error = nullptr;
  device::ErrorRecord* d_error = nullptr;
  uint32_t* abort = nullptr;
  SyncState() {
    cudaHostAlloc(reinterpret_cast<void**>(&h_error), sizeof(device::ErrorRecord), cudaHostAllocMapped);
    std::memset(h_error, 0, sizeof(*h_error));
    cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_error), h_error, 0);
    cudaMalloc(&abort, 4);
    cudaMemset(abort, 0, 4);
    cudaDeviceSynchronize();
  }
  ~SyncState() {
    cudaFreeHost(h_error);
    cudaFree(abort);
  }
  device::SyncContext ctx(uint64_t timeout_ns) const { return device::SyncContext{d_error, abort, timeout_ns}; }
  // The host's view, as Communicator::check() turns the record into an error.
  uint32_t code() const { return reinterpret_cast<volatile device::ErrorRecord*>(h_error)->code; }
  int peer() const { return reinterpret_cast<volatile device::ErrorRecord*>(h_error)->peer; }
  uint32_t abort_flag() const {
    uint32_t v = 0;
    cudaMemcpy(&v, abort, 4, cudaMemcpyDeviceToHost);
    return v;
  }
};

int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

std::string skip_reason() {
  int dev = 0;
  cudaGetDevice(&dev);
  NativeAgGemmParams p;
  static uint32_t dummy_sig[4] __attribute__((aligned(16)));
  static device::ErrorRecord dummy_rec;
  static uint32_t dummy_abort;
  alignas(16) static char dummy[64];
  p.a = p.b = p.d = dummy;
  p.M = p.N = p.K = 128;
  p.chunk_signals = dummy_sig;
  p.sync = device::SyncContext{&dummy_rec, &dummy_abort, 1000};
  return detail::native_ag_gemm_unsupported(p, dev);
}

#define SKIP_IF_UNSUPPORTED()                                   \
  do {                                                          \
    const std::string why_ = skip_reason();                     \
    if (!why_.empty()) GTEST_SKIP() << "skipped: " << why_;     \
  } while (0)

std::vector<uint16_t> random_bf16(size_t n, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> h(n);
  for (auto& v : h) v = qref::float_to_bf16(static_cast<float>(rng.uniform(-1.0, 1.0)));
  return h;
}

// e4m3 codes of uniform(-448, 448) values (RNE): what an amax-scaled quantizer produces.
std::vector<uint8_t> random_e4m3(size_t n, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint8_t> h(n);
  for (auto& v : h) v = qref::fp8_encode(static_cast<float>(rng.uniform(-448.0, 448.0)), quant::Fp8Format::kE4M3);
  return h;
}

// ---- cuBLASLt reference: D (M x N row-major, bf16) = A (M x K row-major) . W^T, W (N x K row-major) ----
// Column-major view: D^T (N x M, ld N) = op_T(W as K x N, ld K) . (A as K x M, ld K). The descriptors and the
// heuristic's algorithm are made once per shape, so a timed call is only cublasLtMatmul.
struct LtGemm {
  cublasLtHandle_t h = nullptr;
  void* ws = nullptr;
  static constexpr size_t kWs = size_t(32) << 20;
  int64_t M = -1, N = -1, K = -1;
  bool fp8 = false;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t lw = nullptr, la = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  LtGemm() {
    cublasLtCreate(&h);
    cudaMalloc(&ws, kWs);
  }
  ~LtGemm() {
    release();
    cudaFree(ws);
    cublasLtDestroy(h);
  }
  void release() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lw) cublasLtMatrixLayoutDestroy(lw);
    if (op) cublasLtMatmulDescDestroy(op);
    op = nullptr;
    lw = la = ld = nullptr;
    M = N = K = -1;
  }
  // bf16 x bf16, or e4m3 x e4m3 with tensorwise (SCALAR_32F) scales given per call; bf16 output.
  bool plan(int64_t m, int64_t n, int64_t k, bool use_fp8) {
    if (m == M && n == N && k == K && use_fp8 == fp8) return true;
    release();
    if (cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return false;
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB));
    const cudaDataType_t in = use_fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    if (use_fp8) {  // scale pointers must be set before the heuristic query; the real ones are set per call
      static float* one = nullptr;
      if (!one) {
        cudaMalloc(&one, sizeof(float));
        const float v = 1.0f;
        cudaMemcpy(one, &v, sizeof(v), cudaMemcpyHostToDevice);
      }
      const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &one, sizeof(one));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &one, sizeof(one));
    }
    cublasLtMatrixLayoutCreate(&lw, in, k, n, k);
    cublasLtMatrixLayoutCreate(&la, in, k, m, k);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, m, n);
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWs, sizeof(kWs));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(h, op, lw, la, ld, ld, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
      std::printf("cuBLASLt heuristic for %s %lldx%lldx%lld: status %d, %d found\n", use_fp8 ? "e4m3" : "bf16",
                  (long long)m, (long long)n, (long long)k, static_cast<int>(hs), found);
      release();
      return false;
    }
    algo = res.algo;
    M = m;
    N = n;
    K = k;
    fp8 = use_fp8;
    return true;
  }
  bool run(const void* a, const void* w, void* d, int64_t m, int64_t n, int64_t k, cudaStream_t s) {
    if (!plan(m, n, k, false)) return false;
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(h, op, &alpha, w, lw, a, la, &beta, d, ld, d, ld, &algo, ws, kWs, s) ==
           CUBLAS_STATUS_SUCCESS;
  }
  // D = (A * a_scale[0]) . (W * w_scale[0])^T, e4m3 operands (cuBLASLt's A operand is W here).
  bool run_fp8(const void* a, const float* a_scale, const void* w, const float* w_scale, void* d, int64_t m, int64_t n,
               int64_t k, cudaStream_t s) {
    if (!plan(m, n, k, true)) return false;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale));
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t ms = cublasLtMatmul(h, op, &alpha, w, lw, a, la, &beta, d, ld, d, ld, &algo, ws, kWs, s);
    if (ms != CUBLAS_STATUS_SUCCESS) std::printf("cublasLtMatmul (e4m3): status %d\n", static_cast<int>(ms));
    return ms == CUBLAS_STATUS_SUCCESS;
  }
  // The chosen algorithm's tile, stages, cluster shape and split-K, as cuBLASLt's enum values.
  std::string algo_config() const {
    int32_t tile = -1, stages = -1, splitk = -1;
    uint16_t cluster = 0;
    size_t w = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
    return "tile_id " + std::to_string(tile) + " stages_id " + std::to_string(stages) + " cluster_id " +
           std::to_string(cluster) + " splitk " + std::to_string(splitk);
  }
};

// Keeps the GPU busy for `ns` so that the host's launch work for what follows is hidden from the timing events.
__global__ void gpu_sleep_kernel(uint64_t ns) {
  const uint64_t t0 = device::global_timer_ns();
  while (device::global_timer_ns() - t0 < ns) __nanosleep(1000);
}

// Elements of d outside |d - r| <= 2^-6 |r| + 2^-10 sigma (sigma = sqrt(K / 9): the spread of a sum of K products of
// two uniform(-1, 1) values). Two fp32-accumulated GEMMs rounded to bf16 differ by about one bf16 ulp (<= 2^-7 |r|);
// a stale or wrong A row gives errors of order sigma or NaN.
__global__ void count_bad_kernel(const __nv_bfloat16* d, const __nv_bfloat16* r, int64_t n, float sigma,
                                 unsigned long long* bad) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = __bfloat162float(d[i]), y = __bfloat162float(r[i]);
    const float err = fabsf(x - y), tol = ldexpf(fabsf(y), -6) + ldexpf(sigma, -10);
    if (!(err <= tol)) ++local;
  }
  if (local) atomicAdd(bad, local);
}

unsigned long long count_bad(const void* d, const void* r, int64_t n, int64_t K) {
  unsigned long long* dbad = nullptr;
  cudaMalloc(&dbad, sizeof(*dbad));
  cudaMemset(dbad, 0, sizeof(*dbad));
  count_bad_kernel<<<264, 256>>>(static_cast<const __nv_bfloat16*>(d), static_cast<const __nv_bfloat16*>(r), n,
                                 std::sqrt(static_cast<float>(K) / 9.0f), dbad);
  unsigned long long h = ~0ull;
  cudaMemcpy(&h, dbad, sizeof(h), cudaMemcpyDeviceToHost);
  cudaFree(dbad);
  return h;
}

// ---- feeders ----
// One block: for each chunk in order[], wait until delay_ns[i] after the kernel started, copy the chunk from src to
// dst, then raise its signal (release, system scope: what the block wrote, ordered by __syncthreads, is visible to
// whoever acquires the signal).
__global__ void feeder_kernel(uint8_t* dst, const uint8_t* src, int64_t chunk_bytes, const int* order,
                              const uint64_t* delay_ns, int n, uint32_t* signals) {
  const uint64_t t0 = device::global_timer_ns();
  for (int i = 0; i < n; ++i) {
    const int c = order[i];
    while (device::global_timer_ns() - t0 < delay_ns[i]) __nanosleep(1000);
    const uint4* s = reinterpret_cast<const uint4*>(src + c * chunk_bytes);
    uint4* d = reinterpret_cast<uint4*>(dst + c * chunk_bytes);
    for (int64_t j = threadIdx.x; j < chunk_bytes / 16; j += blockDim.x) d[j] = s[j];
    __syncthreads();
    if (threadIdx.x == 0) device::put_signal(signals + c, 1u);
    __syncthreads();
  }
}

void CUDART_CB sleep_us(void* arg) {
  std::this_thread::sleep_for(std::chrono::microseconds(reinterpret_cast<uintptr_t>(arg)));
}

enum class Feeder { kCopyEngine, kKernel };

// Everything one fed run needs: the true A (staging on the device, and a pinned host copy), the GEMM's A (poisoned,
// filled chunk by chunk), signals. The copy-engine feeder copies from the pinned host copy: a host-to-device copy
// runs on a copy engine. Same-device device-to-device copies do not reliably progress while the GEMM's persistent
// grid holds every SM: on nvidia-h200, seven 1 MiB cudaMemcpyAsync D2D copies on one stream (with or without host
// sleeps between them, and through cudaMemcpyBatchAsync with cudaMemcpyFlagPreferOverlapWithCompute) stalled at the
// second one until the waits timed out, while one 4 MiB copy completed.
struct FedRun {
  int64_t M, K, elem;
  int num_chunks, pivot;
  const void* staging;
  const void* host_staging;
  void* a;
  uint32_t* signals;
  cudaStream_t main, feed;
  Feeder feeder;
  uint64_t seed;
  // Resets A and the signals, copies the pivot chunk, and enqueues the feeder for the other chunks (random order,
  // random delays) on `feed`, ordered after the reset.
  void prepare() {
    const int64_t chunk_bytes = M / num_chunks * K * elem;
    cudaMemsetAsync(a, 0xFF, M * K * elem, main);  // NaN in bf16; 0xFF is NaN in e4m3 too
    cudaMemsetAsync(signals, 0, num_chunks * sizeof(uint32_t), main);
    cudaMemcpyAsync(static_cast<uint8_t*>(a) + pivot * chunk_bytes, static_cast<const uint8_t*>(staging) + pivot * chunk_bytes,
                    chunk_bytes, cudaMemcpyDeviceToDevice, main);
    memset32(main, signals + pivot, 1u, 1);
    cudaEvent_t ready;
    cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    cudaEventRecord(ready, main);
    cudaStreamWaitEvent(feed, ready, 0);
    cudaEventDestroy(ready);
    std::vector<int> order;
    for (int c = 0; c < num_chunks; ++c)
      if (c != pivot) order.push_back(c);
    test::SplitMix64 rng(seed);
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
    if (order.empty()) return;
    if (feeder == Feeder::kCopyEngine) {
      for (size_t i = 0; i < order.size(); ++i) {
        const uintptr_t us = (i == 0 ? 300 : 0) + rng.next() % 700;
        cudaLaunchHostFunc(feed, sleep_us, reinterpret_cast<void*>(us));
        const int c = order[i];
        cudaMemcpyAsync(static_cast<uint8_t*>(a) + c * chunk_bytes,
                        static_cast<const uint8_t*>(host_staging) + c * chunk_bytes, chunk_bytes,
                        cudaMemcpyHostToDevice, feed);
        stream_write_value32(feed, signals + c, 1u);
      }
    } else {
      std::vector<uint64_t> delays(order.size());
      uint64_t t = 200000;
      for (auto& d : delays) d = (t += 20000 + rng.next() % 300000);
      int* d_order = nullptr;
      uint64_t* d_delay = nullptr;
      cudaMallocAsync(&d_order, order.size() * sizeof(int), feed);
      cudaMallocAsync(&d_delay, delays.size() * sizeof(uint64_t), feed);
      cudaMemcpyAsync(d_order, order.data(), order.size() * sizeof(int), cudaMemcpyHostToDevice, feed);
      cudaMemcpyAsync(d_delay, delays.data(), delays.size() * sizeof(uint64_t), cudaMemcpyHostToDevice, feed);
      cudaStreamSynchronize(feed);  // pageable sources: the copies must be done before the vectors go away
      feeder_kernel<<<1, 256, 0, feed>>>(static_cast<uint8_t*>(a), static_cast<const uint8_t*>(staging), chunk_bytes,
                                          d_order, d_delay, static_cast<int>(order.size()), signals);
      cudaFreeAsync(d_order, feed);
      cudaFreeAsync(d_delay, feed);
    }
  }
};

// Pinned host memory holding a copy of `bytes` bytes of `src`.
struct PinnedCopy {
  void* p = nullptr;
  PinnedCopy(const void* src, size_t bytes) {
    if (cudaMallocHost(&p, bytes) == cudaSuccess) std::memcpy(p, src, bytes);
  }
  ~PinnedCopy() { cudaFreeHost(p); }
  PinnedCopy(const PinnedCopy&) = delete;
  PinnedCopy& operator=(const PinnedCopy&) = delete;
};

struct Streams {
  cudaStream_t main = nullptr, feed = nullptr;
  Streams() {
    cudaStreamCreateWithFlags(&main, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&feed, cudaStreamNonBlocking);
  }
  ~Streams() {
    cudaStreamDestroy(main);
    cudaStreamDestroy(feed);
  }
};

struct Shape {
  int64_t M, N, K;
  int chunks;
};

std::string shape_name(const Shape& s) {
  return std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K) + " chunks " +
         std::to_string(s.chunks);
}

// ---------------------------------------------------------------------------------------------------------------
TEST(NativeGemmGpu, Bf16FedInRandomOrderMatchesCublasLt) {
  SKIP_IF_UNSUPPORTED();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  // M per chunk 1024, 768, 192 (not a multiple of 128), 72 (tiles span two chunks), 480; N a multiple of 256, or not
  // (1000, 520, 776); tiles_m odd (576 / 128 = 4.5 -> 5 tiles, a phantom tile in the last cluster).
  const Shape shapes[] = {{1024, 1024, 512, 1}, {2048, 1536, 1024, 2}, {768, 1000, 256, 4},
                          {576, 520, 384, 8},   {4096, 2048, 1024, 8}, {1920, 776, 2048, 4}};
  const int sms = sm_count();
  Streams st;
  SyncState sync;
  LtGemm lt;
  int run = 0;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(shape_name(s));
    DevBuf<uint16_t> staging(s.M * s.K), a(s.M * s.K), b(s.N * s.K), d(s.M * s.N), ref(s.M * s.N);
    DevBuf<uint32_t> signals(s.chunks);
    ASSERT_TRUE(staging.p && a.p && b.p && d.p && ref.p && signals.p);
    const auto ha = random_bf16(staging.n, seed + 17 * s.M), hb = random_bf16(b.n, seed ^ (s.N * 31 + s.K));
    CUDA_OK(h2d(staging.p, ha.data(), staging.bytes()));
    CUDA_OK(h2d(b.p, hb.data(), b.bytes()));
    PinnedCopy pinned(ha.data(), staging.bytes());
    ASSERT_NE(pinned.p, nullptr);
    ASSERT_TRUE(lt.run(staging.p, b.p, ref.p, s.M, s.N, s.K, st.main));
    CUDA_OK(cudaStreamSynchronize(st.main));
    for (int pivot = 0; pivot < s.chunks; ++pivot, ++run) {
      const Feeder feeder = run % 2 ? Feeder::kKernel : Feeder::kCopyEngine;
      SCOPED_TRACE("pivot " + std::to_string(pivot) + (feeder == Feeder::kKernel ? " kernel feeder" : " copy engine") +
                   " tile_config " + std::to_string((run / 2) % 2));
      FedRun fr{s.M, s.K, 2, s.chunks, pivot, staging.p, pinned.p, a.p, signals.p, st.main, st.feed, feeder, seed + run};
      fr.prepare();
      CUDA_OK(cudaMemsetAsync(d.p, 0xFF, d.bytes(), st.main));
      NativeAgGemmParams p;
      p.a = a.p;
      p.b = b.p;
      p.d = d.p;
      p.M = s.M;
      p.N = s.N;
      p.K = s.K;
      p.chunk_signals = signals.p;
      p.num_chunks = s.chunks;
      p.pivot_chunk = pivot;
      p.sync = sync.ctx(uint64_t(10) * 1000000000ull);
      // The kernel feeder needs an SM of its own while the GEMM spins: leave two free. Some runs also use a small
      // grid, as a rank of a loopback world does.
      p.max_ctas = feeder == Feeder::kKernel ? sms - 2 : (run % 3 == 0 ? 16 : 0);
      p.raster_band = run % 4;  // 0 (default), 1, 2, 3
      p.tile_config = (run / 2) % 2;  // both bf16 kernels, each with both feeders
      detail::launch_native_ag_gemm(p, st.main);
      CUDA_OK(cudaStreamSynchronize(st.main));
      CUDA_OK(cudaStreamSynchronize(st.feed));
      ASSERT_EQ(sync.code(), 0u) << "peer " << sync.peer();
      EXPECT_EQ(count_bad(d.p, ref.p, s.M * s.N, s.K), 0ull);
    }
  }
}

// FP8 e4m3 x e4m3 -> bf16, tensorwise and rowwise, fed like the bf16 test, against float64 of the dequantized data.
TEST(NativeGemmGpu, Fp8FedInRandomOrderMatchesFloat64) {
  SKIP_IF_UNSUPPORTED();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Shape shapes[] = {{576, 520, 384, 8}, {1024, 776, 512, 2}, {384, 264, 272, 4}};
  Streams st;
  SyncState sync;
  int run = 0;
  for (const Shape& s : shapes) {
    for (NativeScale mode : {NativeScale::kTensorwise, NativeScale::kRowwise}) {
      SCOPED_TRACE(shape_name(s) + (mode == NativeScale::kRowwise ? " rowwise" : " tensorwise"));
      const auto ha = random_e4m3(s.M * s.K, seed + 3 * s.M + run), hb = random_e4m3(s.N * s.K, seed ^ (7 * s.N + run));
      test::SplitMix64 rng(seed + 101 * run);
      std::vector<float> sa(mode == NativeScale::kRowwise ? s.M : 1), sb(mode == NativeScale::kRowwise ? s.N : 1);
      for (auto& v : sa) v = static_cast<float>(std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.next() % 7) - 6));
      for (auto& v : sb) v = static_cast<float>(std::ldexp(rng.uniform(1.0, 2.0), static_cast<int>(rng.next() % 7) - 6));
      DevBuf<uint8_t> staging(ha.size()), a(ha.size()), b(hb.size());
      DevBuf<uint16_t> d(s.M * s.N);
      DevBuf<float> dsa(sa.size()), dsb(sb.size());
      DevBuf<uint32_t> signals(s.chunks);
      CUDA_OK(h2d(staging.p, ha.data(), ha.size()));
      PinnedCopy pinned(ha.data(), ha.size());
      ASSERT_NE(pinned.p, nullptr);
      CUDA_OK(h2d(b.p, hb.data(), hb.size()));
      CUDA_OK(h2d(dsa.p, sa.data(), dsa.bytes()));
      CUDA_OK(h2d(dsb.p, sb.data(), dsb.bytes()));
      // float64 reference and the magnitude sum_k |a_k b_k| per element
      std::vector<double> da(ha.size()), db(hb.size());
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t k = 0; k < s.K; ++k)
          da[m * s.K + k] = qref::fp8_decode(ha[m * s.K + k], quant::Fp8Format::kE4M3) * sa[sa.size() == 1 ? 0 : m];
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t k = 0; k < s.K; ++k)
          db[n * s.K + k] = qref::fp8_decode(hb[n * s.K + k], quant::Fp8Format::kE4M3) * sb[sb.size() == 1 ? 0 : n];
      std::vector<double> r(s.M * s.N), mag(s.M * s.N);
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          double acc = 0, mg = 0;
          const double* x = &da[m * s.K];
          const double* y = &db[n * s.K];
          for (int64_t k = 0; k < s.K; ++k) {
            acc += x[k] * y[k];
            mg += std::fabs(x[k] * y[k]);
          }
          r[m * s.N + n] = acc;
          mag[m * s.N + n] = mg;
        }
      for (int pivot : {0, s.chunks - 1}) {
        SCOPED_TRACE("pivot " + std::to_string(pivot));
        const Feeder feeder = run % 2 ? Feeder::kKernel : Feeder::kCopyEngine;
        FedRun fr{s.M, s.K, 1, s.chunks, pivot, staging.p, pinned.p, a.p, signals.p, st.main, st.feed, feeder, seed + run};
        ++run;
        fr.prepare();
        CUDA_OK(cudaMemsetAsync(d.p, 0xFF, d.bytes(), st.main));
        NativeAgGemmParams p;
        p.a = a.p;
        p.b = b.p;
        p.d = d.p;
        p.M = s.M;
        p.N = s.N;
        p.K = s.K;
        p.ab_dtype = DType::kFloat8E4M3;
        p.scale = mode;
        p.a_scale = dsa.p;
        p.b_scale = dsb.p;
        p.chunk_signals = signals.p;
        p.num_chunks = s.chunks;
        p.pivot_chunk = pivot;
        p.sync = sync.ctx(uint64_t(10) * 1000000000ull);
        p.max_ctas = feeder == Feeder::kKernel ? sm_count() - 2 : 0;
        detail::launch_native_ag_gemm(p, st.main);
        CUDA_OK(cudaStreamSynchronize(st.main));
        CUDA_OK(cudaStreamSynchronize(st.feed));
        ASSERT_EQ(sync.code(), 0u) << "peer " << sync.peer();
        std::vector<uint16_t> hd(d.n);
        CUDA_OK(cudaMemcpy(hd.data(), d.p, d.bytes(), cudaMemcpyDeviceToHost));
        // bf16 output rounding (2^-9 relative) plus fp32 accumulation: the bound cuBLASLt meets in
        // tests/quantize/quant_gemm_gpu_test.cu.
        int64_t bad = 0, first_bad = -1;
        for (int64_t i = 0; i < static_cast<int64_t>(hd.size()); ++i) {
          const double got = qref::bf16_to_float(hd[i]);
          const double tol = std::ldexp(std::fabs(r[i]), -8) + std::ldexp(mag[i], -12);
          if (!(std::fabs(got - r[i]) <= tol)) {
            if (first_bad < 0) first_bad = i;
            ++bad;
          }
        }
        EXPECT_EQ(bad, 0) << "first bad element " << first_bad << ": got "
                          << (first_bad >= 0 ? qref::bf16_to_float(hd[first_bad]) : 0.0f) << ", want "
                          << (first_bad >= 0 ? r[first_bad] : 0.0);
      }
    }
  }
}

// A chunk whose signal never comes: the kernel reports kDevTimeout naming that chunk's rank, raises abort, and ends.
TEST(NativeGemmGpu, MissingChunkTimesOutNamingItsRank) {
  SKIP_IF_UNSUPPORTED();
  struct Case {
    int chunks, chunks_per_rank, pivot, missing, rank;
  };
  const Case cases[] = {{4, 1, 1, 3, 3}, {8, 2, 0, 5, 2}};
  Streams st;
  for (const Case& c : cases) {
    SCOPED_TRACE("chunks " + std::to_string(c.chunks) + ", missing " + std::to_string(c.missing));
    SyncState sync;
    const int64_t M = 1024, N = 768, K = 256;
    DevBuf<uint16_t> a(M * K), b(N * K), d(M * N);
    DevBuf<uint32_t> signals(c.chunks);
    const auto ha = random_bf16(a.n, 5), hb = random_bf16(b.n, 6);
    CUDA_OK(h2d(a.p, ha.data(), a.bytes()));
    CUDA_OK(h2d(b.p, hb.data(), b.bytes()));
    std::vector<uint32_t> hs(c.chunks, 1u);
    hs[c.missing] = 0;
    CUDA_OK(h2d(signals.p, hs.data(), hs.size() * 4));
    NativeAgGemmParams p;
    p.a = a.p;
    p.b = b.p;
    p.d = d.p;
    p.M = M;
    p.N = N;
    p.K = K;
    p.chunk_signals = signals.p;
    p.num_chunks = c.chunks;
    p.chunks_per_rank = c.chunks_per_rank;
    p.pivot_chunk = c.pivot;
    p.sync = sync.ctx(20ull * 1000000);  // 20 ms
    const auto t0 = std::chrono::steady_clock::now();
    detail::launch_native_ag_gemm(p, st.main);
    cudaError_t q;
    while ((q = cudaStreamQuery(st.main)) == cudaErrorNotReady &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(q, cudaSuccess) << "the kernel did not end within 20 s of a 20 ms timeout";
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(ms, 5000.0);
    EXPECT_EQ(sync.code(), static_cast<uint32_t>(device::kDevTimeout));
    EXPECT_EQ(sync.peer(), c.rank);
    EXPECT_EQ(sync.abort_flag(), 1u);
  }
}

// The launch captured in a CUDA graph and replayed on new data (same buffers) gives the new product.
TEST(NativeGemmGpu, GraphReplayWithNewInputs) {
  SKIP_IF_UNSUPPORTED();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t M = 1024, N = 1280, K = 768;
  Streams st;
  SyncState sync;
  LtGemm lt;
  DevBuf<uint16_t> a(M * K), b(N * K), d(M * N), ref(M * N);
  DevBuf<uint32_t> signals(2);
  CUDA_OK(cudaMemset(signals.p, 0x01, 8));  // 0x01010101 != 0: both chunks present
  CUDA_OK(cudaDeviceSynchronize());
  NativeAgGemmParams p;
  p.a = a.p;
  p.b = b.p;
  p.d = d.p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.chunk_signals = signals.p;
  p.num_chunks = 2;
  p.pivot_chunk = 1;
  p.sync = sync.ctx(uint64_t(10) * 1000000000ull);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaStreamBeginCapture(st.main, cudaStreamCaptureModeThreadLocal));
  detail::launch_native_ag_gemm(p, st.main);
  CUDA_OK(cudaStreamEndCapture(st.main, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 2; ++rep) {
    const auto ha = random_bf16(a.n, seed + rep), hb = random_bf16(b.n, ~seed - rep);
    CUDA_OK(h2d(a.p, ha.data(), a.bytes()));
    CUDA_OK(h2d(b.p, hb.data(), b.bytes()));
    CUDA_OK(cudaMemsetAsync(d.p, 0xFF, d.bytes(), st.main));
    ASSERT_TRUE(lt.run(a.p, b.p, ref.p, M, N, K, st.main));
    CUDA_OK(cudaGraphLaunch(exec, st.main));
    CUDA_OK(cudaStreamSynchronize(st.main));
    EXPECT_EQ(count_bad(d.p, ref.p, M * N, K), 0ull) << "replay " << rep;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  EXPECT_EQ(sync.code(), 0u);
}

// Malformed and unsupported params are refused before anything is enqueued.
TEST(NativeGemmGpu, RefusesWhatItCannotRun) {
  SKIP_IF_UNSUPPORTED();
  SyncState sync;
  DevBuf<uint16_t> a(256 * 256), b(256 * 256), d(256 * 256);
  DevBuf<uint32_t> signals(2);
  NativeAgGemmParams p;
  p.a = a.p;
  p.b = b.p;
  p.d = d.p;
  p.M = p.N = p.K = 256;
  p.chunk_signals = signals.p;
  p.num_chunks = 2;
  p.sync = sync.ctx(1000000);
  int dev = 0;
  cudaGetDevice(&dev);
  EXPECT_EQ(detail::native_ag_gemm_unsupported(p, dev), "");
  auto code_of = [&](const NativeAgGemmParams& q) {
    try {
      detail::launch_native_ag_gemm(q, nullptr);
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kInternal;  // no error
  };
  NativeAgGemmParams q = p;
  q.pivot_chunk = 2;
  EXPECT_EQ(code_of(q), ErrorCode::kInvalidArgument);
  q = p;
  q.a = static_cast<const uint16_t*>(p.a) + 1;  // 2-byte aligned
  EXPECT_EQ(code_of(q), ErrorCode::kUnsupported);
  q = p;
  q.K = 250;  // rows of 500 bytes
  EXPECT_EQ(code_of(q), ErrorCode::kUnsupported);
  q = p;
  q.max_ctas = 1;
  EXPECT_EQ(code_of(q), ErrorCode::kUnsupported);
  CUDA_OK(cudaDeviceSynchronize());
}

// Strided operands: A with a row stride beyond K, D a column slice of a wider output (ldd > N, offset columns);
// the columns outside the slice keep their poison.
TEST(NativeGemmGpu, StridedOperandsWriteOnlyTheirSlice) {
  SKIP_IF_UNSUPPORTED();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t M = 640, N = 520, K = 384, lda = K + 64, ldd = N + 200, col0 = 64;
  Streams st;
  SyncState sync;
  LtGemm lt;
  DevBuf<uint16_t> a_packed(M * K), a(M * lda), b(N * K), wide(M * ldd), d(M * N), ref(M * N);
  DevBuf<uint32_t> signals(4);
  const auto ha = random_bf16(a_packed.n, seed), hb = random_bf16(b.n, seed * 3 + 1);
  CUDA_OK(h2d(a_packed.p, ha.data(), a_packed.bytes()));
  CUDA_OK(h2d(b.p, hb.data(), b.bytes()));
  CUDA_OK(cudaMemcpy2D(a.p, lda * 2, a_packed.p, K * 2, K * 2, M, cudaMemcpyDeviceToDevice));
  CUDA_OK(cudaMemset(wide.p, 0xFF, wide.bytes()));
  CUDA_OK(cudaMemset(signals.p, 0x01, 16));
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_TRUE(lt.run(a_packed.p, b.p, ref.p, M, N, K, st.main));
  NativeAgGemmParams p;
  p.a = a.p;
  p.b = b.p;
  p.d = wide.p + col0;
  p.M = M;
  p.N = N;
  p.K = K;
  p.lda = lda;
  p.ldd = ldd;
  p.chunk_signals = signals.p;
  p.num_chunks = 4;
  p.pivot_chunk = 2;
  p.sync = sync.ctx(uint64_t(10) * 1000000000ull);
  detail::launch_native_ag_gemm(p, st.main);
  CUDA_OK(cudaStreamSynchronize(st.main));
  ASSERT_EQ(sync.code(), 0u);
  CUDA_OK(cudaMemcpy2D(d.p, N * 2, wide.p + col0, ldd * 2, N * 2, M, cudaMemcpyDeviceToDevice));
  EXPECT_EQ(count_bad(d.p, ref.p, M * N, K), 0ull);
  std::vector<uint16_t> hw(wide.n);
  CUDA_OK(cudaMemcpy(hw.data(), wide.p, wide.bytes(), cudaMemcpyDeviceToHost));
  int64_t touched = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < ldd; ++c)
      if ((c < col0 || c >= col0 + N) && hw[m * ldd + c] != 0xFFFF) ++touched;
  EXPECT_EQ(touched, 0) << "elements outside the output slice were written";
}

// Timing with all signals preset: the native kernel against cuBLASLt's heuristic choice on the same data, bf16 (the
// default 128x128 ping-pong tiles and tile_config 1's 128x256) and FP8 tensorwise. CUDA-event medians of 20 launches per
// variant, the variants interleaved launch by launch (so clock and temperature drift spreads over all of them), each
// launch behind a 100 us GPU sleep so the host's launch work stays outside the events. Every output is checked
// against cuBLASLt's.
TEST(NativeGemmGpu, TimingVsCublasLtSignalsPreset) {
  SKIP_IF_UNSUPPORTED();
  const Shape shapes[] = {{4096, 3584, 8192, 2}, {8192, 14336, 8192, 2}};
  Streams st;
  SyncState sync;
  LtGemm lt, lt8;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const int reps = 20;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(shape_name(s));
    DevBuf<uint16_t> a(s.M * s.K), b(s.N * s.K), d(s.M * s.N), ref(s.M * s.N);
    DevBuf<uint8_t> a8(s.M * s.K), b8(s.N * s.K);
    DevBuf<uint16_t> d8(s.M * s.N), ref8(s.M * s.N);
    DevBuf<float> scales(8);  // a_scale at [0], b_scale at [4]: cuBLASLt wants 16-byte aligned scale pointers
    DevBuf<uint32_t> signals(s.chunks);
    ASSERT_TRUE(a.p && b.p && d.p && ref.p && a8.p && b8.p && d8.p && ref8.p);
    CUDA_OK(cudaMemset(signals.p, 0x01, s.chunks * 4));
    {
      const auto ha = random_bf16(a.n, 11), hb = random_bf16(b.n, 12);
      CUDA_OK(h2d(a.p, ha.data(), a.bytes()));
      CUDA_OK(h2d(b.p, hb.data(), b.bytes()));
      const auto ha8 = random_e4m3(a8.n, 13), hb8 = random_e4m3(b8.n, 14);
      CUDA_OK(h2d(a8.p, ha8.data(), a8.bytes()));
      CUDA_OK(h2d(b8.p, hb8.data(), b8.bytes()));
      const float hs[8] = {1.0f / 448, 0, 0, 0, 1.0f / 448};  // dequantized values in (-1, 1), like the bf16 data
      CUDA_OK(h2d(scales.p, hs, sizeof(hs)));
    }
    auto native = [&](DType dt, int band, int config) {
      NativeAgGemmParams p;
      const bool fp8 = dt == DType::kFloat8E4M3;
      p.a = fp8 ? static_cast<const void*>(a8.p) : a.p;
      p.b = fp8 ? static_cast<const void*>(b8.p) : b.p;
      p.d = fp8 ? d8.p : d.p;
      p.M = s.M;
      p.N = s.N;
      p.K = s.K;
      p.ab_dtype = dt;
      if (fp8) {
        p.scale = NativeScale::kTensorwise;
        p.a_scale = scales.p;
        p.b_scale = scales.p + 4;
      }
      p.chunk_signals = signals.p;
      p.num_chunks = s.chunks;
      p.raster_band = band;
      p.tile_config = config;
      p.sync = sync.ctx(uint64_t(10) * 1000000000ull);
      return p;
    };
    struct Variant {
      std::string name;
      std::function<bool()> launch;
      std::vector<float> us;
    };
    const NativeAgGemmParams p_def = native(DType::kBFloat16, 0, 0), p_coop = native(DType::kBFloat16, 0, 1),
                             p_fp8 = native(DType::kFloat8E4M3, 0, 0);
    std::vector<Variant> v;
    auto native_launch = [&](const NativeAgGemmParams& p) {
      return [&st, p] {
        detail::launch_native_ag_gemm(p, st.main);
        return true;
      };
    };
    v.push_back({"bf16 cublaslt", [&] { return lt.run(a.p, b.p, ref.p, s.M, s.N, s.K, st.main); }, {}});
    v.push_back({"bf16 native 128x256 coop", native_launch(p_coop), {}});
    v.push_back({"bf16 native 128x128 pingpong", native_launch(p_def), {}});
    v.push_back({"fp8 tensorwise cublaslt",
                 [&] { return lt8.run_fp8(a8.p, scales.p, b8.p, scales.p + 4, ref8.p, s.M, s.N, s.K, st.main); }, {}});
    v.push_back({"fp8 tensorwise native 128x128", native_launch(p_fp8), {}});
    for (auto& x : v) ASSERT_TRUE(x.launch()) << x.name;  // warm-up (plans, caches)
    CUDA_OK(cudaStreamSynchronize(st.main));
    std::printf("native_timing %s cuBLASLt bf16 algo: %s; e4m3 algo: %s\n", shape_name(s).c_str(), lt.algo_config().c_str(),
                lt8.algo_config().c_str());
    for (int i = 0; i < reps; ++i)
      for (auto& x : v) {
        gpu_sleep_kernel<<<1, 1, 0, st.main>>>(100000);
        cudaEventRecord(e0, st.main);
        x.launch();
        cudaEventRecord(e1, st.main);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        x.us.push_back(ms * 1000.0f);
      }
    CUDA_OK(cudaGetLastError());
    const double tflop = 2.0 * s.M * s.N * s.K / 1e12;
    float base = 0;
    for (auto& x : v) {
      std::sort(x.us.begin(), x.us.end());
      const float med = x.us[x.us.size() / 2];
      if (x.name.find("cublaslt") != std::string::npos) base = med;
      std::printf("native_timing %-24s %-30s median %8.1f us (min %8.1f) %6.1f TFLOP/s  ratio to cublaslt %.3f\n",
                  shape_name(s).c_str(), x.name.c_str(), med, x.us.front(), tflop / (med * 1e-6), med / base);
    }
    std::fflush(stdout);
    // Outputs of the last launches: bf16 natives (the ping-pong one ran last) and FP8 against cuBLASLt's.
    EXPECT_EQ(count_bad(d.p, ref.p, s.M * s.N, s.K), 0ull);
    EXPECT_EQ(count_bad(d8.p, ref8.p, s.M * s.N, s.K), 0ull);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  EXPECT_EQ(sync.code(), 0u);
}

}  // namespace
