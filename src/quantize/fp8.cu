// FP8 quantize launchers (tensorwise, rowwise, colwise, 1x128, 128x128) and compute_amax.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "common/check.h"
#include "common/pdl.h"
#include "tpcomm/log.h"
#include "quantize/colwise_plan.h"
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

// One place mapping the runtime format to the kernel template; anything else fails loudly. Returns what K::run
// returns.
template <template <int> class K, class... Args>
auto dispatch_fmt(Fp8Format f, Args&&... args) {
  switch (f) {
    case Fp8Format::kE4M3: return K<0>::run(std::forward<Args>(args)...);
    case Fp8Format::kE5M2: return K<1>::run(std::forward<Args>(args)...);
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
  static void run(const Fp8ColParams& kp, dim3 grid, bool transposed, cudaStream_t stream) {
    if (transposed) launch_kernel(fp8_colcast_kernel<kFmt, true>, grid, kColThreads, 0, stream, kp);
    else launch_kernel(fp8_colcast_kernel<kFmt, false>, grid, kColThreads, 0, stream, kp);
  }
};

// ---- colwise: which form runs --------------------------------------------------------------------------------------
// The one-pass cluster kernel wherever a strip fits 16 blocks (rows <= 16384 at the default 64 KiB per block),
// else the two-pass form with one log line (info level, once). Measurement switches (read once; bench/NOTES.md
// session 8): TPCOMM_QUANT_FP8_COLWISE=two_pass|cluster forces a form (cluster on a shape it cannot take is an
// error naming rows); TPCOMM_QUANT_COLWISE_W=32|64|128 forces the strip width; TPCOMM_QUANT_COLWISE_REGS=0|4 forces
// the rows per thread held in registers; TPCOMM_QUANT_COLWISE_BLOCK_KB sets the strip bytes per block (default 64:
// three blocks per SM in shared memory alone, four with registers; 80 KiB measured 63% of copy at 8192x8192 against
// 73%, 32 KiB 61% because the strip must narrow; the session-8 A/B calls name it TPCOMM_QUANT_COLWISE_SMEM_KB).
enum class ColForm { kAuto, kCluster, kTwoPass };

const char* env_or_null(const char* name) {
  const char* e = std::getenv(name);
  return (e == nullptr || e[0] == '\0') ? nullptr : e;
}

ColForm col_form() {
  static const ColForm v = [] {
    const char* e = env_or_null("TPCOMM_QUANT_FP8_COLWISE");
    if (e == nullptr) return ColForm::kAuto;
    const std::string s(e);
    if (s == "cluster") return ColForm::kCluster;
    if (s == "two_pass") return ColForm::kTwoPass;
    if (s == "auto") return ColForm::kAuto;
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_QUANT_FP8_COLWISE: '" + s + "' is not auto, cluster or two_pass");
  }();
  return v;
}

int col_width_override() {
  static const int v = [] {
    const char* e = env_or_null("TPCOMM_QUANT_COLWISE_W");
    if (e == nullptr) return 0;
    const std::string s(e);
    if (s == "32" || s == "64" || s == "128") return std::stoi(s);
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_QUANT_COLWISE_W: '" + s + "' is not 32, 64 or 128");
  }();
  return v;
}

int64_t col_block_budget() {
  static const int64_t v = [] {
    const char* e = env_or_null("TPCOMM_QUANT_COLWISE_BLOCK_KB");
    if (e == nullptr) return int64_t(64) << 10;
    char* end = nullptr;
    const long kb = std::strtol(e, &end, 10);
    if (end == e || *end != '\0' || kb < 1 || kb > 200)
      throw Error(ErrorCode::kInvalidArgument, std::string("TPCOMM_QUANT_COLWISE_BLOCK_KB: '") + e + "' is not 1..200");
    return int64_t(kb) << 10;
  }();
  return v;
}

using ColKernel = void (*)(Fp8ColClusterParams);

// TPCOMM_QUANT_COLWISE_REGS=0|4 (measurement switch, read once; -1 = unset): rows per thread kept in registers.
int col_regs_override() {
  static_assert(kColRegRows == 4, "the switch accepts 0 or kColRegRows");
  static const int v = [] {
    const char* e = env_or_null("TPCOMM_QUANT_COLWISE_REGS");
    if (e == nullptr) return -1;
    const std::string s(e);
    if (s == "0") return 0;
    if (s == "4") return 4;
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_QUANT_COLWISE_REGS: '" + s + "' is not 0 or 4");
  }();
  return v;
}

// The kernel of a plan: rows in registers or not; the transposed-output form keeps every row in shared memory.
template <int kFmt, int kW>
ColKernel col_cluster_kernel(int regs, bool transposed) {
  if (transposed) return fp8_colwise_cluster_kernel<kFmt, kW, 0, true>;
  return regs == kColRegRows ? fp8_colwise_cluster_kernel<kFmt, kW, kColRegRows> : fp8_colwise_cluster_kernel<kFmt, kW, 0>;
}

// Opt-ins (once per kernel): clusters of up to 16 blocks, dynamic shared memory up to the budget's maximum.
template <int kFmt, int kW>
void col_cluster_attributes() {
  static const bool done = [] {
    for (const ColKernel k : {col_cluster_kernel<kFmt, kW>(0, false), col_cluster_kernel<kFmt, kW>(kColRegRows, false),
                              col_cluster_kernel<kFmt, kW>(0, true)}) {
      TPCOMM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      TPCOMM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 << 10));
    }
    return true;
  }();
  (void)done;
}

