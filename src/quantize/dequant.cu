// Dequantize launchers for FP8, MXFP8 and NVFP4 (dequant_kernels.cuh).
#include <cstdint>

#include "common/check.h"
#include "common/pdl.h"
#include "quantize/dequant_kernels.cuh"
#include "quantize/validate.h"
#include "tpcomm/quantize.h"

namespace tpcomm::quant {

using ::tpcomm::detail::launch_kernel;

namespace {
using namespace detail;

unsigned blocks_for(int64_t nchunks) {
  const int64_t per_block = int64_t(kDequantThreads) * kDequantChunks;
  return static_cast<unsigned>((nchunks + per_block - 1) / per_block);
}
}  // namespace

void fp8_dequantize(const Fp8DequantizeParams& p, cudaStream_t stream) {
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  Fp8DequantKernelParams kp{};
  kp.in = static_cast<const uint8_t*>(p.input);
  kp.rows = p.rows;
  kp.cols = p.cols;
  kp.nchunks = p.rows * p.cols / 8;
  kp.scale_inv = p.scale_inv;
  kp.scale_ld = p.scale_ld ? p.scale_ld
                           : (p.scaling == Fp8Scaling::kBlock1x128 ? p.rows : (p.cols + 127) / 128);
  kp.scaling = static_cast<int>(p.scaling);
  kp.out = p.output;
  const unsigned g = blocks_for(kp.nchunks);
  const bool f32 = p.output_dtype == DType::kFloat32;
  if (p.format == Fp8Format::kE4M3) {
    if (f32) launch_kernel(fp8_dequant_kernel<0, true>, g, kDequantThreads, 0, stream, kp);
    else launch_kernel(fp8_dequant_kernel<0, false>, g, kDequantThreads, 0, stream, kp);
  } else {
    if (f32) launch_kernel(fp8_dequant_kernel<1, true>, g, kDequantThreads, 0, stream, kp);
    else launch_kernel(fp8_dequant_kernel<1, false>, g, kDequantThreads, 0, stream, kp);
  }
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

void mxfp8_dequantize(const Mxfp8DequantizeParams& p, cudaStream_t stream) {
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  Mxfp8DequantKernelParams kp{};
  kp.in = static_cast<const uint8_t*>(p.data);
  kp.scales = p.scales;
  kp.rows = p.rows;
  kp.cols = p.cols;
  kp.nchunks = p.experts * p.rows * p.cols / 16;
  kp.colwise = p.axis == Mxfp8Axis::kColwise;
  kp.swizzled = p.scale_layout == ScaleLayout::kSwizzled128x4;
  kp.out = p.output;
  const bool f32 = p.output_dtype == DType::kFloat32;
  if (!kp.colwise && !kp.swizzled) {  // flat block sequence: the coalesced warp-window kernel
    Mxfp8RowwiseDequantParams rp;
    rp.in = static_cast<const uint2*>(p.data);
    rp.scales = p.scales;
    rp.nvec = p.experts * p.rows * p.cols / 8;
    rp.out = p.output;
    const unsigned rg = window_grid(rp.nvec);
    if (p.format == Fp8Format::kE4M3) {
      if (f32) launch_kernel(mxfp8_rowwise_dequant_kernel<0, true>, rg, kWindowThreads, 0, stream, rp);
      else launch_kernel(mxfp8_rowwise_dequant_kernel<0, false>, rg, kWindowThreads, 0, stream, rp);
    } else {
      if (f32) launch_kernel(mxfp8_rowwise_dequant_kernel<1, true>, rg, kWindowThreads, 0, stream, rp);
      else launch_kernel(mxfp8_rowwise_dequant_kernel<1, false>, rg, kWindowThreads, 0, stream, rp);
    }
    TPCOMM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const unsigned g = blocks_for(kp.nchunks);
  if (p.format == Fp8Format::kE4M3) {
    if (f32) launch_kernel(mxfp8_dequant_kernel<0, true>, g, kDequantThreads, 0, stream, kp);
    else launch_kernel(mxfp8_dequant_kernel<0, false>, g, kDequantThreads, 0, stream, kp);
  } else {
    if (f32) launch_kernel(mxfp8_dequant_kernel<1, true>, g, kDequantThreads, 0, stream, kp);
    else launch_kernel(mxfp8_dequant_kernel<1, false>, g, kDequantThreads, 0, stream, kp);
  }
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

void nvfp4_dequantize(const Nvfp4DequantizeParams& p, cudaStream_t stream) {
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  Nvfp4DequantKernelParams kp{};
  kp.in = static_cast<const uint32_t*>(p.input);
  kp.scales = p.block_scales;
  kp.global_scale_inv = p.global_scale_inv;
  kp.cols = p.cols;
  kp.nvec = p.rows * p.cols / 8;
  kp.swizzled = p.scale_layout == ScaleLayout::kSwizzled128x4;
  kp.out = p.output;
  const unsigned g = window_grid(kp.nvec);
  if (p.output_dtype == DType::kFloat32) launch_kernel(nvfp4_dequant_kernel<true>, g, kWindowThreads, 0, stream, kp);
  else launch_kernel(nvfp4_dequant_kernel<false>, g, kWindowThreads, 0, stream, kp);
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::quant
