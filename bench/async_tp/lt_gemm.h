// The bench's own cuBLASLt GEMM for the async-TP suites: the `gemm_only` floor (the GEMM on local data) and the
// reference the fused ops are checked against. Independent of the library's GEMM code on purpose.
//
//   D (M x N, row-major, ld N) = A (M x K, row-major, ld K) @ B (K x N)
//
// B is either the (N, K) row-major weight (B_nk: what nn.Linear stores; FP8 needs it, as torch._scaled_mm does) or a
// (K, N) row-major matrix (bf16 only). cuBLASLt is column-major, so the product is run as D^T = B^T A^T: cuBLASLt's
// "A" is our B (N x K after its op), its "B" is our A (K x M), and D^T is N x M with ld N, i.e. D row-major. This is
// the operand order torch._scaled_mm uses, which is why the FP8 scale layouts below are the ones torch (and
// include/tpcomm/async_tp.h) document:
//   tensorwise:  a_scale[0], b_scale[0]                        (cuBLASLt SCALAR_32F x SCALAR_32F)
//   rowwise:     a_scale[M] one per row of A, b_scale[N] one per output column       (OUTER_VEC_32F both)
//   blockwise:   a_scale 1x128 blocks, element (m, kb) at kb * M + m (M-major)                      (VEC128_32F)
//                b_scale 128x128 blocks of the (N, K) weight, element (nb, kb) at nb * ceil(K/128) + kb
//                                                                                     (BLK128x128_32F)
//   These are the layouts of tpcomm::quant::Fp8Scaling::kBlock1x128 and kBlock128x128 with the default scale_ld;
//   cuBLASLt takes no leading dimension for scales, so they are packed. The suites check every reference GEMM
//   against a direct float64 dot product of the dequantized operands on sampled outputs, so a layout cuBLASLt
//   reads differently shows up as a failed reference, not as a wrong verdict on tpcomm.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "tpcomm/types.h"

namespace tpcomm::bench::atp {

enum class ScaleKind : int { kNone = 0, kTensor = 1, kRow = 2, kBlock = 3 };
const char* scale_kind_name(ScaleKind k);

struct GemmShape {
  int64_t M = 0, N = 0, K = 0;
  DType ab = DType::kBFloat16;     // kBFloat16 or kFloat8E4M3 (A and B)
  DType d = DType::kBFloat16;      // kBFloat16 or kFloat32
  bool b_nk = true;                // B stored as the (N, K) row-major weight
  ScaleKind scale = ScaleKind::kNone;
  bool fast_accum = false;         // CUBLASLT_MATMUL_DESC_FAST_ACCUM (FP8 tensorwise/rowwise only)
  auto key() const { return std::make_tuple(M, N, K, int(ab), int(d), b_nk, int(scale), fast_accum); }
};

// One plan (descriptor, layouts, heuristic algorithm) per shape, cached; one handle and workspace per device.
// Not thread-safe: one LtGemm per rank thread.
class LtGemm {
 public:
  explicit LtGemm(int device);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Empty when cuBLASLt has an algorithm for the shape (the plan is built and cached), else why.
  std::string prepare(const GemmShape& s);
  // Enqueues D = A @ B on `stream`. prepare() must have succeeded for `s` (exits the bench otherwise).
  void run(const GemmShape& s, const void* a, const float* a_scale, const void* b, const float* b_scale, void* d,
           cudaStream_t stream);

 private:
  struct Plan;
  int device_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  std::map<decltype(GemmShape{}.key()), std::unique_ptr<Plan>> plans_;
  Plan* find(const GemmShape& s);
};

}  // namespace tpcomm::bench::atp
