#include "async_tp/lt_gemm.h"

#include <cstdint>
#include <string>

#include "common/check.h"
#include "tpcomm/error.h"

namespace tpcomm::detail {

cudaDataType_t to_cuda_dtype(DType t) {
  switch (t) {
    case DType::kFloat32: return CUDA_R_32F;
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kBFloat16: return CUDA_R_16BF;
    case DType::kFloat8E4M3: return CUDA_R_8F_E4M3;
    case DType::kFloat8E5M2: return CUDA_R_8F_E5M2;
    default: break;
  }
  throw Error(ErrorCode::kInvalidArgument, std::string("dtype: ") + dtype_name(t) + " has no cuBLASLt type");
}

namespace {

cublasLtMatmulMatrixScale_t lt_mode(LtScale s) {
  switch (s) {
    case LtScale::kScalar: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case LtScale::kOuterVec: return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    case LtScale::kVec128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    case LtScale::kBlk128: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    default: break;
  }
  return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
}

// 32 MiB: cuBLASLt's recommendation for Hopper (cuBLAS docs, "cublasLtMatmul workspace"); fixed per communicator so
// no call allocates.
constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;

}  // namespace

struct LtGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::string error;  // non-empty: no algorithm
  ~Plan() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

#define TPCOMM_LT_CHECK(expr, what)                                                                            \
  do {                                                                                                         \
    cublasStatus_t st_ = (expr);                                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                          \
      throw Error(ErrorCode::kCudaError, std::string("cuBLASLt ") + what + " failed (status " + std::to_string(static_cast<int>(st_)) + ")"); \
  } while (0)

LtGemm::LtGemm(int device) {
  TPCOMM_CUDA_CHECK(cudaSetDevice(device));
  TPCOMM_LT_CHECK(cublasLtCreate(&handle_), "create");
  TPCOMM_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  workspace_bytes_ = kWorkspaceBytes;
}

LtGemm::~LtGemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

LtGemm::Plan& LtGemm::plan(const LtGemmDesc& g) {
  auto key = g.key();
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  auto p = std::make_unique<Plan>();
  const cudaDataType_t ta = to_cuda_dtype(g.a_dtype), tb = to_cuda_dtype(g.b_dtype), td = to_cuda_dtype(g.d_dtype);
  TPCOMM_LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
  // cuBLASLt "A" = our B, "B" = our A (see the header).
  if (g.d_col_major && !g.b_col_major)
    throw Error(ErrorCode::kInternal, "LtGemm: a column-major D needs the (n, k) weight layout of B");
  const cublasOperation_t op_a = g.d_col_major ? CUBLAS_OP_T : (g.b_col_major ? CUBLAS_OP_T : CUBLAS_OP_N), op_b = CUBLAS_OP_N;
  TPCOMM_LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), "TRANSA");
  TPCOMM_LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), "TRANSB");
  std::string err;
  auto set_mode = [&](cublasLtMatmulDescAttributes_t attr, LtScale s, const char* what) {
    if (s == LtScale::kNone || s == LtScale::kScalar) {
      if (s == LtScale::kScalar) {
        const cublasLtMatmulMatrixScale_t m = lt_mode(s);
        if (cublasLtMatmulDescSetAttribute(p->op, attr, &m, sizeof(m)) != CUBLAS_STATUS_SUCCESS) err = what;
      }
      return;
    }
    const cublasLtMatmulMatrixScale_t m = lt_mode(s);
    if (cublasLtMatmulDescSetAttribute(p->op, attr, &m, sizeof(m)) != CUBLAS_STATUS_SUCCESS) err = what;
  };
  // Which of our operands sits in cuBLASLt's A and B slots.
  const LtScale slot_a = g.d_col_major ? g.a_scale : g.b_scale, slot_b = g.d_col_major ? g.b_scale : g.a_scale;
  set_mode(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, slot_a, "scale mode of cuBLASLt's A refused");
  set_mode(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, slot_b, "scale mode of cuBLASLt's B refused");
  // Dummy pointers for the heuristic (some FP8 checks look at them); replaced per call.
  if (slot_b != LtScale::kNone) {
    const void* ptr = workspace_;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ptr, sizeof(ptr));
  }
  if (slot_a != LtScale::kNone) {
    const void* ptr = workspace_;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ptr, sizeof(ptr));
  }
  if (g.fast_accum) {
    const int8_t fa = 1;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof(fa));
  }
  if (g.bias) {
    const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    TPCOMM_LT_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep)), "EPILOGUE");
    const cudaDataType_t bt = td == CUDA_R_32F && (ta == CUDA_R_8F_E4M3 || ta == CUDA_R_8F_E5M2) ? CUDA_R_16BF : td;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
    const void* ptr = workspace_;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr, sizeof(ptr));
  }
  const uint64_t n = static_cast<uint64_t>(g.n), m = static_cast<uint64_t>(g.m), k = static_cast<uint64_t>(g.k);
  if (g.d_col_major) {
    // la/lb hold cuBLASLt's A and B: our A (k x m, ld lda, transposed) and our B (k x n, ld ldb).
    TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->la, ta, k, m, g.lda), "layout A");
    TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->lb, tb, k, n, g.ldb), "layout B");
    TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->ld, td, m, n, g.ldd), "layout D");
  } else {
    if (g.b_col_major) TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->la, tb, k, n, g.ldb), "layout B");
    else TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->la, tb, n, k, g.ldb), "layout B");
    TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->lb, ta, k, m, g.lda), "layout A");
    TPCOMM_LT_CHECK(cublasLtMatrixLayoutCreate(&p->ld, td, n, m, g.ldd), "layout D");
  }
  if (g.batch > 1) {
    const int32_t bc = g.batch;
    const int64_t sa = g.stride_b, sb = g.stride_a, sd = g.stride_d;
    cublasLtMatrixLayoutSetAttribute(p->la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc));
    cublasLtMatrixLayoutSetAttribute(p->lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc));
    cublasLtMatrixLayoutSetAttribute(p->ld, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc));
    cublasLtMatrixLayoutSetAttribute(p->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof(sa));
    cublasLtMatrixLayoutSetAttribute(p->lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof(sb));
    cublasLtMatrixLayoutSetAttribute(p->ld, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sd, sizeof(sd));
  }
  if (err.empty()) {
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof(workspace_bytes_));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(handle_, p->op, p->la, p->lb, p->ld, p->ld, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
      err = "cuBLASLt has no algorithm for " + std::string(dtype_name(g.a_dtype)) + " " + std::to_string(g.m) + "x" +
            std::to_string(g.n) + "x" + std::to_string(g.k) + " (batch " + std::to_string(g.batch) + ", scales A " +
            std::to_string(static_cast<int>(g.a_scale)) + " B " + std::to_string(static_cast<int>(g.b_scale)) +
            ", status " + std::to_string(static_cast<int>(hs)) + ")";
    } else {
      p->algo = res.algo;
    }
  }
  p->error = err;
  auto& ref = *p;
  plans_.emplace(key, std::move(p));
  return ref;
}

