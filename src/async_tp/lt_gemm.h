// cuBLASLt GEMMs of the async-TP engines, in row-major terms: D (m x n) = A (m x k) @ B (k x n), batched with strides.
// cuBLASLt is column-major, so the call computes D^T = B^T A^T: cuBLASLt's "A" is our B and its "B" is our A
// (FP8 then needs our B in the transposed weight layout: cuBLASLt's TN). Scales map the same way: our A's rowwise
// scale is cuBLASLt's B OUTER_VEC, our B's per-column scale is cuBLASLt's A OUTER_VEC; 1x128 A blocks are cuBLASLt
// B VEC128, 128x128 B blocks cuBLASLt A BLK128x128.
//
// Plans (descriptors, layouts, the heuristic's algorithm) are cached per shape/type/scale signature; pointers are set
// per call. One LtGemm per communicator (single-threaded use, like the communicator's ops).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "tpcomm/async_tp.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

enum class LtScale : int { kNone = 0, kScalar = 1, kOuterVec = 2, kVec128 = 3, kBlk128 = 4 };

struct LtGemmDesc {
  int64_t m = 0, n = 0, k = 0;
  DType a_dtype = DType::kBFloat16, b_dtype = DType::kBFloat16, d_dtype = DType::kBFloat16;
  int64_t lda = 0;          // A row-major, row stride
  bool b_col_major = true;  // B (k x n) stored column-major ((n, k) row-major weight)
  int64_t ldb = 0;
  int64_t ldd = 0;          // D row-major, row stride
  int batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_d = 0;  // batch strides, elements
  LtScale a_scale = LtScale::kNone, b_scale = LtScale::kNone;
  bool bias = false;
  bool fast_accum = false;
  bool accumulate = false;  // D += A @ B (beta = 1)
  // D column-major (m x n, ld = ldd >= m) without the operand swap: cuBLASLt's A is our A, its B our B (which must
  // be the (n, k) weight). The layout cuBLASLt's 1x128 x 128x128 block scaling was verified with on H200
  // (tests/quantize/quant_gemm_gpu_test.cu): A VEC128 M-major, B BLK128x128 K-major; the async-TP engines then
  // transpose D into the row-major output.
  bool d_col_major = false;

  auto key() const {
    return std::make_tuple(m, n, k, static_cast<int>(a_dtype), static_cast<int>(b_dtype), static_cast<int>(d_dtype), lda,
                           b_col_major, ldb, ldd, batch, stride_a, stride_b, stride_d,
                           static_cast<int>(a_scale) * 8 + static_cast<int>(b_scale), bias * 8 + fast_accum * 4 + accumulate * 2 + d_col_major);
  }
};

struct LtGemmPtrs {
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  const void* bias = nullptr;
};

class LtGemm {
 public:
  explicit LtGemm(int device);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Empty when cuBLASLt has an algorithm for desc; else the reason (cached).
  std::string supported(const LtGemmDesc& desc);
  // Enqueues; throws kUnsupported (no algorithm) / kCudaError.
  void run(const LtGemmDesc& desc, const LtGemmPtrs& ptrs, cudaStream_t stream);

 private:
  struct Plan;
  Plan& plan(const LtGemmDesc& desc);
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  std::map<decltype(LtGemmDesc{}.key()), std::unique_ptr<Plan>> plans_;
};

cudaDataType_t to_cuda_dtype(DType t);

}  // namespace tpcomm::detail
