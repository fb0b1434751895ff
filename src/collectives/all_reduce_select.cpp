// Algorithm names, the crossover table and the pure selection rule for kAuto (CPU-testable).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "collectives/all_reduce_args.h"
#include "tpcomm/all_reduce.h"
#include "tpcomm/error.h"

namespace tpcomm {

const char* all_reduce_algo_name(AllReduceAlgo algo) noexcept {
  switch (algo) {
    case AllReduceAlgo::kAuto: return "auto";
    case AllReduceAlgo::kOneShotLL: return "one_shot_ll";
    case AllReduceAlgo::kOneShot: return "one_shot";
    case AllReduceAlgo::kTwoShot: return "two_shot";
    case AllReduceAlgo::kNccl: return "nccl";
    case AllReduceAlgo::kOneShotCE: return "one_shot_ce";
  }
  return "unknown";
}

AllReduceAlgo parse_all_reduce_algo(const std::string& t) {
  if (t == "auto") return AllReduceAlgo::kAuto;
  if (t == "one_shot_ll" || t == "ll") return AllReduceAlgo::kOneShotLL;
  if (t == "one_shot" || t == "oneshot") return AllReduceAlgo::kOneShot;
  if (t == "two_shot" || t == "twoshot") return AllReduceAlgo::kTwoShot;
  if (t == "nccl") return AllReduceAlgo::kNccl;
  if (t == "one_shot_ce" || t == "ce") return AllReduceAlgo::kOneShotCE;
  throw Error(ErrorCode::kInvalidArgument, "algo: unknown all-reduce algorithm '" + t +
                                               "' (auto, one_shot_ll, one_shot, two_shot, one_shot_ce, nccl)");
}

const char* all_reduce_wire_name(AllReduceWire wire) noexcept {
  switch (wire) {
    case AllReduceWire::kExact: return "exact";
    case AllReduceWire::kFp8: return "fp8";
  }
  return "unknown";
}

AllReduceWire parse_all_reduce_wire(const std::string& t) {
  if (t == "exact") return AllReduceWire::kExact;
  if (t == "fp8") return AllReduceWire::kFp8;
  throw Error(ErrorCode::kInvalidArgument, "wire: unknown all-reduce wire '" + t + "' (exact, fp8)");
}

static std::size_t parse_bytes(const std::string& s, const std::string& whole) {
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (...) {
    throw Error(ErrorCode::kInvalidArgument, "TPCOMM_AR_TABLE: bad number in '" + whole + "'");
  }
  const std::string suf = s.substr(pos);
  if (suf == "K" || suf == "k") v <<= 10;
  else if (suf == "M" || suf == "m") v <<= 20;
  else if (suf == "G" || suf == "g") v <<= 30;
  else if (!suf.empty()) throw Error(ErrorCode::kInvalidArgument, "TPCOMM_AR_TABLE: bad suffix in '" + whole + "'");
  return static_cast<std::size_t>(v);
}

AllReduceTable default_all_reduce_table(int world_size) {
  AllReduceTable t;
  // Crossovers measured with `tpcomm-bench all_reduce` on nvidia-h200-x2 (bench/results/nvidia-h200-x2/
  // all_reduce.json, graph mode, bf16) and nvidia-h200-x4. For W > 4 the limits follow vLLM's NVLink rules
  // (one-shot reads W-1 full copies, so it stops paying off earlier as W grows) until measured there.
  if (world_size <= 2) {
    // W = 2: the push one-shot moves the minimum over NVLink (each rank sends its input once) with one
    // barrier, so it covers everything above the barrier-free range up to its workspace.
    t.one_shot_ll_max = std::size_t(1) << 20;
    t.one_shot_max = std::size_t(64) << 20;
    t.two_shot_max = std::size_t(64) << 20;
    // The copy-engine one-shot measured ~2x slower than the SM push (16 MiB: 104 vs 57 us; ~20 us fixed
    // cost per call in a graph), so auto never picks it; it stays available pinned (kOneShotCE).
    t.copy_engine_min = 0;
    t.source = "builtin:h200x2";
  } else if (world_size <= 4) {
    // Measured at W = 4 on nvidia-h200-x4 (session 8, bench/results/nvidia-h200-x4/, graph mode, bf16, us):
    // barrier-free one-shot fastest to 512 KiB (8K 4.0 vs NCCL 9.6; 512K 10.5 vs one-shot 12.3, two-shot 13.0,
    // NCCL 14.1); two-shot at 2 MiB (23.5 vs NCCL 26.9); NCCL from 8 MiB (59.0 vs two-shot 64.2; 32 MiB 169.8 vs
    // 189.5). The 2-8 MiB crossover was not measured: 4 MiB (two-shot's edge shrinking from +13% to -8%) is
    // interpolated. W = 3 uses the same table (unmeasured).
    t.one_shot_ll_max = std::size_t(512) << 10;
    t.one_shot_max = std::size_t(512) << 10;  // never reached: LL covers every size up to it
    t.two_shot_max = std::size_t(4) << 20;
    t.source = "builtin:h200x4";
  } else {
    t.one_shot_ll_max = std::size_t(64) << 10;
    t.one_shot_max = std::size_t(256) << 10;
    t.two_shot_max = std::size_t(16) << 20;
    t.source = "builtin:w8-unmeasured";
  }
  if (const char* env = std::getenv("TPCOMM_AR_TABLE")) {
    const std::string whole(env);
    std::size_t start = 0;
    while (start < whole.size()) {
      const std::size_t end = whole.find(',', start);
      const std::string item = whole.substr(start, end == std::string::npos ? std::string::npos : end - start);
      const std::size_t eq = item.find('=');
      if (eq == std::string::npos) throw Error(ErrorCode::kInvalidArgument, "TPCOMM_AR_TABLE: expected key=size in '" + whole + "'");
      const std::string key = item.substr(0, eq);
      const std::size_t val = parse_bytes(item.substr(eq + 1), whole);
      if (key == "ll") t.one_shot_ll_max = val;
      else if (key == "one") t.one_shot_max = val;
      else if (key == "two") t.two_shot_max = val;
      else if (key == "ce") t.copy_engine_min = val;
      else throw Error(ErrorCode::kInvalidArgument, "TPCOMM_AR_TABLE: unknown key '" + key + "' (ll, one, two, ce)");
      if (end == std::string::npos) break;
      start = end + 1;
    }
    t.source = "env:TPCOMM_AR_TABLE";
  }
  return t;
}

AllReduceAlgo select_all_reduce(const AllReduceTable& t, std::size_t bytes, bool fast_path, std::size_t ll_cap,
                                std::size_t one_cap, std::size_t two_cap, std::size_t ce_cap) {
  if (!fast_path) return AllReduceAlgo::kNccl;
  if (t.copy_engine_min && bytes >= t.copy_engine_min && bytes <= ce_cap) return AllReduceAlgo::kOneShotCE;
  if (bytes <= t.one_shot_ll_max && bytes <= ll_cap) return AllReduceAlgo::kOneShotLL;
  if (bytes <= t.one_shot_max && bytes <= one_cap) return AllReduceAlgo::kOneShot;
  if (bytes <= t.two_shot_max && bytes <= two_cap) return AllReduceAlgo::kTwoShot;
  return AllReduceAlgo::kNccl;
}

}  // namespace tpcomm