std::string LtGemm::supported(const LtGemmDesc& desc) { return plan(desc).error; }

void LtGemm::run(const LtGemmDesc& g, const LtGemmPtrs& ptrs, cudaStream_t stream) {
  Plan& p = plan(g);
  if (!p.error.empty()) throw Error(ErrorCode::kUnsupported, p.error);
  const float* sa = g.d_col_major ? ptrs.a_scale : ptrs.b_scale;  // cuBLASLt's A slot
  const float* sb = g.d_col_major ? ptrs.b_scale : ptrs.a_scale;
  if ((g.d_col_major ? g.a_scale : g.b_scale) != LtScale::kNone)
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa));
  if ((g.d_col_major ? g.b_scale : g.a_scale) != LtScale::kNone)
    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb));
  if (g.bias) cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptrs.bias, sizeof(ptrs.bias));
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  const void* slot_a = g.d_col_major ? ptrs.a : ptrs.b;
  const void* slot_b = g.d_col_major ? ptrs.b : ptrs.a;
  TPCOMM_LT_CHECK(cublasLtMatmul(handle_, p.op, &alpha, slot_a, p.la, slot_b, p.lb, &beta, ptrs.d, p.ld, ptrs.d, p.ld, &p.algo,
                                 workspace_, workspace_bytes_, stream),
                  "matmul");
}

}  // namespace tpcomm::detail
