// Tile scheduler of the native async-TP GEMM, for CUTLASS's SM90 TMA warp-specialized cooperative and ping-pong
// kernels (cutlass/gemm/kernel/sm90_gemm_tma_warpspecialized_{cooperative,pingpong}.hpp), selected through the
// NativeAsyncInputScheduler tag. A static persistent schedule (native_plan.h: native_tile_of) in which the mainloop producer warp -- the only
// warp that reads A -- waits, before it starts the loads of a tile, until every chunk the tile's rows touch is
// signalled. The consumer warpgroups and the epilogue walk the same tile sequence without waiting: they consume what
// the producer's TMA loads deliver through the shared-memory pipeline. (Ping-pong: the producer walks every tile of
// the CTA's sequence, each consumer warpgroup every second one, through advance_to_next_work / get_current_work.)
//
// Including this header requires the CUTLASS include directory (native_gemm.cu only).
#pragma once

#include <cute/arch/cluster_sm90.hpp>
#include <cute/tensor.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>
#include <cutlass/kernel_hardware_info.hpp>
#include <cutlass/pipeline/pipeline.hpp>

#include <cstdint>

#include "async_tp/native_plan.h"
#include "tpcomm/device/sync.cuh"

namespace tpcomm::detail {

// Tag passed as GemmUniversal's TileSchedulerTag.
struct NativeAsyncInputScheduler {};

struct NativeSchedulerParams {
  NativeSchedule schedule;
  const uint32_t* signals;
  int32_t chunks_per_rank;
  device::SyncContext sync;
};

// Waits until *signal != 0 (ld.acquire.sys), with the project's timeout and abort protocol (sync.cuh): false after
// reporting kDevTimeout naming `rank`, or false without reporting once another CTA aborted. Unlike
// device::wait_until it sleeps between polls: up to one poller per CTA (132) spins on one signal word while the
// other CTAs compute, and a tight loop would keep that word's L2 slice busy for nothing (PyTorch's scheduler sleeps
// 20 ns the same way).
__device__ __forceinline__ bool native_wait_chunk(const device::SyncContext& sync, const uint32_t* signal, int rank) {
  if (device::ld_acquire_sys(signal) != 0u) return true;
  const uint64_t start = device::global_timer_ns();
  for (uint32_t spin = 1;; ++spin) {
    __nanosleep(64);
    if (device::ld_acquire_sys(signal) != 0u) return true;
    if ((spin & 15u) == 0) {
      if (device::aborted(sync)) return false;
      if (device::global_timer_ns() - start > sync.timeout_ns) {
        device::report_error(sync, device::kDevTimeout, rank);
        return false;
      }
    }
  }
}

class NativeTileSchedulerSm90 {
 public:
  struct WorkTileInfo {
    int32_t M_idx = 0;
    int32_t N_idx = 0;
    int32_t L_idx = 0;
    bool is_valid_tile = false;

    CUTLASS_HOST_DEVICE bool is_valid() const { return is_valid_tile; }
    CUTLASS_HOST_DEVICE static WorkTileInfo invalid_work_tile() { return {-1, -1, -1, false}; }
    CUTLASS_HOST_DEVICE bool is_final_split(uint32_t) const { return true; }
    CUTLASS_HOST_DEVICE int32_t reduction_subtile_idx() const { return -1; }
  };

  using Params = NativeSchedulerParams;
  struct Arguments {
    NativeSchedulerParams params{};
  };
  static constexpr bool IsDynamicPersistent = false;

  using Pipeline = cutlass::PipelineEmpty;
  using PipelineStorage = typename Pipeline::SharedStorage;
  using ThrottlePipeline = cutlass::PipelineEmpty;
  using ThrottlePipelineStorage = typename ThrottlePipeline::SharedStorage;
  struct CLCResponse {};
  class SharedStorage {
   public:
    CUTLASS_DEVICE PipelineStorage pipeline() { return PipelineStorage{}; }
    CUTLASS_DEVICE ThrottlePipelineStorage throttle_pipeline() { return ThrottlePipelineStorage{}; }
    CUTLASS_DEVICE CLCResponse* data() { return nullptr; }
  };

