// All-reduce over the ranks of a Communicator.
//
// Algorithms (all reduce in a fixed rank order 0..W-1 with fp32 accumulation and round once, so every rank
// gets bitwise identical results):
//   kOneShotLL : barrier-free one-shot. Each rank pushes its input into every peer's buffer; readers poll
//                the data itself until no 32-bit word equals the sentinel 0x80000000 (-0.0f; inputs' -0.0
//                become +0.0), three buffers rotate. Smallest latency; small messages.
//   kOneShot   : each rank reads every peer's copy (copy-in into the workspace, or the caller's registered
//                buffer) after one block-level barrier, and reduces. Medium messages.
//   kTwoShot   : reduce-scatter then all-gather, both pushed over NVLink (2 barriers). Large messages.
//   kOneShotCE : the copy engine pushes the input to every peer in 4 MiB chunks, each followed by a flag
//                (cuStreamWriteValue32); a reduce kernel consumes chunks as they land. Leaves the SMs free
//                (seed 000's low-contention path, for overlap with GEMMs). Pinned only: on 2xH200 it measured
//                ~2x slower than kOneShot standalone, so kAuto does not pick it.
//   kNccl      : ncclAllReduce.
//   kAuto      : picks from the crossover table (select_all_reduce()); see docs in all_reduce_select.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <vector>

#include "tpcomm/types.h"

namespace tpcomm {

class Communicator;

enum class AllReduceAlgo : int { kAuto = 0, kOneShotLL = 1, kOneShot = 2, kTwoShot = 3, kNccl = 4, kOneShotCE = 5 };

const char* all_reduce_algo_name(AllReduceAlgo algo) noexcept;  // "auto", "one_shot_ll", ...
AllReduceAlgo parse_all_reduce_algo(const std::string& text);   // throws kInvalidArgument("algo: ...")

// Crossover table: the fast algorithm for messages up to each limit (bytes), NCCL beyond the last.
struct AllReduceTable {
  std::size_t one_shot_ll_max = 0;
  std::size_t one_shot_max = 0;
  std::size_t two_shot_max = 0;
  std::size_t copy_engine_min = 0;  // from this size up (within its workspace) the copy-engine one-shot; 0 = never
  std::string source;   // "builtin:<name>" or "env:TPCOMM_AR_TABLE"
};
// The built-in table for a world size (measured on 2xH200 NVLink; other world sizes use conservative
// vLLM-like limits until measured), overridden by env TPCOMM_AR_TABLE="ll=512K,one=2M,two=64M".
AllReduceTable default_all_reduce_table(int world_size);
// Pure selection (no GPU): what kAuto runs for `bytes`, given the table and the workspace limits.
AllReduceAlgo select_all_reduce(const AllReduceTable& table, std::size_t bytes, bool fast_path,
                                std::size_t ll_cap, std::size_t one_cap, std::size_t two_cap, std::size_t ce_cap = 0);

// What the all-reduce moves between GPUs.
//   kExact : the caller's dtype (every algorithm; the results above).
//   kFp8   : opt-in and lossy, two-shot only: the reduce-scatter phase sends each destination's slice as FP8
//            e4m3 codes with one fp32 scale per block of fp8_block elements (scale = amax / 448), the owner
//            dequantizes the W slices and reduces them in fp32 in rank order 0..W-1, and the all-gather phase
//            sends the reduced slice as FP8 again (or in the caller's dtype: gather_wire = kExact). About half
//            the bytes of bf16; results are still bitwise identical on every rank (the owner keeps the
//            dequantized FP8 of its own slice too). Math, error bound and when it pays: docs/all_reduce.md.
enum class AllReduceWire : int { kExact = 0, kFp8 = 1 };
const char* all_reduce_wire_name(AllReduceWire wire) noexcept;  // "exact", "fp8"
AllReduceWire parse_all_reduce_wire(const std::string& text);   // throws kInvalidArgument("wire: ...")

struct AllReduceOptions {
  AllReduceAlgo algo = AllReduceAlgo::kAuto;
  // kOneShot only: read the caller's input directly from every peer (zero copy). The input must be
  // registered (register_buffer) or, during capture inside a GraphCapture, is registered after capture.
  bool zero_copy = false;
  // kFp8 is never chosen unless asked for here. With algo kTwoShot it runs or throws (kInvalidArgument naming
  // count when the FP8 slots exceed the two-shot workspace, CommOptions::two_shot_max_bytes); with kAuto it
  // runs wherever peer memory is available, W >= 2 and its slots fit the two-shot workspace, and kAuto's
  // exact choice runs otherwise (plan_all_reduce() says which). Other algorithms: kInvalidArgument (wire).
  AllReduceWire wire = AllReduceWire::kExact;
  int fp8_block = 128;                             // kFp8: elements per fp32 scale, 128 or 32
  AllReduceWire gather_wire = AllReduceWire::kFp8;  // kFp8: wire of the all-gather phase (kExact: caller's dtype)
};

// out = reduce(in over all ranks). count elements of dtype (f32, f16, bf16); op sum/max/min. In place when
// input == output. Enqueued on `stream`; returns the algorithm that ran. Errors (kInvalidArgument naming
// the argument; kUnsupported when a pinned algorithm cannot run; kTimeout/kMismatch from an earlier call)
// are thrown before anything is written.
AllReduceAlgo all_reduce(const Communicator& comm, const void* input, void* output, std::size_t count, DType dtype,
                         ReduceOp op, cudaStream_t stream, const AllReduceOptions& options = {});

// What kAuto would run for this communicator and size (same decision all_reduce makes).
AllReduceAlgo resolve_all_reduce(const Communicator& comm, std::size_t bytes, AllReduceAlgo requested = AllReduceAlgo::kAuto);

// What all_reduce would run for these arguments, wire included (the same decision; throws what it would throw
// for the options). all_reduce returns plan.algo (kTwoShot when the FP8 wire runs).
struct AllReducePlan {
  AllReduceAlgo algo = AllReduceAlgo::kAuto;
  AllReduceWire wire = AllReduceWire::kExact;
};
AllReducePlan plan_all_reduce(const Communicator& comm, std::size_t count, DType dtype, const AllReduceOptions& options = {});

// Registers a caller's device buffer (cudaMalloc memory; any pointer inside an allocation) on every rank
// so that zero-copy one-shot can read it from peers. Collective: every rank registers its buffer in the
// same order. Cached: registering the same range again is free.
void register_buffer(const Communicator& comm, void* ptr, std::size_t bytes);

// CUDA-graph support for zero-copy (vLLM's scheme): inside a GraphCapture scope, zero-copy calls on
// unregistered inputs record the pointer in a device slot; after capture, register_graph_buffers()
// (collective) exchanges and fills every recorded slot, before the first replay. Replaying without it is
// caught on the device and reported (kInvalidState) instead of reading garbage.
class GraphCapture {
 public:
  explicit GraphCapture(const Communicator& comm);
  ~GraphCapture();
  GraphCapture(const GraphCapture&) = delete;
  GraphCapture& operator=(const GraphCapture&) = delete;

 private:
  const Communicator& comm_;
};
void register_graph_buffers(const Communicator& comm);

}  // namespace tpcomm
