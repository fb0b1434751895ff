// FP8 quantize launchers (tensorwise, rowwise, colwise, 1x128, 128x128) and compute_amax.
#include <algorithm>
#include <cstdint>

#include "common/check.h"
#include "common/pdl.h"
#include "quantize/fp8_kernels.cuh"
#include "quantize/validate.h"
#include "tpcomm/quantize.h"

namespace tpcomm::quant {

using ::tpcomm::detail::launch_kernel;

namespace {

using namespace detail;

// Zeroes n floats on the stream (zero_words_kernel: keeps the PDL chain).
void launch_zero(float* p, int64_t n, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 1024));
  launch_kernel(zero_words_kernel, blocks, 256, 0, stream, reinterpret_cast<uint32_t*>(p), n);
}

// Enqueues zero(amax_out) + the amax reduction. No allocation, no host synchronization.
void launch_amax(const void* input, int64_t count, float* amax_out, cudaStream_t stream) {
  launch_zero(amax_out, 1, stream);
  const int64_t nchunks = count / 8;
  if (nchunks == 0) return;
  const int64_t want = (nchunks + kAmaxThreads * kAmaxUnroll - 1) / (kAmaxThreads * kAmaxUnroll);
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sm_count()) * 4)));
  launch_kernel(amax_kernel, blocks, kAmaxThreads, 0, stream, reinterpret_cast<const uint4*>(input), nchunks,
                reinterpret_cast<uint32_t*>(amax_out));
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

// One place mapping the runtime format to the kernel template; anything else fails loudly.
template <template <int> class K, class... Args>
void dispatch_fmt(Fp8Format f, Args&&... args) {
  switch (f) {
    case Fp8Format::kE4M3: K<0>::run(std::forward<Args>(args)...); return;
    case Fp8Format::kE5M2: K<1>::run(std::forward<Args>(args)...); return;
  }
  throw Error(ErrorCode::kInvalidArgument, "format: unknown value " + std::to_string(static_cast<int>(f)));
}

template <int kFmt>
struct TensorCast {
  static void run(const Fp8TensorParams& kp, cudaStream_t stream) {
    const int64_t per_block = int64_t(kCastThreads) * kCastChunksPerThread;
    const int64_t blocks = (kp.nchunks + per_block - 1) / per_block;
    launch_kernel(fp8_tensor_cast_kernel<kFmt>, static_cast<unsigned>(blocks), kCastThreads, 0, stream, kp);
  }
};

template <int kFmt>
struct Rowwise {
  static void run(const Fp8RowParams& kp, cudaStream_t stream) {
    const int64_t nchunks = kp.cols / 8;
    const int64_t per_thread = kRowChunksPerThread;
    if (nchunks <= 1024 * per_thread) {
      int threads = static_cast<int>((nchunks + per_thread - 1) / per_thread);
      threads = std::max(32, (threads + 31) / 32 * 32);
      launch_kernel(fp8_rowwise_kernel<kFmt, true>, static_cast<unsigned>(kp.rows), threads, 0, stream, kp);
    } else {
      launch_kernel(fp8_rowwise_kernel<kFmt, false>, static_cast<unsigned>(kp.rows), 1024, 0, stream, kp);
    }
  }
};

template <int kFmt>
struct ColCast {
  static void run(const Fp8ColParams& kp, dim3 grid, cudaStream_t stream) {
    launch_kernel(fp8_colcast_kernel<kFmt>, grid, kColThreads, 0, stream, kp);
  }
};

template <int kFmt>
struct Block1x128 {
  static void run(const Fp8BlockParams& kp, int64_t tiles, cudaStream_t stream) {
    launch_kernel(fp8_block1x128_kernel<kFmt>, static_cast<unsigned>(tiles), kTileThreads, 0, stream, kp);
  }
};

template <int kFmt>
struct Block128x128 {
  static void run(const Fp8BlockParams& kp, int64_t tiles, cudaStream_t stream) {
    launch_kernel(fp8_block128x128_kernel<kFmt>, static_cast<unsigned>(tiles), kTileThreads, 0, stream, kp);
  }
};

}  // namespace

void compute_amax(const void* input, DType input_dtype, int64_t count, float* amax_out, cudaStream_t stream) {
  validate_amax(input, input_dtype, count, amax_out);
  launch_amax(input, count, amax_out, stream);
}

void fp8_quantize(const Fp8QuantizeParams& p, cudaStream_t stream) {
  validate(p);
  if (p.rows == 0 || p.cols == 0) return;
  const double fmax = static_cast<double>(fp8_max(p.format));
  const auto* in = static_cast<const uint16_t*>(p.input);
  auto* out = static_cast<uint8_t*>(p.output);
  switch (p.scaling) {
    case Fp8Scaling::kTensorwise: {
      const float* amax = p.amax_in;
      if (amax == nullptr) {
        launch_amax(p.input, p.rows * p.cols, p.amax_out, stream);
        amax = p.amax_out;
      }
      Fp8TensorParams kp{reinterpret_cast<const uint4*>(in), p.rows * p.cols / 8, reinterpret_cast<uint2*>(out), amax,
                         p.scale_inv, fmax, p.pow2_scales, p.amax_in == nullptr};
      dispatch_fmt<TensorCast>(p.format, kp, stream);
      break;
    }
    case Fp8Scaling::kRowwise: {
      Fp8RowParams kp{in, p.rows, p.cols, out, p.scale_inv, fmax, p.pow2_scales};
      dispatch_fmt<Rowwise>(p.format, kp, stream);
      break;
    }
    case Fp8Scaling::kColwise: {
      launch_zero(p.amax_out, p.cols, stream);
      // Enough blocks to fill the GPU; each block covers 256 columns and a slice of rows.
      const int64_t col_blocks = (p.cols + 255) / 256;
      const int64_t target = int64_t(sm_count()) * 8;
      int64_t splits = std::max<int64_t>(1, std::min<int64_t>((target + col_blocks - 1) / col_blocks, (p.rows + 63) / 64));
      splits = std::min<int64_t>(splits, 65535);
      const int64_t rows_per_block = (p.rows + splits - 1) / splits;
      splits = (p.rows + rows_per_block - 1) / rows_per_block;
      Fp8ColParams kp{in, p.rows, p.cols, rows_per_block, out, reinterpret_cast<uint32_t*>(p.amax_out), p.scale_inv,
                      fmax, p.pow2_scales};
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
      launch_kernel(fp8_colamax_kernel, grid, kColThreads, 0, stream, kp);
      TPCOMM_CUDA_CHECK(cudaGetLastError());
      dispatch_fmt<ColCast>(p.format, kp, grid, stream);
      break;
    }
    case Fp8Scaling::kBlock1x128:
    case Fp8Scaling::kBlock128x128: {
      const int64_t col_tiles = (p.cols + kTileCols - 1) / kTileCols;
      const int64_t tiles = col_tiles * ((p.rows + kTileRows - 1) / kTileRows);
      const int64_t ld = p.scale_ld ? p.scale_ld : (p.scaling == Fp8Scaling::kBlock1x128 ? p.rows : col_tiles);
      Fp8BlockParams kp{in, p.rows, p.cols, col_tiles, out, p.scale_inv, ld, fmax, p.pow2_scales};
      if (p.scaling == Fp8Scaling::kBlock1x128) dispatch_fmt<Block1x128>(p.format, kp, tiles, stream);
      else dispatch_fmt<Block128x128>(p.format, kp, tiles, stream);
      break;
    }
  }
  TPCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace tpcomm::quant