// Clusters of C blocks with `smem` bytes each that can be resident at once (0: the launch would fail). Cached.
template <int kFmt, int kW>
int col_cluster_capacity(int regs, bool transposed, unsigned c, std::size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, bool, unsigned, std::size_t>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(regs, transposed, c, smem);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  col_cluster_attributes<kFmt, kW>();
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(c * 64);
  cfg.blockDim = dim3(kColClusterThreads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1] = {::tpcomm::detail::cluster_attribute(c)};
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, col_cluster_kernel<kFmt, kW>(regs, transposed), &cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  cache.emplace(key, n);
  return n;
}

template <int kFmt>
int col_capacity(const ColClusterPlan& pl, bool transposed) {
  switch (pl.w) {
    case 32: return col_cluster_capacity<kFmt, 32>(pl.regs, transposed, pl.c, pl.smem);
    case 64: return col_cluster_capacity<kFmt, 64>(pl.regs, transposed, pl.c, pl.smem);
    case 128: return col_cluster_capacity<kFmt, 128>(pl.regs, transposed, pl.c, pl.smem);
  }
  return 0;
}

// The first candidate shape (colwise_plan.h) whose clusters the GPU can hold. The transposed-output form keeps
// every row in shared memory and slices of whole 16-row groups.
template <int kFmt>
std::optional<ColClusterPlan> plan_col_cluster(int64_t rows, int64_t cols, bool transposed) {
  ColPlanInputs in;
  in.rows = rows;
  in.cols = cols;
  in.block_budget = col_block_budget();
  in.forced_w = col_width_override();
  in.forced_regs = transposed ? 0 : col_regs_override();
  in.row_align = transposed ? 16 : 1;
  in.sm_count = sm_count();
  for (const ColClusterPlan& pl : col_cluster_candidates(in))
    if (col_capacity<kFmt>(pl, transposed) > 0) return pl;
  return std::nullopt;
}

template <int kFmt, int kW>
void launch_col_cluster(Fp8ColClusterParams kp, const ColClusterPlan& pl, bool transposed, cudaStream_t stream) {
  col_cluster_attributes<kFmt, kW>();
  kp.rows_per_block = pl.rows_per_block;
  const int64_t strips = (kp.cols + kW - 1) / kW;
  ::tpcomm::detail::launch_kernel_cluster(col_cluster_kernel<kFmt, kW>(pl.regs, transposed),
                                          dim3(static_cast<unsigned>(strips * pl.c)), kColClusterThreads, pl.smem,
                                          pl.c, stream, kp);
}

template <int kFmt>
struct ColCluster {
  // False when no plan fits (the caller runs the two-pass form).
  static bool run(const Fp8ColClusterParams& kp, bool transposed, cudaStream_t stream) {
    const auto pl = plan_col_cluster<kFmt>(kp.rows, kp.cols, transposed);
    if (!pl) {
      if (col_form() == ColForm::kCluster)
        throw Error(ErrorCode::kInvalidArgument,
                    "rows: " + std::to_string(kp.rows) +
                        " rows do not fit the one-pass colwise kernel (16 blocks x TPCOMM_QUANT_COLWISE_BLOCK_KB), and"
                        " TPCOMM_QUANT_FP8_COLWISE=cluster forbids the two-pass form");
      static std::once_flag once;
      std::call_once(once, [&] {
        log(LogLevel::kInfo, "fp8 colwise: " + std::to_string(kp.rows) +
                                 " rows do not fit one cluster's shared memory; using the two-pass form (input read "
                                 "twice). Logged once.");
      });
      return false;
    }
    if ((kp.cols + pl->w - 1) / pl->w * pl->c > int64_t(0x7fffffff)) return false;  // beyond grid.x
    switch (pl->w) {
      case 32: launch_col_cluster<kFmt, 32>(kp, *pl, transposed, stream); break;
      case 64: launch_col_cluster<kFmt, 64>(kp, *pl, transposed, stream); break;
      default: launch_col_cluster<kFmt, 128>(kp, *pl, transposed, stream); break;
    }
    return true;
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
      if (col_form() != ColForm::kTwoPass) {
        const Fp8ColClusterParams cp{in, p.rows, p.cols, 0, out, reinterpret_cast<uint32_t*>(p.amax_out), p.scale_inv,
                                     fmax, p.pow2_scales};
        if (dispatch_fmt<ColCluster>(p.format, cp, p.transpose_output, stream)) break;
      }
      launch_zero(p.amax_out, p.cols, stream);
      // Enough blocks to fill the GPU; each block covers 256 columns and a slice of rows.
      const int64_t col_blocks = (p.cols + 255) / 256;
      const int64_t target = int64_t(sm_count()) * 8;
      int64_t splits = std::max<int64_t>(1, std::min<int64_t>((target + col_blocks - 1) / col_blocks, (p.rows + 63) / 64));
      splits = std::min<int64_t>(splits, 65535);
      int64_t rows_per_block = (p.rows + splits - 1) / splits;
      if (p.transpose_output) rows_per_block = (rows_per_block + 15) / 16 * 16;  // 16-row groups (16-byte stores)
      splits = (p.rows + rows_per_block - 1) / rows_per_block;
      Fp8ColParams kp{in, p.rows, p.cols, rows_per_block, out, reinterpret_cast<uint32_t*>(p.amax_out), p.scale_inv,
                      fmax, p.pow2_scales};
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
      launch_kernel(fp8_colamax_kernel, grid, kColThreads, 0, stream, kp);
      TPCOMM_CUDA_CHECK(cudaGetLastError());
      dispatch_fmt<ColCast>(p.format, kp, grid, p.transpose_output, stream);
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
