// The native async-TP GEMM (native_gemm.h): CUTLASS 4.x SM90 TMA warp-specialized cooperative GEMMs whose tile
// scheduler (native_scheduler.cuh) waits on per-chunk signals. Three kernels:
//   bf16 x bf16 -> bf16, fp32 accumulation (D = acc): tile 128x128x64 ping-pong (the default), or 128x256x64
//     cooperative (tile_config 1; native_plan.h has the measurements);
//   e4m3 x e4m3 -> bf16, tile 128x128x128, tensorwise: D = acc * (a_scale[0] * b_scale[0]) (one scalar-broadcast node
//     reading both device scalars and multiplying them; null pointers mean 1);
//   e4m3 x e4m3 -> bf16, tile 128x128x128, rowwise: D[m][n] = acc * b_scale[n] * a_scale[m] (an EVT epilogue: row
//     broadcast of b_scale times the accumulator, then a column broadcast of a_scale).
// All clusters of 2x1x1 (B multicast between the two CTAs). FP8 uses CUTLASS's accurate FP8 mainloop (the
// accumulators are promoted to fp32 registers every 4 k-blocks, as cuBLASLt without fast accumulation does).
//
// This translation unit is compiled for sm_90a only, in its own object library (CMakeLists.txt): it is slow to
// build and its kernels use wgmma / setmaxnreg.
#include "async_tp/native_gemm.h"

#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/numeric_types.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "async_tp/native_plan.h"
#include "async_tp/native_scheduler.cuh"
#include "common/check.h"
#include "tpcomm/error.h"

namespace tpcomm::detail {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

template <class ElementAB, class TileShape, class Fusion,
          class MainSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative,
          class EpiSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative>
struct NativeKernel {
  using ClusterShape = Shape<_2, _1, _1>;
  using ElementD = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;     // M x K, K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // K x N, K contiguous (the (N, K) row-major weight)
  using LayoutD = cutlass::layout::RowMajor;     // M x N
  static constexpr int kAlignAB = 16 / static_cast<int>(sizeof(ElementAB));
  static constexpr int kAlignD = 8;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD, kAlignD,  // no C operand
      ElementD, LayoutD, kAlignD, EpiSchedule, Fusion>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA, kAlignAB, ElementAB, LayoutB, kAlignAB,
      float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;

  using Gemm = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int>, Mainloop, Epilogue, NativeAsyncInputScheduler>;
  static_assert(std::is_same_v<typename Gemm::TileScheduler, NativeTileSchedulerSm90>, "scheduler not selected");
};

using Bf16Tile = Shape<_128, _256, _64>;
using Bf16PingpongTile = Shape<_128, _128, _64>;
using Fp8Tile = Shape<_128, _128, _128>;
static_assert(kNativeTileBf16Coop.m == 128 && kNativeTileBf16Coop.n == 256 && kNativeTileBf16Coop.k == 64 &&
              kNativeTileBf16Coop.cluster_m == 2, "native_plan.h's bf16 tile must match the kernel's");
static_assert(kNativeTileBf16Pingpong.m == 128 && kNativeTileBf16Pingpong.n == 128 && kNativeTileBf16Pingpong.k == 64 &&
              kNativeTileBf16Pingpong.cluster_m == 2, "native_plan.h's bf16 ping-pong tile must match the kernel's");
static_assert(kNativeTileFp8.m == 128 && kNativeTileFp8.n == 128 && kNativeTileFp8.k == 128 &&
              kNativeTileFp8.cluster_m == 2, "native_plan.h's FP8 tile must match the kernel's");

using Bf16Fusion = fusion::LinearCombination<cutlass::bfloat16_t, float, void, float, kRound>;

using TensorwiseFusion =
    fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, cutlass::bfloat16_t, float, kRound>,
                    fusion::Sm90ScalarBroadcast<float, Stride<_0, _0, _0>, 2>,  // a_scale[0] * b_scale[0]
                    fusion::Sm90AccFetch>;

using RowwiseFusion = fusion::Sm90EVT<
    fusion::Sm90Compute<cutlass::multiplies, cutlass::bfloat16_t, float, kRound>,
    fusion::Sm90ColBroadcast<0, Fp8Tile, float, float, Stride<_1, _0, _0>>,  // a_scale[m]
    fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>,
                    fusion::Sm90RowBroadcast<0, Fp8Tile, float, float, Stride<_0, _1, _0>>,  // b_scale[n]
                    fusion::Sm90AccFetch>>;

using KernelBf16 = NativeKernel<cutlass::bfloat16_t, Bf16Tile, Bf16Fusion>;
using KernelBf16Pingpong =
    NativeKernel<cutlass::bfloat16_t, Bf16PingpongTile, Bf16Fusion, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                 cutlass::epilogue::TmaWarpSpecialized>;
using KernelFp8Tensorwise = NativeKernel<cutlass::float_e4m3_t, Fp8Tile, TensorwiseFusion>;
using KernelFp8Rowwise = NativeKernel<cutlass::float_e4m3_t, Fp8Tile, RowwiseFusion>;

constexpr int kMaxDevices = 64;

// Everything in NativeAgGemmParams that the kernel's Params depend on (max_ctas only sets the grid), plus the device.
struct ParamsKey {
  std::array<uint64_t, 24> w{};
  bool operator==(const ParamsKey& o) const { return std::memcmp(w.data(), o.w.data(), sizeof(w)) == 0; }
};
struct ParamsKeyHash {
  size_t operator()(const ParamsKey& k) const {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t v : k.w) h = (h ^ v) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

ParamsKey make_key(const NativeAgGemmParams& p, int device) {
  ParamsKey k;
  int i = 0;
  auto put = [&](uint64_t v) { k.w[i++] = v; };
  auto ptr = [](const void* q) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(q)); };
  put(ptr(p.a)); put(ptr(p.b)); put(ptr(p.d));
  put(static_cast<uint64_t>(p.M)); put(static_cast<uint64_t>(p.N)); put(static_cast<uint64_t>(p.K));
  put(static_cast<uint64_t>(p.lda)); put(static_cast<uint64_t>(p.ldb)); put(static_cast<uint64_t>(p.ldd));
  put(static_cast<uint64_t>(p.ab_dtype)); put(static_cast<uint64_t>(p.scale));
  put(ptr(p.a_scale)); put(ptr(p.b_scale)); put(ptr(p.chunk_signals));
  put(static_cast<uint64_t>(p.num_chunks)); put(static_cast<uint64_t>(p.pivot_chunk));
  put(static_cast<uint64_t>(p.chunks_per_rank)); put(ptr(p.sync.error)); put(ptr(p.sync.abort));
  put(p.sync.timeout_ns); put(static_cast<uint64_t>(p.raster_band)); put(static_cast<uint64_t>(p.tile_config));
  put(static_cast<uint64_t>(device));
  return k;
}