namespace tpcomm::detail {

void check_all_reduce_options(DType dtype, ReduceOp op, const AllReduceOptions& options) {
  auto fail = [](const std::string& arg, const std::string& msg) {
    throw Error(ErrorCode::kInvalidArgument, arg + ": " + msg);
  };
  if (dtype != DType::kFloat32 && dtype != DType::kFloat16 && dtype != DType::kBFloat16)
    fail("dtype", std::string(dtype_name(dtype)) + " is not supported (f32, f16, bf16)");
  if (op != ReduceOp::kSum && op != ReduceOp::kMax && op != ReduceOp::kMin)
    fail("op", "unknown reduce op " + std::to_string(static_cast<int>(op)));
  if (options.wire != AllReduceWire::kExact && options.wire != AllReduceWire::kFp8)
    fail("wire", "unknown value " + std::to_string(static_cast<int>(options.wire)) + " (exact, fp8)");
  // The FP8 wire's fields are read only when it is asked for.
  if (options.wire == AllReduceWire::kFp8) {
    if (options.algo != AllReduceAlgo::kTwoShot && options.algo != AllReduceAlgo::kAuto)
      fail("wire", std::string("the FP8 wire runs on the two-shot algorithm only (algo two_shot or auto), not ") +
                       all_reduce_algo_name(options.algo));
    if (options.fp8_block != 32 && options.fp8_block != 128)
      fail("fp8_block", "must be 32 or 128 elements per scale, not " + std::to_string(options.fp8_block));
    if (options.gather_wire != AllReduceWire::kExact && options.gather_wire != AllReduceWire::kFp8)
      fail("gather_wire", "unknown value " + std::to_string(static_cast<int>(options.gather_wire)) + " (exact, fp8)");
  }
}

bool check_all_reduce_args(const void* input, const void* output, std::size_t count, DType dtype, ReduceOp op,
                           const AllReduceOptions& options) {
  auto fail = [](const std::string& arg, const std::string& msg) {
    throw Error(ErrorCode::kInvalidArgument, arg + ": " + msg);
  };
  check_all_reduce_options(dtype, op, options);
  if (count == 0) return false;
  if (input == nullptr) fail("input", "null pointer");
  if (output == nullptr) fail("output", "null pointer");
  const std::size_t esize = dtype_size(dtype);
  const auto in = reinterpret_cast<uintptr_t>(input), out = reinterpret_cast<uintptr_t>(output);
  if (in % esize != 0) fail("input", "not aligned to its element size (" + std::to_string(esize) + " bytes)");
  if (out % esize != 0) fail("output", "not aligned to its element size (" + std::to_string(esize) + " bytes)");
  if (count > SIZE_MAX / esize) fail("count", std::to_string(count) + " elements overflow a byte count");
  const std::size_t bytes = count * esize;
  const bool overlap = in < out + bytes && out < in + bytes;
  if (overlap && in != out) fail("output", "partially overlaps input (in place needs output == input)");
  if (options.zero_copy) {
    if (options.algo != AllReduceAlgo::kOneShot)
      fail("zero_copy", "only the pinned one_shot algorithm reads peers' buffers directly");
    if (in == out) fail("output", "zero-copy one-shot cannot run in place (peers still read the input)");
    if (in % 16 != 0) fail("input", "zero-copy needs a 16-byte aligned input");
  }
  return true;
}

}  // namespace tpcomm::detail
