#include "async_tp/lt_gemm.h"

#include <cstdio>
#include <cstdlib>

#include "common.h"

namespace tpcomm::bench::atp {

const char* scale_kind_name(ScaleKind k) {
  switch (k) {
    case ScaleKind::kNone: return "none";
    case ScaleKind::kTensor: return "tensorwise";
    case ScaleKind::kRow: return "rowwise";
    case ScaleKind::kBlock: return "blockwise";
  }
  return "?";
}

namespace {
cudaDataType_t lt_type(DType d) {
  switch (d) {
    case DType::kBFloat16: return CUDA_R_16BF;
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kFloat32: return CUDA_R_32F;
    case DType::kFloat8E4M3: return CUDA_R_8F_E4M3;
    case DType::kFloat8E5M2: return CUDA_R_8F_E5M2;
    default: return CUDA_R_32F;
  }
}
}  // namespace

struct LtGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::string error;
  ~Plan() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

LtGemm::LtGemm(int device) : device_(device) {
  BENCH_CUDA(cudaSetDevice(device));
  if (cublasLtCreate(&handle_) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "tpcomm-bench: cublasLtCreate failed on device %d\n", device);
    std::exit(2);
  }
  // 32 MiB: what cuBLASLt's heuristics ask for at most on Hopper for these shapes (PyTorch gives 32 MiB on sm_90).
  workspace_bytes_ = std::size_t(32) << 20;
  BENCH_CUDA(cudaMalloc(&workspace_, workspace_bytes_));
}

LtGemm::~LtGemm() {
  cudaSetDevice(device_);
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

LtGemm::Plan* LtGemm::find(const GemmShape& s) {
  auto it = plans_.find(s.key());
  return it == plans_.end() ? nullptr : it->second.get();
}

std::string LtGemm::prepare(const GemmShape& s) {
  if (Plan* p = find(s)) return p->error;
  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  auto fail = [&](const std::string& why) {
    p.error = why;
    plans_[s.key()] = std::move(plan);
    return why;
  };
  const bool fp8 = s.ab == DType::kFloat8E4M3 || s.ab == DType::kFloat8E5M2;
  if (fp8 && !s.b_nk) return fail("FP8 GEMM needs B as the (N, K) weight (K-major operands only on Hopper)");
  if (fp8 == (s.scale == ScaleKind::kNone)) return fail("scales are given exactly for FP8 inputs");
  if (cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS)
    return fail("cublasLtMatmulDescCreate failed");
  // cuBLASLt A = our B: (N, K) row-major is K x N column-major (ld K), transposed; (K, N) row-major is N x K (ld N).
  const cublasOperation_t ta = s.b_nk ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  if (fp8) {
    cublasLtMatmulMatrixScale_t mode_a = CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, mode_b = mode_a;  // cuBLASLt A, B
    if (s.scale == ScaleKind::kRow) mode_a = mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    if (s.scale == ScaleKind::kBlock) {
      mode_a = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;  // the weight's 128x128 blocks
      mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;      // the activations' 1x128 blocks
    }
    if (cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_a, sizeof(mode_a)) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_b, sizeof(mode_b)) !=
            CUBLAS_STATUS_SUCCESS)
      return fail(std::string("cuBLASLt refused the ") + scale_kind_name(s.scale) + " scale modes");
    if (s.fast_accum && s.scale != ScaleKind::kBlock) {
      const int8_t fa = 1;
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof(fa));
    }
    // Scale pointers are set per call (run()); a placeholder lets the heuristic see a scaled GEMM.
  }
  const cudaDataType_t tab = lt_type(s.ab), td = lt_type(s.d);
  if (s.b_nk) cublasLtMatrixLayoutCreate(&p.la, tab, s.K, s.N, s.K);
  else cublasLtMatrixLayoutCreate(&p.la, tab, s.N, s.K, s.N);
  cublasLtMatrixLayoutCreate(&p.lb, tab, s.K, s.M, s.K);
  cublasLtMatrixLayoutCreate(&p.ld, td, s.N, s.M, s.N);
  cublasLtMatmulPreference_t pref = nullptr;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                       sizeof(workspace_bytes_));
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.la, p.lb, p.ld, p.ld, pref, 1, &res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || n == 0)
    return fail("cuBLASLt has no algorithm for " + std::to_string(s.M) + "x" + std::to_string(s.N) + "x" +
                std::to_string(s.K) + " " + dtype_name(s.ab) + " -> " + dtype_name(s.d) + " " +
                scale_kind_name(s.scale) + " (status " + std::to_string(static_cast<int>(hs)) + ")");
  p.algo = res.algo;
  plans_[s.key()] = std::move(plan);
  return {};
}

void LtGemm::run(const GemmShape& s, const void* a, const float* a_scale, const void* b, const float* b_scale, void* d,
                 cudaStream_t stream) {
  Plan* p = find(s);
  if (!p || !p->error.empty()) {
    std::fprintf(stderr, "tpcomm-bench: LtGemm::run without a prepared plan (%s)\n", p ? p->error.c_str() : "none");
    std::exit(2);
  }
  if (s.scale != ScaleKind::kNone) {
    // cuBLASLt A is our B, cuBLASLt B is our A.
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scale, sizeof(b_scale));
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale));
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(handle_, p->op, &alpha, b, p->la, a, p->lb, &beta, d, p->ld, d, p->ld,
                                           &p->algo, workspace_, workspace_bytes_, stream);
  if (st != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "tpcomm-bench: cublasLtMatmul failed (status %d) for %lldx%lldx%lld\n", static_cast<int>(st),
                 static_cast<long long>(s.M), static_cast<long long>(s.N), static_cast<long long>(s.K));
    std::exit(2);
  }
}

}  // namespace tpcomm::bench::atp