  // ---- host side ----
  template <class ProblemShapeMNKL, class TileShape, class ClusterShape>
  static Params to_underlying_arguments(ProblemShapeMNKL, TileShape, ClusterShape, cutlass::KernelHardwareInfo const&,
                                        Arguments const& args, void* = nullptr, uint32_t = 1, uint32_t = 1) {
    static_assert(cute::is_static<TileShape>::value && cute::is_static<ClusterShape>::value);
    return args.params;
  }
  CUTLASS_HOST_DEVICE static bool can_implement(Arguments const&) { return true; }
  template <class ProblemShape, class ElementAccumulator>
  static size_t get_workspace_size(Arguments const&, ProblemShape, cutlass::KernelHardwareInfo const&, uint32_t,
                                   uint32_t = 1, uint32_t = 1) {
    return 0;
  }
  template <class ProblemShape, class ElementAccumulator>
  static cutlass::Status initialize_workspace(Arguments const&, void*, cudaStream_t, ProblemShape,
                                              cutlass::KernelHardwareInfo const&, uint32_t, uint32_t = 1,
                                              uint32_t = 1, cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  // ---- device side ----
  CUTLASS_HOST_DEVICE NativeTileSchedulerSm90() {}

  CUTLASS_DEVICE explicit NativeTileSchedulerSm90(Params const& params) : params_(params) {
#if defined(__CUDA_ARCH__)
    // One-dimensional grid of clusters of cluster_m CTAs along x: cluster i is blocks [i*cluster_m, (i+1)*cluster_m).
    const int32_t cm = params.schedule.cluster_m;
    work_ = static_cast<int32_t>(blockIdx.x) / cm;
    stride_ = static_cast<int32_t>(gridDim.x) / cm;
    cta_in_cluster_ = static_cast<int32_t>(cute::block_id_in_cluster().x);
    // The mainloop producer: warp 0 of warpgroup 0 (the kernel's ProducerWarpRole::Mainloop), which issues every
    // TMA load of A.
    is_a_loader_ = cutlass::canonical_warp_group_idx() == 0 && cutlass::canonical_warp_idx_sync() % 4 == 0;
#endif
  }

  template <class ClusterShape>
  CUTLASS_DEVICE WorkTileInfo initial_work_tile_info(ClusterShape) {
    return current_work();
  }

  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo) {
    work_ += stride_;
    return cute::make_tuple(current_work(), true);
  }

  CUTLASS_DEVICE void advance_to_next_work(uint32_t advance_count = 1) {
    work_ += stride_ * static_cast<int32_t>(advance_count);
  }

  CUTLASS_DEVICE WorkTileInfo get_current_work() { return current_work(); }

  template <class TileSchedulerPipeline, class TileSchedulerPipelineState>
  CUTLASS_DEVICE auto fetch_next_work(WorkTileInfo info, TileSchedulerPipeline&, TileSchedulerPipelineState) {
    return fetch_next_work(info);
  }

  // Used by the kernel only with CUTLASS_ENABLE_GDC_FOR_SM90 (not defined: no programmatic dependent launch).
  CUTLASS_DEVICE bool is_last_tile(WorkTileInfo&, uint32_t advance_count = 1) const {
    return work_ + stride_ * static_cast<int32_t>(advance_count) >= params_.schedule.num_work;
  }

