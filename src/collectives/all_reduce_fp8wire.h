// Host side of the FP8-wire two-shot all-reduce (AllReduceWire::kFp8): the wire layout as a pure function
// (CPU-tested in tests/collectives/all_reduce_fp8wire_ref_test.cpp) and the launcher (all_reduce_fp8wire.cu).
// Kernel and protocol: all_reduce_fp8wire_kernels.cuh. Math and error bound: docs/all_reduce.md.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "tpcomm/all_reduce.h"
#include "tpcomm/types.h"

namespace tpcomm::detail {

struct CommImpl;

// Elements per thread step: 16 e4m3 codes are one 16-byte vector on the wire. Both block sizes are multiples
// of it, so a quantization block is 8 (128) or 2 (32) consecutive lanes of one warp.
constexpr std::size_t kFp8WireGroup = 16;
constexpr float kE4m3Max = 448.0f;  // largest finite e4m3 value: the code a block's amax maps to

// Where everything sits in one two-shot slot (CommImpl::two_chunk_cap bytes). The message is cut into blocks of
// `block` elements from element 0 (the last one padded with zeros); owner c holds blocks
// [c * chunk_blocks, min((c + 1) * chunk_blocks, nblocks)), so every block lies in one owner's slice and its
// result depends on the W ranks' copies of that block only (not on W's slicing: the CPU reference needs none).
// A slot holds the owner's codes (one byte per element, 16-byte aligned since block % 16 == 0) followed by one
// fp32 scale per block; an exact all-gather slot holds the reduced slice in the caller's dtype.
struct Fp8WireLayout {
  std::size_t block = 0;          // elements per scale: 32 or 128
  std::size_t nblocks = 0;        // ceil(count / block)
  std::size_t chunk_blocks = 0;   // ceil(nblocks / world)
  std::size_t scale_offset = 0;   // bytes from a slot's start to its scales = chunk_blocks * block
  std::size_t rs_slot_bytes = 0;  // reduce-scatter slot: codes + scales, rounded up to 16
  std::size_t ag_slot_bytes = 0;  // all-gather slot: as rs_slot_bytes (FP8), chunk_blocks * block * esize (exact)
  std::size_t slot_bytes() const { return rs_slot_bytes > ag_slot_bytes ? rs_slot_bytes : ag_slot_bytes; }
  // Blocks of owner c (0 for owners past the end of a short message).
  std::size_t blocks_of(int c) const {
    const std::size_t first = static_cast<std::size_t>(c) * chunk_blocks;
    if (first >= nblocks) return 0;
    return nblocks - first < chunk_blocks ? nblocks - first : chunk_blocks;
  }
};

inline Fp8WireLayout fp8_wire_layout(std::size_t count, std::size_t esize, int world, int block, bool gather_fp8) {
  Fp8WireLayout l;
  const auto round16 = [](std::size_t x) { return (x + 15) / 16 * 16; };
  l.block = static_cast<std::size_t>(block);
  l.nblocks = (count + l.block - 1) / l.block;
  l.chunk_blocks = (l.nblocks + static_cast<std::size_t>(world) - 1) / static_cast<std::size_t>(world);
  l.scale_offset = l.chunk_blocks * l.block;
  l.rs_slot_bytes = round16(l.scale_offset + l.chunk_blocks * sizeof(float));
  l.ag_slot_bytes = gather_fp8 ? l.rs_slot_bytes : l.chunk_blocks * l.block * esize;
  return l;
}

// The FP8 wire's part of all_reduce() (after check_all_reduce_args): whether it runs for these arguments on this
// communicator. Throws for a pinned kTwoShot that cannot run it (no peer memory: kUnsupported naming algo; slots
// over the workspace: kInvalidArgument naming count and CommOptions::two_shot_max_bytes).
bool fp8_wire_runs(const CommImpl& c, std::size_t count, DType dtype, const AllReduceOptions& options);

// Enqueues the FP8-wire two-shot (fp8_wire_runs() was true). `generic`: use the runtime-world-size kernel at W = 2
// as well (the set_force_generic_world_kernels test hook).
void run_fp8_wire_two_shot(CommImpl& c, const void* input, void* output, std::size_t count, DType dtype, ReduceOp op,
                           const AllReduceOptions& options, bool generic, cudaStream_t stream);

// Occupancy (CTAs per SM at `threads` threads) of the least-occupying FP8-wire kernel: it runs with
// CommImpl::blocks, so all_reduce_min_ctas_per_sm (the loopback world's grid bound) must count it.
int fp8_wire_min_ctas_per_sm(int threads);

}  // namespace tpcomm::detail
