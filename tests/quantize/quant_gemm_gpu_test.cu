// cuBLASLt consumes tpcomm's FP8 scales as include/tpcomm/quantize.h documents them. An FP8 GEMM in Hopper's
// "TN" form (both operands K-major: activations A (M x K) and weights W (N x K), row-major) runs on the quantized
// operands with each scaling's cuBLASLt scale mode (tensorwise: SCALAR_32F, rowwise: OUTER_VEC_32F, 1x128 x 128x128:
// VEC128_32F x BLK128x128_32F; colwise with the transposed output as an outer-vector B) and must match the float64
// GEMM of the dequantized operands. The magnitude of the
// inputs changes by up to 2^8 from one 128-element block to the next, so a scale read in the wrong layout moves the
// result far past the tolerance: a negative control feeds the 1x128 scales in the other (row-major) order and must fail.
#include <gtest/gtest.h>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "quantize/quant_ref.h"
#include "quantize/quant_test_params.h"
#include "tpcomm/quantize.h"

using namespace tpcomm;
using namespace tpcomm::quant;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x
#define LT_OK(x) ASSERT_EQ((x), CUBLAS_STATUS_SUCCESS) << #x

constexpr int64_t M = 256, N = 384, K = 512;  // K/128 = 4 blocks, N/128 = 3

template <class T>
struct DevVec {
  T* p = nullptr;
  explicit DevVec(size_t n) { cudaMalloc(&p, n * sizeof(T)); cudaMemset(p, 0, n * sizeof(T)); }
  ~DevVec() { cudaFree(p); }
  DevVec(const DevVec&) = delete;
  DevVec& operator=(const DevVec&) = delete;
};

// rows x K bf16, uniform in (-1, 1) times 2^e, e drawn per (row, 128-column block) in [-4, 4].
std::vector<uint16_t> make_operand(int64_t rows, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<uint16_t> h(rows * K);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kb = 0; kb < K / 128; ++kb) {
      const double mag = std::ldexp(1.0, static_cast<int>(rng.next() % 9) - 4);
      for (int64_t k = kb * 128; k < (kb + 1) * 128; ++k)
        h[r * K + k] = ref::float_to_bf16(static_cast<float>(rng.uniform(-1.0, 1.0) * mag));
    }
  return h;
}

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> s;
  int64_t ld = 0;
};