template <class K>
class Launcher {
 public:
  using Gemm = typename K::Gemm;
  using Params = typename Gemm::Params;

  static Launcher& instance() {
    static Launcher l;
    return l;
  }

  void launch(const NativeAgGemmParams& p, cudaStream_t stream) {
    int device = 0;
    TPCOMM_CUDA_CHECK(cudaGetDevice(&device));
    TPCOMM_ARG_CHECK(device >= 0 && device < kMaxDevices, "device", "index beyond the native GEMM's device table");
    const DeviceInfo info = device_info(device);
    const Params* params = nullptr;
    int32_t num_work = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const ParamsKey key = make_key(p, device);
      auto it = cache_.find(key);
      if (it == cache_.end()) {
        if (cache_.size() >= kMaxCached) cache_.clear();  // bounded; a steady workload re-fills it once
        it = cache_.emplace(key, make_params(p, device, info)).first;
      }
      params = &it->second;
      num_work = params->scheduler.schedule.num_work;
      // Grid: persistent clusters, at most one wave of resident clusters, no more than the work and max_ctas allow.
      int clusters = info.max_active_clusters;
      if (p.max_ctas > 0) clusters = std::min(clusters, p.max_ctas / kCluster);
      clusters = std::min(clusters, static_cast<int>(num_work));
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(static_cast<unsigned>(clusters * kCluster), 1, 1);
      cfg.blockDim = dim3(Gemm::MaxThreadsPerBlock, 1, 1);
      cfg.dynamicSmemBytes = Gemm::SharedStorageSize;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0] = cluster_attr();
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      // The params are copied into the launch here; the lock keeps the cache entry alive until then.
      TPCOMM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, cutlass::device_kernel<Gemm>, *params));
    }
  }

 private:
  static constexpr int kCluster = 2;
  static constexpr size_t kMaxCached = 256;

  struct DeviceInfo {
    int sm_count = 0;
    int max_active_clusters = 0;
  };

  static cudaLaunchAttribute cluster_attr() {
    cudaLaunchAttribute a{};
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = kCluster;
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = 1;
    return a;
  }

  // Per device, once: the dynamic shared-memory limit of the kernel and how many of its clusters are resident at once.
  DeviceInfo device_info(int device) {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceInfo& d = devices_[device];
    if (d.max_active_clusters > 0) return d;
    TPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
    const void* fn = reinterpret_cast<const void*>(cutlass::device_kernel<Gemm>);
    TPCOMM_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, Gemm::SharedStorageSize));
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(static_cast<unsigned>(d.sm_count), 1, 1);
    cfg.blockDim = dim3(Gemm::MaxThreadsPerBlock, 1, 1);
    cfg.dynamicSmemBytes = Gemm::SharedStorageSize;
    cudaLaunchAttribute attr[1];
    attr[0] = cluster_attr();
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    TPCOMM_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, fn, &cfg));
    if (clusters <= 0)
      throw Error(ErrorCode::kUnsupported, "native GEMM: no cluster of its kernel fits on device " +
                                               std::to_string(device) + " (" + std::to_string(Gemm::SharedStorageSize) +
                                               " bytes of shared memory per CTA)");
    DeviceInfo r{d.sm_count, clusters};
    d = r;
    return r;
  }

  Params make_params(const NativeAgGemmParams& p, int device, const DeviceInfo& info) {
    using ElementAB = typename Gemm::ElementA;
    using ElementD = typename Gemm::ElementD;
    const int64_t lda = p.lda ? p.lda : p.K, ldb = p.ldb ? p.ldb : p.K, ldd = p.ldd ? p.ldd : p.N;
    const int M = static_cast<int>(p.M), N = static_cast<int>(p.N), Kd = static_cast<int>(p.K);

    typename Gemm::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = make_shape(M, N, Kd);
    typename Gemm::StrideA sa{};
    cute::get<0>(sa) = lda;
    cute::get<2>(sa) = lda * p.M;
    typename Gemm::StrideB sb{};
    cute::get<0>(sb) = ldb;
    cute::get<2>(sb) = ldb * p.N;
    typename Gemm::StrideD sd{};
    cute::get<0>(sd) = ldd;
    cute::get<2>(sd) = ldd * p.M;
    args.mainloop.ptr_A = static_cast<const ElementAB*>(p.a);
    args.mainloop.dA = sa;
    args.mainloop.ptr_B = static_cast<const ElementAB*>(p.b);
    args.mainloop.dB = sb;
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = sd;
    args.epilogue.ptr_D = static_cast<ElementD*>(p.d);
    args.epilogue.dD = sd;
    set_fusion_args(args.epilogue.thread, p);
    args.hw_info.device_id = device;
    args.hw_info.sm_count = info.sm_count;
    args.hw_info.max_active_clusters = info.max_active_clusters;
    const NativeSchedule s = make_native_schedule(p.M, p.N, p.num_chunks, p.pivot_chunk, native_tile_shape(p), p.raster_band);
    args.scheduler.params = NativeSchedulerParams{s, p.chunk_signals, p.chunks_per_rank, p.sync};

    if (!Gemm::can_implement(args))
      throw Error(ErrorCode::kUnsupported, "native GEMM: CUTLASS cannot implement M=" + std::to_string(p.M) +
                                               " N=" + std::to_string(p.N) + " K=" + std::to_string(p.K) +
                                               " with these strides (TMA alignment)");
    const size_t ws = Gemm::get_workspace_size(args);
    if (ws != 0)
      throw Error(ErrorCode::kInternal, "native GEMM: the kernel asks for " + std::to_string(ws) +
                                            " bytes of CUTLASS workspace, which this launcher does not provide");
    return Gemm::to_underlying_arguments(args, nullptr);
  }

  template <class FusionArgs>
  static void set_fusion_args(FusionArgs& f, const NativeAgGemmParams& p) {
    if constexpr (std::is_same_v<K, KernelBf16> || std::is_same_v<K, KernelBf16Pingpong>) {
      f.alpha = 1.0f;
      f.beta = 0.0f;
    } else if constexpr (std::is_same_v<K, KernelFp8Tensorwise>) {
      // EVT arguments: op_0.. are the children, the last the node; op_0 is the scalar broadcast of
      // a_scale[0] * b_scale[0].
      auto& sc = f.op_0;
      sc.scalars[0] = 1.0f;
      sc.scalars[1] = 1.0f;
      sc.scalar_ptrs[0] = p.scale == NativeScale::kTensorwise ? p.a_scale : nullptr;
      sc.scalar_ptrs[1] = p.scale == NativeScale::kTensorwise ? p.b_scale : nullptr;
    } else {
      f.op_0.ptr_col = p.a_scale;       // a_scale per row (column broadcast)
      f.op_1.op_0.ptr_row = p.b_scale;  // b_scale per column (row broadcast)
    }
  }

  std::mutex mu_;
  DeviceInfo devices_[kMaxDevices];
  std::unordered_map<ParamsKey, Params, ParamsKeyHash> cache_;
};

}  // namespace

void launch_native_ag_gemm(const NativeAgGemmParams& p, cudaStream_t stream) {
  std::string why = native_invalid_argument(p);
  if (!why.empty()) throw Error(ErrorCode::kInvalidArgument, why);
  int device = 0;
  TPCOMM_CUDA_CHECK(cudaGetDevice(&device));
  why = native_ag_gemm_unsupported(p, device);
  if (!why.empty()) throw Error(ErrorCode::kUnsupported, "native GEMM: " + why);
  if (p.ab_dtype == DType::kBFloat16 && p.tile_config == 1) {
    Launcher<KernelBf16>::instance().launch(p, stream);
  } else if (p.ab_dtype == DType::kBFloat16) {
    Launcher<KernelBf16Pingpong>::instance().launch(p, stream);
  } else if (p.scale == NativeScale::kRowwise) {
    Launcher<KernelFp8Rowwise>::instance().launch(p, stream);
  } else {
    Launcher<KernelFp8Tensorwise>::instance().launch(p, stream);
  }
}

}  // namespace tpcomm::detail