  CUTLASS_HOST_DEVICE static bool compute_epilogue(WorkTileInfo const&, Params const&) { return true; }
  CUTLASS_HOST_DEVICE static bool compute_epilogue(WorkTileInfo const&) { return true; }
  template <class FrgTensorC>
  CUTLASS_DEVICE static void fixup(Params const&, WorkTileInfo const&, FrgTensorC&, uint32_t, uint32_t) {}
  template <class FrgTensorC>
  CUTLASS_DEVICE void fixup(WorkTileInfo const&, FrgTensorC&, uint32_t, uint32_t) const {}
  CUTLASS_DEVICE static bool continue_current_work(WorkTileInfo&) { return false; }
  template <class ProblemShape, class TileShape>
  CUTLASS_HOST_DEVICE static int get_work_k_tile_count(WorkTileInfo const&, ProblemShape problem_shape,
                                                       TileShape tile_shape) {
    return cute::size(cute::ceil_div(cute::get<2>(problem_shape), cute::get<2>(tile_shape)));
  }
  CUTLASS_HOST_DEVICE static uint32_t get_work_k_tile_start(WorkTileInfo const&) { return 0u; }
  CUTLASS_DEVICE static bool need_separate_reduction(Params const&) { return false; }
  CUTLASS_DEVICE bool is_work_tile_for_reduction(WorkTileInfo const&, Params const&) { return false; }
  template <class FrgTensorC>
  CUTLASS_DEVICE void separate_reduction(Params const&, WorkTileInfo const&, FrgTensorC&, uint32_t, uint32_t) {}
  template <class FrgTensorC>
  CUTLASS_DEVICE static void share(Params const&, WorkTileInfo const&, FrgTensorC&, uint32_t, uint32_t) {}
  CUTLASS_DEVICE static bool valid_warpgroup_in_work_tile(WorkTileInfo const&) { return true; }
  CUTLASS_DEVICE static bool requires_separate_reduction(Params const&) { return false; }

 private:
  CUTLASS_DEVICE WorkTileInfo current_work() {
    if (work_ >= params_.schedule.num_work) return WorkTileInfo::invalid_work_tile();
    const NativeTile t = native_tile_of(params_.schedule, work_, cta_in_cluster_);
    if (is_a_loader_ && t.m < params_.schedule.tiles_m) wait_for_rows(t.m);
    return {t.m, t.n, 0, true};
  }

  // Called by the whole producer warp before it loads the tile's A. Lane 0 waits for each chunk the tile touches.
  // Then every lane (whichever one elect_one_sync() picks issues the copies) re-reads the signals with ld.acquire.sys
  // (they are non-zero by now and stay so during the kernel) and executes fence.proxy.async.global:
  //  - The data of a chunk is written by the copy engine or by another GPU before its signal is raised with release
  //    semantics (cuStreamWriteValue32's default memory barrier, or st.release.sys): the acquire load that observes
  //    the signal makes those writes visible to this thread's generic-proxy accesses (system scope: the writer may be
  //    another GPU over NVLink).
  //  - The A tiles are read by TMA, i.e. the async proxy, which the acquire does not order. The proxy fence orders
  //    this thread's generic-proxy view (which now includes the chunk) before its later async-proxy operations, so the
  //    bulk tensor copies issued after it read the landed data and not an older copy of those lines.
  // If a wait fails (timeout or abort) the warp stops waiting for good (gave_up_) and loads whatever A holds: the
  // kernel finishes normally, the output is undefined, and the error record names the missing rank.
  CUTLASS_DEVICE void wait_for_rows(int32_t m_tile) {
    int32_t first = 0, last = 0;
    native_tile_chunks(params_.schedule, m_tile, &first, &last);
    if (cutlass::canonical_lane_idx() == 0 && !gave_up_) {
      for (int32_t c = first; c <= last; ++c) {
        if (!native_wait_chunk(params_.sync, params_.signals + c, c / params_.chunks_per_rank)) {
          gave_up_ = true;
          break;
        }
      }
    }
    __syncwarp();
    for (int32_t c = first; c <= last; ++c) (void)device::ld_acquire_sys(params_.signals + c);
    asm volatile("fence.proxy.async.global;" ::: "memory");
  }

  Params params_{};
  int32_t work_ = 0;
  int32_t stride_ = 1;
  int32_t cta_in_cluster_ = 0;
  bool is_a_loader_ = false;
  bool gave_up_ = false;
};

}  // namespace tpcomm::detail

namespace cutlass::gemm::kernel::detail {

template <class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount>
struct TileSchedulerSelector<tpcomm::detail::NativeAsyncInputScheduler, arch::Sm90, TileShape, ClusterShape,
                             SchedulerPipelineStageCount> {
  using Scheduler = tpcomm::detail::NativeTileSchedulerSm90;
};

}  // namespace cutlass::gemm::kernel::detail