// Quantizes on the GPU (bit-exact with the CPU reference, tested elsewhere) and returns data + scales.
Quantized quantize(const uint16_t* d_in, int64_t rows, Fp8Scaling scaling, uint8_t* d_q, float* d_s, float* d_amax) {
  Fp8QuantizeParams p = test_params::fp8_params(d_in, rows, K, Fp8Format::kE4M3, scaling, d_q, d_s);
  p.amax_out = d_amax;
  fp8_quantize(p, nullptr);
  cudaDeviceSynchronize();
  Quantized out;
  out.q.resize(rows * K);
  out.s.resize(fp8_scale_count(rows, K, scaling));
  cudaMemcpy(out.q.data(), d_q, out.q.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(out.s.data(), d_s, out.s.size() * 4, cudaMemcpyDeviceToHost);
  out.ld = scaling == Fp8Scaling::kBlock1x128 ? rows : (K + 127) / 128;
  return out;
}

// Dequantized element (r, k) under quantize.h's layout for `scaling`.
double deq(const Quantized& x, int64_t r, int64_t k, Fp8Scaling scaling) {
  const double v = ref::fp8_decode(x.q[r * K + k], Fp8Format::kE4M3);
  switch (scaling) {
    case Fp8Scaling::kTensorwise: return v * x.s[0];
    case Fp8Scaling::kRowwise: return v * x.s[r];
    case Fp8Scaling::kBlock1x128: return v * x.s[(k / 128) * x.ld + r];   // M-major
    case Fp8Scaling::kBlock128x128: return v * x.s[(r / 128) * x.ld + k / 128];  // row-major over blocks
    default: return NAN;
  }
}

// D (M x N, column-major, bf16) = A_q . W_q^T with the given scale modes. Returns false (with a message) when
// cuBLASLt has no algorithm for the combination.
bool lt_gemm(const uint8_t* a, const float* sa, cublasLtMatmulMatrixScale_t ma, const uint8_t* w, const float* sw,
             cublasLtMatmulMatrixScale_t mw, uint16_t* d, std::string* why) {
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  void* ws = nullptr;
  const size_t ws_bytes = size_t(32) << 20;
  bool ok = false;
  auto fail = [&](const std::string& m) { *why = m; };
  do {
    if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) { fail("cublasLtCreate"); break; }
    if (cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) { fail("desc"); break; }
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sw, sizeof(sw));
    if (cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof(ma)) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mw, sizeof(mw)) != CUBLAS_STATUS_SUCCESS) {
      fail("scale mode attribute refused");
      break;
    }
    // Column-major views: A_q (M x K row-major) is K x M with ld K, transposed; W_q (N x K) is K x N, not transposed.
    cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, M, K);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, N, K);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, M, N, M);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes));
    cublasLtMatmulHeuristicResult_t res{};
    int n = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &res, &n);
    if (hs != CUBLAS_STATUS_SUCCESS || n == 0) {
      fail("no cuBLASLt algorithm (status " + std::to_string(static_cast<int>(hs)) + ")");
      break;
    }
    cudaMalloc(&ws, ws_bytes);
    const float alpha = 1.0f, beta = 0.0f;
    const cublasStatus_t ms = cublasLtMatmul(h, op, &alpha, a, la, w, lb, &beta, d, ld, d, ld, &res.algo, ws, ws_bytes, nullptr);
    if (ms != CUBLAS_STATUS_SUCCESS) { fail("cublasLtMatmul status " + std::to_string(static_cast<int>(ms))); break; }
    if (cudaDeviceSynchronize() != cudaSuccess) { fail("cudaDeviceSynchronize after the GEMM"); break; }
    ok = true;
  } while (false);
  if (ws) cudaFree(ws);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (ld) cublasLtMatrixLayoutDestroy(ld);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (op) cublasLtMatmulDescDestroy(op);
  if (h) cublasLtDestroy(h);
  return ok;
}

struct Combo {
  const char* name;
  Fp8Scaling sa, sw;
  cublasLtMatmulMatrixScale_t ma, mw;
};

// Elements of D outside |D - ref| <= 2^-8 |ref| + 2^-12 sum_k |a_k w_k| (bf16 output rounding plus fp32
// accumulation of 512 products); ref in float64 from the dequantized operands.
int64_t count_bad(const std::vector<uint16_t>& d, const Quantized& a, Fp8Scaling sa, const Quantized& w, Fp8Scaling sw,
                  double* worst) {
  std::vector<double> da(M * K), dw(N * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) da[m * K + k] = deq(a, m, k, sa);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) dw[n * K + k] = deq(w, n, k, sw);
  int64_t bad = 0;
  *worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      double r = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        r += da[m * K + k] * dw[n * K + k];
        mag += std::fabs(da[m * K + k] * dw[n * K + k]);
      }
      const double got = ref::bf16_to_float(d[n * M + m]);
      const double err = std::fabs(got - r), tol = std::ldexp(std::fabs(r), -8) + std::ldexp(mag, -12);
      if (!(err <= tol)) ++bad;
      if (mag > 0) *worst = std::max(*worst, err / mag);
    }
  return bad;
}

TEST(QuantGemmGpu, CublasLtConsumesTheFp8ScaleLayouts) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::vector<uint16_t> ha = make_operand(M, seed), hw = make_operand(N, seed ^ 0x5bd1e995ull);
  DevVec<uint16_t> a(M * K), w(N * K), d(M * N);
  DevVec<uint8_t> aq(M * K), wq(N * K);
  DevVec<float> as(4096), wsc(4096), amax(1024);
  CUDA_OK(static_cast<cudaError_t>(test::copy_to_device(a.p, ha.data(), ha.size() * 2)));
  CUDA_OK(static_cast<cudaError_t>(test::copy_to_device(w.p, hw.data(), hw.size() * 2)));
  const Combo combos[] = {
      {"tensorwise x tensorwise", Fp8Scaling::kTensorwise, Fp8Scaling::kTensorwise, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F,
       CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F},
      {"rowwise x rowwise (outer vectors)", Fp8Scaling::kRowwise, Fp8Scaling::kRowwise,
       CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F},
      {"1x128 x 128x128", Fp8Scaling::kBlock1x128, Fp8Scaling::kBlock128x128, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
       CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F},
  };
  for (const Combo& c : combos) {
    SCOPED_TRACE(c.name);
    const Quantized qa = quantize(a.p, M, c.sa, aq.p, as.p, amax.p);
    const Quantized qw = quantize(w.p, N, c.sw, wq.p, wsc.p, amax.p);
    CUDA_OK(cudaMemset(d.p, 0xFF, M * N * 2));
    std::string why;
    ASSERT_TRUE(lt_gemm(aq.p, as.p, c.ma, wq.p, wsc.p, c.mw, d.p, &why)) << why;
    std::vector<uint16_t> hd(M * N);
    CUDA_OK(cudaMemcpy(hd.data(), d.p, hd.size() * 2, cudaMemcpyDeviceToHost));
    double worst = 0;
    const int64_t bad = count_bad(hd, qa, c.sa, qw, c.sw, &worst);
    EXPECT_EQ(bad, 0) << "of " << M * N << " outputs; worst |err| / sum|a w| = " << worst;

    if (c.sa == Fp8Scaling::kBlock1x128) {
      // Negative control: the same GEMM with A's 1x128 scales stored row-major (the other order) must fail.
      // A caller who stored entry (m, kb) row-major, at m * K/128 + kb, where cuBLASLt reads kb * M + m.
      std::vector<float> wrong(qa.s.size());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t kb = 0; kb < K / 128; ++kb) wrong[m * (K / 128) + kb] = qa.s[kb * M + m];
      CUDA_OK(cudaMemcpy(as.p, wrong.data(), wrong.size() * 4, cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemset(d.p, 0xFF, M * N * 2));
      ASSERT_TRUE(lt_gemm(aq.p, as.p, c.ma, wq.p, wsc.p, c.mw, d.p, &why)) << why;
      CUDA_OK(cudaMemcpy(hd.data(), d.p, hd.size() * 2, cudaMemcpyDeviceToHost));
      const int64_t bad_wrong = count_bad(hd, qa, c.sa, qw, c.sw, &worst);
      EXPECT_GT(bad_wrong, M * N / 4) << "scales in the wrong layout were not detected";
    }
  }

  // The B operand given as X = W^T, a K x N row-major matrix (e.g. an activation in a backward GEMM): colwise
  // quantization with the transposed output gives the K-major N x K operand and its N outer-vector scales directly.
  {
    SCOPED_TRACE("rowwise x colwise (transposed output)");
    std::vector<uint16_t> hx(K * N);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) hx[k * N + n] = hw[n * K + k];
    DevVec<uint16_t> xk(K * N);
    CUDA_OK(static_cast<cudaError_t>(test::copy_to_device(xk.p, hx.data(), hx.size() * 2)));
    const Quantized qa = quantize(a.p, M, Fp8Scaling::kRowwise, aq.p, as.p, amax.p);
    fp8_quantize(test_params::colwise_transposed(xk.p, K, N, wq.p, wsc.p, amax.p), nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    Quantized qw;  // N x K with one scale per row n: the rowwise layout
    qw.q.resize(N * K);
    qw.s.resize(N);
    CUDA_OK(cudaMemcpy(qw.q.data(), wq.p, qw.q.size(), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(qw.s.data(), wsc.p, qw.s.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemset(d.p, 0xFF, M * N * 2));
    std::string why;
    ASSERT_TRUE(lt_gemm(aq.p, as.p, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, wq.p, wsc.p,
                        CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, d.p, &why))
        << why;
    std::vector<uint16_t> hd(M * N);
    CUDA_OK(cudaMemcpy(hd.data(), d.p, hd.size() * 2, cudaMemcpyDeviceToHost));
    double worst = 0;
    EXPECT_EQ(count_bad(hd, qa, Fp8Scaling::kRowwise, qw, Fp8Scaling::kRowwise, &worst), 0)
        << "worst |err| / sum|a w| = " << worst;
  }
}

}  // namespace
