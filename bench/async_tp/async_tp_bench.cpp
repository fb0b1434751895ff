// tpcomm-bench ag_gemm / gemm_rs: async tensor parallelism (include/tpcomm/async_tp.h) against the GEMM alone, the
// sequential NCCL + cuBLASLt path and PyTorch's fused ops, on the same GPUs, shapes and dtypes, in one run.
//
//   tpcomm-bench ag_gemm|gemm_rs [--shape MxKxN]... [--dtype bf16,fp8_tensorwise,fp8_rowwise,fp8_blockwise]
//       [--impl gemm_only,nccl+cublas,tpcomm:decomposed,tpcomm:native,tpcomm:auto,torch_symm_mem] [--modes graph,eager]
//       [--world W] [--loopback [--device D]] [--check|--no-check] [--tol X] [--b-layout nk|kn] [--fast-accum 0|1]
//       [--iters N] [--reps N] [--quick] [--out DIR | --json PATH] [--trace FILE [--trace-shape MxKxN]
//       [--trace-dtype D]] [--python PATH] [--torch-script PATH] [--torch-timeout S]
//
// Shapes are (M total tokens, K, N per rank), as in shared/reference/anchors/anchors2.py (the PyTorch anchors):
//   ag_gemm: every rank holds A_shard (M/W, K); out (M, N) = all_gather(A_shard) @ B, B (K, N) the same on every
//            rank (so that all ranks compute the same output and it can be checked bitwise across ranks).
//   gemm_rs: every rank holds A (M, K/W) and B (K/W, N), its slice of the contraction; out (M/W, N) =
//            reduce_scatter(A @ B) along dim 0, summed.
// B is the (N, K) weight (--b-layout nk, what nn.Linear stores; FP8 needs it) or a (K, N) row-major matrix (kn, bf16).
// FP8 (e4m3) inputs are the bf16 random inputs quantized by tpcomm's own kernels (tpcomm::quant::fp8_quantize) in the
// layouts async_tp.h documents: tensorwise (AG: one amax over the gathered A, all-reduced, so every rank has the same
// scale), rowwise (A one per row, sharded like A for AG; B one per output column), blockwise (A 1x128 M-major, B
// 128x128 of the weight). FP8 uses cuBLASLt's fast accumulation (as the anchors' torch._scaled_mm(use_fast_accum=True)
// did) except with blockwise scales; --fast-accum 0 turns it off everywhere.
//
// Implementations (rows "impl"):
//   gemm_only          the GEMM on local data (this bench's cuBLASLt call, same dtype and scales): AG the gathered
//                      (M, K) @ (K, N), RS the local (M, K/W) @ (K/W, N) -> (M, N); the perfect-overlap floor.
//   nccl+cublas        the library's kUnfused engine: NCCL all-gather then cuBLASLt / cuBLASLt then NCCL
//                      reduce-scatter, sequential. A loopback world has no NCCL: "skipped".
//   tpcomm:decomposed  kDecomposed, once per transport ("transport": "ce" copy engine, "sm" SM copy kernels).
//   tpcomm:native      kNative (one persistent chunk-consuming GEMM); "skipped" with resolve_*()'s reason where the
//                      combination is not supported.
//   tpcomm:auto        kAuto; "engine" says what it resolved to.
//   torch_symm_mem     bench/async_tp/torch_symm_mem.py, started by this bench after its own cells (one process per
//                      GPU through torch.distributed.run, same GPUs and shapes), rows merged; needs torch and >= 2 GPUs.
//
// Timing: CUDA graph of `iters` back-to-back calls replayed `reps` times, median replay time / iters (mode "graph"),
// and eager (`reps` samples of `iters` calls between two events, mode "eager"); max over ranks. iters defaults to
// ~5 ms of GEMM per sample (3..20). A loopback world's timings measure nothing (its ranks share one GPU); they are
// recorded so that the run is complete, with "loopback": true.
//
// Check (--check, default on), per cell and mode, against a reference computed by this bench on the same inputs:
//   AG: the shards gathered by cudaMemcpy (peer copies) + cuBLASLt; RS: each rank's A @ B by cuBLASLt in fp32, the
//   rows of rank r's output slice copied from every rank and summed in fp32 in rank order, rounded once to bf16 (the
//   library's documented reduction). The reference GEMM is itself checked on 2048 sampled outputs against a float64
//   dot product of the dequantized operands (kTol below); gemm_only is checked that way too.
//   The reference GEMM never uses fast accumulation. Inputs vary in magnitude by 2^+-4 per row and 128-column block
//   (vary_magnitude), so a scale applied to the wrong row or block is caught.
//   A cell is correct when the worst row's ||out_row - ref_row|| / ||ref_row|| <= kTol, kTolFastAccum for FP8 GEMMs
//   with fast accumulation (no NaN: outputs are poisoned
//   with NaN before each checked call), two calls on the same input give the same bits, and (AG) every rank's output
//   has the same bits. Eager: two calls before timing. Graph: after the timed replays one more replay of the same
//   graph on fresh inputs (new random data, requantized) with the output poisoned, against that input's reference.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "async_tp/atp_kernels.cuh"
#include "async_tp/lt_gemm.h"
#include "async_tp/torch_runner.h"
#include "async_tp/trace.h"
#include "collectives/bench_kernels.cuh"
#include "common.h"
#include "suites.h"
#include "tpcomm/async_tp.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/quantize.h"

namespace tpcomm::bench::atp {
namespace {

// Relative error bound of every check (worst row of ||out - ref|| / ||ref||; sampled float64 check of the reference).
// Two GEMMs of the same bf16 or FP8 inputs that differ only in how the work is split (chunks, K order, fast
// accumulation) each round their bf16 output once: rows differ by ~2^-9 / sqrt(3) ~ 1.1e-3 relative; a reduce-scatter
// whose partials are rounded to bf16 before the fp32 sum adds about as much again. 1e-2 is ~5x above that, and far
// below what a wrong chunk, row offset, scale or missing peer contribution gives (>= ~0.3 on the affected rows).
constexpr double kTol = 1e-2;
// Cells whose GEMM uses FP8 fast accumulation (tensorwise / rowwise FP8 with --fast-accum 1, as the anchors ran
// torch._scaled_mm) are compared with the reference (computed WITHOUT fast accumulation) within kTolFastAccum:
// Hopper's fast FP8 accumulation keeps ~14 bits in the accumulator (DeepSeek-V3 report: up to ~2% relative error at
// K = 4096). Still far below a wrong row or chunk (~1) or a misplaced scale (inputs vary by 2^+-4 per row and block).
constexpr double kTolFastAccum = 3e-2;

enum class SuiteKind { kAg, kRs };
const char* suite_name(SuiteKind k) { return k == SuiteKind::kAg ? "ag_gemm" : "gemm_rs"; }

struct Prec {
  const char* name;
  DType ab;
  ScaleKind scale;
};
const Prec kPrecs[] = {{"bf16", DType::kBFloat16, ScaleKind::kNone},
                       {"fp8_tensorwise", DType::kFloat8E4M3, ScaleKind::kTensor},
                       {"fp8_rowwise", DType::kFloat8E4M3, ScaleKind::kRow},
                       {"fp8_blockwise", DType::kFloat8E4M3, ScaleKind::kBlock}};

struct Shape {
  int64_t M = 0, K = 0, N = 0;
  std::string str() const { return std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N); }
  bool operator==(const Shape& o) const { return M == o.M && K == o.K && N == o.N; }
};
bool parse_shape(const std::string& t, Shape* s) {
  long long m = 0, k = 0, n = 0;
  char x1 = 0, x2 = 0;
  std::istringstream is(t);
  if (!(is >> m >> x1 >> k >> x2 >> n) || (x1 != 'x' && x1 != 'X') || (x2 != 'x' && x2 != 'X') || m <= 0 || k <= 0 ||
      n <= 0)
    return false;
  *s = {m, k, n};
  return true;
}

struct Impl {
  std::string name;       // JSON "impl"
  std::string transport;  // "ce" / "sm" for tpcomm:decomposed
  bool gemm_only = false;
  AsyncTpEngine engine = AsyncTpEngine::kAuto;
  AsyncTpTransport tr = AsyncTpTransport::kAuto;
  std::string label() const { return transport.empty() ? name : name + ":" + transport; }
};
std::vector<Impl> all_impls() {
  return {{"gemm_only", "", true},
          {"nccl+cublas", "", false, AsyncTpEngine::kUnfused},
          {"tpcomm:decomposed", "ce", false, AsyncTpEngine::kDecomposed, AsyncTpTransport::kCopyEngine},
          {"tpcomm:decomposed", "sm", false, AsyncTpEngine::kDecomposed, AsyncTpTransport::kSm},
          {"tpcomm:native", "", false, AsyncTpEngine::kNative},
          {"tpcomm:auto", "", false, AsyncTpEngine::kAuto}};
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t a = 0;
  while (a <= s.size()) {
    const std::size_t b = s.find(',', a);
    const std::string t = s.substr(a, b == std::string::npos ? std::string::npos : b - a);
    if (!t.empty()) out.push_back(t);
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

struct Args {
  std::vector<Shape> shapes;
  std::vector<int> precs;                 // indices into kPrecs
  std::vector<std::string> impl_filter;   // canonical labels; empty = all
  std::vector<std::string> modes = {"graph", "eager"};
  bool check = true;
  double tol = kTol;
  double tol_fast = kTolFastAccum;
  int world = 0;  // 0: every visible GPU (a loopback world of 2 on one GPU)
  bool loopback = false;
  int device = 0;
  bool b_nk = true;
  bool fast_accum = true;
  int iters = 0, reps = 10;
  bool quick = false;
  std::string out_dir = "bench/results/local", json;
  std::string trace, trace_dtype;
  Shape trace_shape;
  std::string python, torch_script;
  double torch_timeout = 900;
};

void usage(const char* suite) {
  std::printf(
      "tpcomm-bench %s [--shape MxKxN]... [--dtype bf16,fp8_tensorwise,fp8_rowwise,fp8_blockwise]...\n"
      "    [--impl gemm_only,nccl+cublas,tpcomm:decomposed[:ce|:sm],tpcomm:native,tpcomm:auto,torch_symm_mem]...\n"
      "    [--modes graph,eager] [--world W] [--loopback [--device D]] [--check|--no-check] [--tol X] [--tol-fast-accum X]\n"
      "    [--b-layout nk|kn] [--fast-accum 0|1] [--iters N] [--reps N] [--quick] [--out DIR] [--json PATH]\n"
      "    [--trace FILE [--trace-shape MxKxN] [--trace-dtype D]] [--python PATH] [--torch-script PATH]\n"
      "    [--torch-timeout S]\n"
      "shapes (M total tokens, K, N per rank); default 1024x8192x3584 2048x8192x3584 4096x8192x3584 8192x8192x14336\n"
      "4096x5120x8192 (--shape replaces the list). --world 0 (default): every visible GPU, or a loopback world of 2\n"
      "ranks when only one GPU is visible. Results: DIR/async_tp.json (rows of the other suite are kept).\n",
      suite);
}

std::string canon_impl(const std::string& t) {
  if (t == "gemm_only" || t == "gemm") return "gemm_only";
  if (t == "nccl+cublas" || t == "nccl" || t == "unfused") return "nccl+cublas";
  if (t == "tpcomm:decomposed" || t == "decomposed") return "tpcomm:decomposed";
  if (t == "tpcomm:decomposed:ce" || t == "decomposed:ce" || t == "ce") return "tpcomm:decomposed:ce";
  if (t == "tpcomm:decomposed:sm" || t == "decomposed:sm" || t == "sm") return "tpcomm:decomposed:sm";
  if (t == "tpcomm:native" || t == "native") return "tpcomm:native";
  if (t == "tpcomm:auto" || t == "auto") return "tpcomm:auto";
  if (t == "torch_symm_mem" || t == "torch") return "torch_symm_mem";
  return {};
}

int parse(const char* suite, int argc, char** argv, Args& a) {
  const char* py = std::getenv("TPCOMM_PYTHON");
  a.python = py && *py ? py : "python3";
  std::vector<Shape> shapes;
  bool dtype_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\n", suite, k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto bad = [&](const std::string& v) {
      std::fprintf(stderr, "%s: bad value '%s' for %s (try --help)\n", suite, v.c_str(), k.c_str());
      return 2;
    };
    if (k == "--shape") {
      for (const auto& t : split(next())) {
        Shape s;
        if (!parse_shape(t, &s)) return bad(t);
        shapes.push_back(s);
      }
    } else if (k == "--dtype") {
      if (!dtype_given) a.precs.clear();
      dtype_given = true;
      for (const auto& t : split(next())) {
        bool found = false;
        for (int p = 0; p < 4; ++p)
          if (t == kPrecs[p].name || (t == "fp8" && p > 0)) {
            if (std::find(a.precs.begin(), a.precs.end(), p) == a.precs.end()) a.precs.push_back(p);
            found = true;
          }
        if (!found) return bad(t);
      }
    } else if (k == "--impl" || k == "--impls") {
      for (const auto& t : split(next())) {
        const std::string c = canon_impl(t);
        if (c.empty()) return bad(t);
        a.impl_filter.push_back(c);
      }
    } else if (k == "--modes") {
      a.modes = split(next());
      for (const auto& m : a.modes)
        if (m != "graph" && m != "eager") return bad(m);
    } else if (k == "--check") a.check = true;
    else if (k == "--no-check") a.check = false;
    else if (k == "--tol") a.tol = std::atof(next().c_str());
    else if (k == "--tol-fast-accum") a.tol_fast = std::atof(next().c_str());
    else if (k == "--world") a.world = std::atoi(next().c_str());
    else if (k == "--loopback") a.loopback = true;
    else if (k == "--device") a.device = std::atoi(next().c_str());
    else if (k == "--b-layout") {
      const std::string v = next();
      if (v != "nk" && v != "kn") return bad(v);
      a.b_nk = v == "nk";
    } else if (k == "--fast-accum") a.fast_accum = std::atoi(next().c_str()) != 0;
    else if (k == "--iters") a.iters = std::atoi(next().c_str());
    else if (k == "--reps") a.reps = std::atoi(next().c_str());
    else if (k == "--quick") a.quick = true;
    else if (k == "--out") a.out_dir = next();
    else if (k == "--json") a.json = next();
    else if (k == "--trace") a.trace = next();
    else if (k == "--trace-shape") {
      const std::string v = next();
      if (!parse_shape(v, &a.trace_shape)) return bad(v);
    } else if (k == "--trace-dtype") a.trace_dtype = next();
    else if (k == "--python") a.python = next();
    else if (k == "--torch-script") a.torch_script = next();
    else if (k == "--torch-timeout") a.torch_timeout = std::atof(next().c_str());
    else if (k == "-h" || k == "--help") {
      usage(suite);
      return 1;
    }
    // other suites' options (the default job passes one argument list to every suite) are ignored
  }
  if (shapes.empty()) shapes = {{1024, 8192, 3584}, {2048, 8192, 3584}, {4096, 8192, 3584}, {8192, 8192, 14336}, {4096, 5120, 8192}};
  a.shapes = shapes;
  if (a.precs.empty()) a.precs = {0, 1, 2, 3};
  if (a.quick) {
    a.reps = std::min(a.reps, 5);
    if (a.iters == 0) a.iters = 3;
  }
  if (a.reps < 1) a.reps = 1;
  if (!a.trace.empty()) {
    if (a.trace_shape.M == 0) a.trace_shape = a.shapes.front();
    if (a.trace_dtype.empty()) a.trace_dtype = kPrecs[a.precs.front()].name;
    bool ok = false;
    for (auto& p : kPrecs) ok = ok || a.trace_dtype == p.name;
    if (!ok) {
      std::fprintf(stderr, "%s: bad --trace-dtype '%s'\n", suite, a.trace_dtype.c_str());
      return 2;
    }
  }
  return 0;
}

bool selected(const Args& a, const std::string& label) {
  if (a.impl_filter.empty()) return true;
  for (const auto& f : a.impl_filter) {
    if (f == label) return true;
    if (f == "tpcomm:decomposed" && label.rfind("tpcomm:decomposed", 0) == 0) return true;
  }
  return false;
}

// ---- one result row --------------------------------------------------------------------------------------------
struct Row {
  std::string impl, transport, dtype, mode;
  Shape shape;
  double us = NAN;
  int correct = -1;            // -1: not checked / not run
  std::string skipped;         // non-empty: not run, why
  std::string error;           // the run failed (exception)
  double rel = NAN, worst_row = NAN;
  std::string engine;          // what the library ran (tpcomm rows)
  std::string check_detail;
  int iters = 0;
  double tol = NAN;            // the bound this cell was checked with
  std::string raw;             // torch rows: the script's object, re-emitted
};

// ---- world and per-rank state ----------------------------------------------------------------------------------
struct Bufs {
  void* a_src = nullptr;   // bf16 random source of A (AG: the shard (m, K); RS: (M, k))
  void* a_in = nullptr;    // the op's A (bf16, or its FP8 quantization)
  float* a_scale = nullptr;
  void* b_src = nullptr;   // bf16 random source of B
  void* b_in = nullptr;
  float* b_scale = nullptr;
  void* a_full = nullptr;  // AG: gathered A (M, K)
  float* a_full_scale = nullptr;
  float* scale_stage = nullptr;
  void* out = nullptr;     // the op's output (AG (M, N); RS (M/W, N)); AG gemm_only writes it too
  void* ref[2] = {nullptr, nullptr};
  void* gemm_out = nullptr;  // RS gemm_only: (M, N)
  void* partial = nullptr;   // RS reference: this rank's A @ B (M, N), f32 (or bf16)
  void* stage = nullptr;     // RS reference: W slices (M/W, N) of every rank's partial
  float* amax = nullptr;     // [4]
  void* scratch = nullptr;   // 64 bytes
  void* marker = nullptr;    // 4 bytes (trace)
};

struct World {
  Args a;
  SuiteKind suite = SuiteKind::kAg;
  int W = 1;
  bool loopback = false;
  std::vector<int> devices;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<Bufs> bufs;
  std::mutex mu;
  std::vector<Row> rows;
  std::unique_ptr<Tracer> tracer;
  std::string trace_status;
  std::atomic<int> failures{0};
  std::string reference_note;
  CommStats stats0;
};

template <class C = Communicator>
std::vector<std::unique_ptr<Communicator>> make_loopback(int world, int device, std::string* why) {
  if constexpr (requires { C::create_loopback(world, device); }) {
    return C::create_loopback(world, device);
  } else {
    *why = "Communicator::create_loopback is not in this build of tpcomm";
    return {};
  }
}

// Everything one rank does. Rank threads run the same sequence of collective steps.
class Rank {
 public:
  Rank(World& w, int r) : w_(w), r_(r), comm_(*w.comms[r]), a_(w.a), lt_(w.comms[r]->device()) {}
  void run();

 private:
  World& w_;
  int r_;
  Communicator& comm_;
  const Args& a_;
  LtGemm lt_;
  cudaStream_t s_ = nullptr;
  Bufs b_;

  // The cell group being run.
  Shape sh_;
  const Prec* pr_ = nullptr;
  int pidx_ = 0;
  int64_t m_ = 0, k_ = 0;            // AG: m = M/W (shard rows); RS: k = K/W
  GemmShape gemm_, ref_gemm_, partial_;  // gemm_only's GEMM; AG reference GEMM; RS reference partial GEMM
  std::string gemm_err_, ref_err_;   // why gemm_only / the reference cannot run
  bool ref_ok_ = false;
  double ref_rel_ = NAN;

  bool lead() const { return r_ == 0; }
  bool fp8() const { return pr_->ab != DType::kBFloat16; }
  std::size_t ab_size() const { return fp8() ? 1 : 2; }
  int64_t kb(int64_t k) const { return (k + 127) / 128; }
  // The bound a cell of this group is checked with (the reference itself is always checked with a_.tol).
  double cell_tol() const { return gemm_.fast_accum ? std::max(a_.tol, a_.tol_fast) : a_.tol; }

  void alloc();
  void free_all();
  std::string cell_unsupported() const;
  void gen(int round);
  void quantize(const void* src, int64_t rows, int64_t cols, bool is_b, void* q, float* scale);
  void compute_ref(int round);
  void group(const Shape& sh, int pidx);
  void run_impl(const Impl& im);
  std::string skip_reason(const Impl& im, AllGatherMatmulArgs* ag, MatmulReduceScatterArgs* rs, std::string* engine);
  std::function<AsyncTpEngine()> make_call(const Impl& im, const AllGatherMatmulArgs& ag, const MatmulReduceScatterArgs& rs);
  struct Verdict {
    bool ok = false;
    double rel = NAN, worst = NAN;
    std::string detail;
  };
  Verdict verify(const Impl& im, int round, const std::function<void()>& call_again);
  void trace_phase();

  template <class T>
  std::vector<T> all_gather(T v) {
    std::vector<T> out(w_.W);
    comm_.host_all_gather(&v, out.data(), sizeof(T));
    return out;
  }
  bool all_true(bool v) {
    for (int32_t x : all_gather<int32_t>(v ? 1 : 0))
      if (!x) return false;
    return true;
  }
  double max_all(double v) {
    double m = v;
    for (double x : all_gather(v)) m = (std::isnan(x) || x > m) ? x : m;
    return m;
  }
  void emit(Row row) {
    if (!lead()) return;
    std::lock_guard<std::mutex> lk(w_.mu);
    w_.rows.push_back(std::move(row));
  }
  Row base_row(const Impl& im, const std::string& mode) const {
    Row r;
    r.impl = im.name;
    r.transport = im.transport;
    r.dtype = pr_->name;
    r.mode = mode;
    r.shape = sh_;
    return r;
  }
};

void Rank::alloc() {
  const int W = w_.W;
  std::size_t a_src = 0, a_sc = 16, b_src = 0, b_sc = 16, a_full = 0, a_full_sc = 16, out = 0, gemm_out = 0, part = 0;
  for (const Shape& s : a_.shapes) {
    const int64_t M = s.M, K = s.K, N = s.N;
    if (w_.suite == SuiteKind::kAg) {
      const int64_t m = M / W;
      a_src = std::max<std::size_t>(a_src, m * K * 2);
      a_sc = std::max<std::size_t>(a_sc, std::max(m, m * kb(K)) * 4);
      b_src = std::max<std::size_t>(b_src, N * K * 2);
      b_sc = std::max<std::size_t>(b_sc, std::max(N, kb(N) * kb(K)) * 4);
      a_full = std::max<std::size_t>(a_full, M * K * 2);
      a_full_sc = std::max<std::size_t>(a_full_sc, std::max(M, M * kb(K)) * 4);
      out = std::max<std::size_t>(out, M * N * 2);
    } else {
      const int64_t k = K / W, mw = M / W;
      a_src = std::max<std::size_t>(a_src, M * k * 2);
      a_sc = std::max<std::size_t>(a_sc, std::max(M, M * kb(k)) * 4);
      b_src = std::max<std::size_t>(b_src, N * k * 2);
      b_sc = std::max<std::size_t>(b_sc, std::max(N, kb(N) * kb(k)) * 4);
      out = std::max<std::size_t>(out, mw * N * 2);
      gemm_out = std::max<std::size_t>(gemm_out, M * N * 2);
      part = std::max<std::size_t>(part, M * N * 4);
    }
  }
  auto dev = [&](std::size_t bytes) {
    void* p = nullptr;
    if (bytes) BENCH_CUDA(cudaMalloc(&p, bytes + 256));
    return p;
  };
  b_.a_src = dev(a_src);
  b_.a_in = dev(a_src);
  b_.a_scale = static_cast<float*>(dev(a_sc));
  b_.b_src = dev(b_src);
  b_.b_in = dev(b_src);
  b_.b_scale = static_cast<float*>(dev(b_sc));
  b_.a_full = dev(a_full);
  b_.a_full_scale = static_cast<float*>(dev(a_full_sc));
  b_.scale_stage = static_cast<float*>(dev(a_full_sc));
  b_.out = dev(out);
  b_.ref[0] = dev(out);
  b_.ref[1] = dev(out);
  b_.gemm_out = dev(gemm_out);
  b_.partial = dev(part);
  b_.stage = dev(part);
  b_.amax = static_cast<float*>(dev(16));
  b_.scratch = dev(64);
  b_.marker = dev(4);
  w_.bufs[r_] = b_;
}

void Rank::free_all() {
  for (void* p : {b_.a_src, b_.a_in, static_cast<void*>(b_.a_scale), b_.b_src, b_.b_in, static_cast<void*>(b_.b_scale),
                  b_.a_full, static_cast<void*>(b_.a_full_scale), static_cast<void*>(b_.scale_stage), b_.out, b_.ref[0],
                  b_.ref[1], b_.gemm_out, b_.partial, b_.stage, static_cast<void*>(b_.amax), b_.scratch, b_.marker})
    if (p) cudaFree(p);
}

// Why this (shape, dtype) cannot be set up at all (every impl's row is "skipped"), empty when it can.
std::string Rank::cell_unsupported() const {
  const int W = w_.W;
  if (sh_.M % W) return "M = " + std::to_string(sh_.M) + " is not divisible by the world size " + std::to_string(W);
  if (w_.suite == SuiteKind::kRs && sh_.K % W)
    return "K = " + std::to_string(sh_.K) + " is not divisible by the world size " + std::to_string(W);
  const int64_t kk = w_.suite == SuiteKind::kAg ? sh_.K : sh_.K / W;
  if (fp8()) {
    if (!a_.b_nk) return "FP8 needs B as the (N, K) weight (--b-layout nk)";
    if (kk % 16) return "FP8 needs the contraction dim (" + std::to_string(kk) + ") to be a multiple of 16";
    if (pr_->scale == ScaleKind::kBlock && kk % 128)
      return "blockwise FP8 needs the contraction dim (" + std::to_string(kk) + ") to be a multiple of 128";
  }
  if (kk % 8 || sh_.N % 8) return "K and N must be multiples of 8 (16-byte rows)";
  return {};
}

// tpcomm's FP8 quantization of one bf16 operand into this suite's scale layout.
void Rank::quantize(const void* src, int64_t rows, int64_t cols, bool is_b, void* q, float* scale) {
  quant::Fp8QuantizeParams p;
  p.input = src;
  p.input_dtype = DType::kBFloat16;
  p.rows = rows;
  p.cols = cols;
  p.format = quant::Fp8Format::kE4M3;
  p.output = q;
  p.scale_inv = scale;
  switch (pr_->scale) {
    case ScaleKind::kTensor:
      p.scaling = quant::Fp8Scaling::kTensorwise;
      if (!is_b && w_.suite == SuiteKind::kAg) {
        // One scale for the whole gathered A: the max of every rank's amax.
        quant::compute_amax(src, DType::kBFloat16, rows * cols, b_.amax, s_);
        float local = 0;
        BENCH_CUDA(cudaMemcpyAsync(&local, b_.amax, 4, cudaMemcpyDeviceToHost, s_));
        BENCH_CUDA(cudaStreamSynchronize(s_));
        float global = local;
        for (float v : all_gather(local)) global = std::max(global, v);
        BENCH_CUDA(cudaMemcpyAsync(b_.amax + 1, &global, 4, cudaMemcpyHostToDevice, s_));
        BENCH_CUDA(cudaStreamSynchronize(s_));
        p.amax_in = b_.amax + 1;
      } else {
        p.amax_out = b_.amax + (is_b ? 2 : 3);
      }
      break;
    case ScaleKind::kRow: p.scaling = quant::Fp8Scaling::kRowwise; break;
    case ScaleKind::kBlock: p.scaling = is_b ? quant::Fp8Scaling::kBlock128x128 : quant::Fp8Scaling::kBlock1x128; break;
    default: break;
  }
  quant::fp8_quantize(p, s_);
}

// Fresh inputs for `round` (deterministic per shape, dtype, round and rank), quantized; AG: gathered for the
// reference. Collective.
void Rank::gen(int round) {
  const int W = w_.W;
  const bool ag = w_.suite == SuiteKind::kAg;
  const int64_t a_rows = ag ? m_ : sh_.M, cols = ag ? sh_.K : k_, N = sh_.N;
  const uint64_t base = (static_cast<uint64_t>(sh_.M) * 1000003ull + sh_.K * 7919ull + sh_.N) * 31ull + pidx_ * 7ull + round;
  const uint64_t seed_a = base * 1315423911ull + 17ull * (r_ + 1);
  const uint64_t seed_b = ag ? base * 2654435761ull : base * 2654435761ull + 101ull * (r_ + 1);  // AG: same B everywhere
  void* a_bf16 = fp8() ? b_.a_src : b_.a_in;
  void* b_bf16 = fp8() ? b_.b_src : b_.b_in;
  fill_random(a_bf16, a_rows * cols, DType::kBFloat16, seed_a, s_);
  fill_random(b_bf16, N * cols, DType::kBFloat16, seed_b, s_);
  vary_magnitude(a_bf16, a_rows, cols, seed_a ^ 0x5bd1e995ull, s_);
  if (a_.b_nk) vary_magnitude(b_bf16, N, cols, seed_b ^ 0x5bd1e995ull, s_);
  else vary_magnitude(b_bf16, cols, N, seed_b ^ 0x5bd1e995ull, s_);
  if (fp8()) {
    quantize(b_.a_src, a_rows, cols, false, b_.a_in, b_.a_scale);
    quantize(b_.b_src, N, cols, true, b_.b_in, b_.b_scale);
  }
  BENCH_CUDA(cudaStreamSynchronize(s_));
  if (ag) {
    comm_.host_barrier();  // every rank's shard is ready
    const std::size_t shard_bytes = m_ * sh_.K * ab_size();
    for (int p = 0; p < W; ++p)
      BENCH_CUDA(cudaMemcpyAsync(static_cast<char*>(b_.a_full) + p * shard_bytes, w_.bufs[p].a_in, shard_bytes,
                                 cudaMemcpyDefault, s_));
    if (pr_->scale == ScaleKind::kTensor) {
      BENCH_CUDA(cudaMemcpyAsync(b_.a_full_scale, b_.a_scale, 4, cudaMemcpyDeviceToDevice, s_));
    } else if (pr_->scale == ScaleKind::kRow) {
      for (int p = 0; p < W; ++p)
        BENCH_CUDA(cudaMemcpyAsync(b_.a_full_scale + p * m_, w_.bufs[p].a_scale, m_ * 4, cudaMemcpyDefault, s_));
    } else if (pr_->scale == ScaleKind::kBlock) {
      // Shard p's 1x128 scales are (m, kb) M-major; the gathered ones (M, kb) M-major: column j of shard p goes to
      // full[j * M + p * m ...].
      const int64_t nkb = kb(sh_.K);
      for (int p = 0; p < W; ++p)
        BENCH_CUDA(cudaMemcpyAsync(b_.scale_stage + p * m_ * nkb, w_.bufs[p].a_scale, m_ * nkb * 4, cudaMemcpyDefault, s_));
      for (int p = 0; p < W; ++p)
        BENCH_CUDA(cudaMemcpy2DAsync(b_.a_full_scale + p * m_, sh_.M * 4, b_.scale_stage + p * m_ * nkb, m_ * 4, m_ * 4,
                                     nkb, cudaMemcpyDeviceToDevice, s_));
    }
    BENCH_CUDA(cudaStreamSynchronize(s_));
  }
  comm_.host_barrier();  // nobody regenerates while a peer still reads
}

// The reference output of the current inputs into ref[round]. Collective.
void Rank::compute_ref(int round) {
  if (!ref_err_.empty()) return;
  if (w_.suite == SuiteKind::kAg) {
    lt_.run(ref_gemm_, b_.a_full, b_.a_full_scale, b_.b_in, b_.b_scale, b_.ref[round], s_);
    BENCH_CUDA(cudaStreamSynchronize(s_));
    return;
  }
  const int W = w_.W;
  const int64_t mw = sh_.M / W;
  lt_.run(partial_, b_.a_in, b_.a_scale, b_.b_in, b_.b_scale, b_.partial, s_);
  BENCH_CUDA(cudaStreamSynchronize(s_));
  comm_.host_barrier();
  const std::size_t es = partial_.d == DType::kFloat32 ? 4 : 2;
  const std::size_t slice = mw * sh_.N * es;
  for (int p = 0; p < W; ++p)
    BENCH_CUDA(cudaMemcpyAsync(static_cast<char*>(b_.stage) + p * slice,
                               static_cast<const char*>(w_.bufs[p].partial) + r_ * slice, slice, cudaMemcpyDefault, s_));
  BENCH_CUDA(cudaStreamSynchronize(s_));
  comm_.host_barrier();
  reduce_ranks(b_.stage, partial_.d, W, mw * sh_.N, b_.ref[round], s_);
  BENCH_CUDA(cudaStreamSynchronize(s_));
}

std::string engine_label(AsyncTpEngine e, AsyncTpTransport t) {
  std::string s = async_tp_engine_name(e);
  // Both fused engines move the chunks with the copy engine or SM copies.
  if (e == AsyncTpEngine::kDecomposed || e == AsyncTpEngine::kNative) s += std::string(":") + async_tp_transport_name(t);
  return s;
}

TensorView view(const void* p, DType t, std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides) {
  TensorView v;
  v.data = const_cast<void*>(p);
  v.dtype = t;
  v.ndim = static_cast<int>(sizes.size());
  int i = 0;
  for (int64_t s : sizes) v.sizes[i++] = s;
  i = 0;
  for (int64_t s : strides) v.strides[i++] = s;
  return v;
}

// Why `im` is not run for this cell on this rank ("" = run it); fills the library's args.
std::string Rank::skip_reason(const Impl& im, AllGatherMatmulArgs* ag, MatmulReduceScatterArgs* rs, std::string* engine) {
  if (im.gemm_only) return gemm_err_;
  if (im.engine == AsyncTpEngine::kUnfused && w_.loopback) return "loopback world: no NCCL (one GPU)";
  const int W = w_.W;
  const int64_t M = sh_.M, K = sh_.K, N = sh_.N;
  const DType ab = pr_->ab;
  AsyncTpOptions o;
  o.engine = im.engine;
  o.transport = im.tr;
  o.allow_fallback = false;
  o.use_fast_accum = fp8() && a_.fast_accum && pr_->scale != ScaleKind::kBlock;
  const int64_t kk = w_.suite == SuiteKind::kAg ? K : K / W;
  const TensorView bv = a_.b_nk ? view(b_.b_in, ab, {kk, N}, {1, kk}) : view(b_.b_in, ab, {kk, N}, {N, 1});
  TensorView bs;
  switch (pr_->scale) {
    case ScaleKind::kTensor: bs = view(b_.b_scale, DType::kFloat32, {1}, {1}); break;
    case ScaleKind::kRow: bs = view(b_.b_scale, DType::kFloat32, {1, N}, {N, 1}); break;
    case ScaleKind::kBlock: bs = view(b_.b_scale, DType::kFloat32, {kb(kk), kb(N)}, {1, kb(kk)}); break;
    default: break;
  }
  try {
    AsyncTpDecision d;
    if (w_.suite == SuiteKind::kAg) {
      *ag = AllGatherMatmulArgs{};
      ag->a_shard = view(b_.a_in, ab, {m_, K}, {K, 1});
      ag->gather_dim = 0;
      ag->num_b = 1;
      ag->b[0] = bv;
      ag->out[0] = view(b_.out, DType::kBFloat16, {M, N}, {N, 1});
      ag->b_scale[0] = bs;
      switch (pr_->scale) {
        case ScaleKind::kTensor: ag->a_scale = view(b_.a_scale, DType::kFloat32, {1}, {1}); break;
        case ScaleKind::kRow: ag->a_scale = view(b_.a_scale, DType::kFloat32, {m_, 1}, {1, 1}); break;
        case ScaleKind::kBlock: ag->a_scale = view(b_.a_scale, DType::kFloat32, {m_, kb(K)}, {1, m_}); break;
        default: break;
      }
      ag->options = o;
      d = resolve_all_gather_matmul(comm_, *ag);
    } else {
      *rs = MatmulReduceScatterArgs{};
      rs->a = view(b_.a_in, ab, {M, k_}, {k_, 1});
      rs->b = bv;
      rs->out = view(b_.out, DType::kBFloat16, {M / W, N}, {N, 1});
      rs->scatter_dim = 0;
      rs->reduce = RsReduce::kSum;
      rs->b_scale = bs;
      switch (pr_->scale) {
        case ScaleKind::kTensor: rs->a_scale = view(b_.a_scale, DType::kFloat32, {1}, {1}); break;
        case ScaleKind::kRow: rs->a_scale = view(b_.a_scale, DType::kFloat32, {M, 1}, {1, 1}); break;
        case ScaleKind::kBlock: rs->a_scale = view(b_.a_scale, DType::kFloat32, {M, kb(k_)}, {1, M}); break;
        default: break;
      }
      rs->options = o;
      d = resolve_matmul_reduce_scatter(comm_, *rs);
    }
    *engine = engine_label(d.engine, d.transport);
    if (im.engine == AsyncTpEngine::kAuto) {
      if (d.engine == AsyncTpEngine::kUnfused && w_.loopback)
        return "auto resolved to the unfused engine (" + d.reason + "), which needs NCCL: a loopback world has none";
      return {};
    }
    if (d.engine != im.engine || (im.engine != AsyncTpEngine::kUnfused && !d.fused))
      return d.reason.empty() ? std::string("resolve chose ") + *engine : d.reason;
    if (im.engine == AsyncTpEngine::kDecomposed && im.tr != AsyncTpTransport::kAuto && d.transport != im.tr)
      return d.reason.empty() ? std::string("resolve chose transport ") + async_tp_transport_name(d.transport) : d.reason;
    return {};
  } catch (const Error& e) {
    return e.what();
  }
}

std::function<AsyncTpEngine()> Rank::make_call(const Impl& im, const AllGatherMatmulArgs& ag,
                                               const MatmulReduceScatterArgs& rs) {
  if (im.gemm_only) {
    if (w_.suite == SuiteKind::kAg)
      return [this] {
        lt_.run(gemm_, b_.a_full, b_.a_full_scale, b_.b_in, b_.b_scale, b_.out, s_);
        return AsyncTpEngine::kUnfused;
      };
    return [this] {
      lt_.run(gemm_, b_.a_in, b_.a_scale, b_.b_in, b_.b_scale, b_.gemm_out, s_);
      return AsyncTpEngine::kUnfused;
    };
  }
  if (w_.suite == SuiteKind::kAg) return [this, ag] { return all_gather_matmul(comm_, ag, s_); };
  return [this, rs] { return matmul_reduce_scatter(comm_, rs, s_); };
}

// One checked call (output poisoned first) on the inputs of `round`, against ref[round]; collective.
// `call_again` re-runs the op (eager check: twice, for run-to-run equality); null for the graph replay.
Rank::Verdict Rank::verify(const Impl& im, int round, const std::function<void()>& call) {
  const int W = w_.W;
  const bool ag = w_.suite == SuiteKind::kAg;
  const int64_t rows = ag ? sh_.M : sh_.M / W;
  Verdict v;
  bool ok = true;
  std::string detail;
  if (im.gemm_only) {
    // gemm_only is checked against the float64 dot products directly (it is the reference's own GEMM).
    const void* d = ag ? b_.out : b_.gemm_out;
    BENCH_CUDA(cudaMemsetAsync(const_cast<void*>(d), 0xFF, sh_.M * sh_.N * 2, s_));
    call();
    BENCH_CUDA(cudaStreamSynchronize(s_));
    DirectCheck c;
    c.a = ag ? b_.a_full : b_.a_in;
    c.a_scale = ag ? b_.a_full_scale : b_.a_scale;
    c.b = b_.b_in;
    c.b_scale = b_.b_scale;
    c.d = d;
    c.shape = gemm_;
    c.seed = 977 + round;
    const DirectResult dr = direct_check(c, b_.scratch, s_);
    v.rel = max_all(dr.rel);
    v.worst = v.rel;
    v.ok = all_true(dr.nonfinite == 0 && dr.rel <= cell_tol());
    if (!v.ok) v.detail = "vs float64 dot products on 2048 sampled outputs";
    return v;
  }
  BENCH_CUDA(cudaMemsetAsync(b_.out, 0xFF, rows * sh_.N * 2, s_));
  call();
  comm_.synchronize(s_);
  const ErrStats e1 = compare_bf16(b_.out, b_.ref[round], rows, sh_.N, b_.scratch, s_);
  if (!(e1.worst_row <= cell_tol())) {
    ok = false;
    detail += "worst row " + std::to_string(e1.worst_row) + (e1.nonfinite ? " (" + std::to_string(e1.nonfinite) + " NaN/Inf)" : "") + "; ";
  }
  if (round == 0) {
    // Run-to-run: the same input again gives the same bits.
    BENCH_CUDA(cudaMemsetAsync(b_.out, 0xFF, rows * sh_.N * 2, s_));
    call();
    comm_.synchronize(s_);
    const ErrStats e2 = compare_bf16(b_.out, b_.ref[round], rows, sh_.N, b_.scratch, s_);
    if (e2.hash != e1.hash || e2.mismatches != e1.mismatches) {
      ok = false;
      detail += "two calls on the same input differ; ";
    }
  }
  if (ag) {
    const auto hashes = all_gather<uint64_t>(e1.hash);
    bool same = true;
    for (auto h : hashes) same = same && h == hashes[0];
    if (!same) {
      ok = false;
      detail += "outputs differ across ranks; ";
    }
  }
  v.rel = max_all(e1.rel());
  v.worst = max_all(e1.worst_row);
  v.ok = all_true(ok);
  if (!v.ok && detail.empty()) detail = "another rank's check failed";
  v.detail = detail;
  return v;
}

void end_capture_if_needed(cudaStream_t s) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(s, &g);
    if (g) cudaGraphDestroy(g);
  }
  cudaGetLastError();
}

void Rank::run_impl(const Impl& im) {
  AllGatherMatmulArgs ag;
  MatmulReduceScatterArgs rs;
  std::string engine;
  std::string why = skip_reason(im, &ag, &rs, &engine);
  // Every rank runs or skips together.
  const auto flags = all_gather<int32_t>(why.empty() ? 1 : 0);
  bool run = true;
  for (int32_t f : flags) run = run && f;
  if (!run && why.empty()) why = "another rank cannot run it";
  if (!run) {
    for (const auto& mode : a_.modes) {
      Row row = base_row(im, mode);
      row.skipped = why;
      if (!engine.empty()) row.engine = engine;
      emit(row);
    }
    return;
  }
  const auto op = make_call(im, ag, rs);
  AsyncTpEngine ran = AsyncTpEngine::kUnfused;
  auto call = [&] { ran = op(); };
  // iters: ~5 ms of GEMM per sample at ~600 (bf16) / ~1200 (FP8) TFLOP/s, 3..20; the same on every rank (the calls
  // are collective and the graph captures `iters` of them).
  int iters = a_.iters;
  if (iters <= 0) {
    const double flops = 2.0 * sh_.M * sh_.N * (w_.suite == SuiteKind::kAg ? sh_.K : sh_.K / w_.W);
    const double est_us = flops / (fp8() ? 1.2e9 : 6e8);
    iters = static_cast<int>(std::clamp(std::ceil(5000.0 / std::max(est_us, 1.0)), 3.0, 20.0));
  }
  std::string error;
  Verdict eager_v, graph_v;
  std::map<std::string, double> us_by_mode;
  // gemm_only is checked against float64 dot products (needs no reference); the others against the reference.
  const bool checkable = a_.check && (im.gemm_only || ref_ok_);
  try {
    if (checkable) eager_v = verify(im, 0, call);
    else call();  // warm-up (lazy initialization outside any graph)
    comm_.synchronize(s_);
    for (const auto& mode : a_.modes) {
      std::function<void(cudaGraphExec_t)> check_graph;
      if (mode == "graph" && checkable)
        check_graph = [&](cudaGraphExec_t exec) {
          comm_.synchronize(s_);
          gen(1);
          graph_v = verify(im, 1, [&] { BENCH_CUDA(cudaGraphLaunch(exec, s_)); });
          gen(0);
        };
      comm_.host_barrier();
      double us = mode == "graph" ? time_graph_us(s_, call, iters, a_.reps, {}, check_graph)
                                  : time_eager_us(s_, call, iters, a_.reps);
      comm_.synchronize(s_);
      us_by_mode[mode] = max_all(us);
    }
  } catch (const Error& e) {
    end_capture_if_needed(s_);
    error = e.what();
  }
  // Agree on failure (a rank whose call threw waits here for the others, whose waits then time out and throw too).
  const bool all_ok = all_true(error.empty());
  if (!all_ok && error.empty()) error = "another rank failed";
  for (const auto& mode : a_.modes) {
    Row row = base_row(im, mode);
    row.iters = iters;
    if (!im.gemm_only) {
      // What resolve_*() said, checked against what the call returned.
      row.engine = engine;
      const std::string ran_name = async_tp_engine_name(ran);
      if (all_ok && engine.rfind(ran_name, 0) != 0) {
        row.check_detail = "resolve said " + engine + " but the call ran " + ran_name + "; ";
        row.correct = 0;
      }
    }
    if (!all_ok) {
      row.error = error;
      row.correct = 0;
      w_.failures += lead() ? 1 : 0;
      emit(row);
      continue;
    }
    row.us = us_by_mode[mode];
    if (a_.check) {
      if (!checkable) {
        row.correct = -1;
        row.check_detail = "not checked: " + (ref_err_.empty() ? std::string("the reference failed its own check") : ref_err_);
      } else {
        const Verdict& v = mode == "graph" ? graph_v : eager_v;
        row.correct = v.ok && row.correct != 0 ? 1 : 0;
        row.rel = v.rel;
        row.worst_row = v.worst;
        row.check_detail += v.detail;
        row.tol = cell_tol();
        if (row.correct == 0 && lead()) {
          ++w_.failures;
          std::printf("CHECK FAILED (%s): %s %s %s %s: rel %.3g, worst row %.3g: %s\n", mode.c_str(), suite_name(w_.suite),
                      im.label().c_str(), pr_->name, sh_.str().c_str(), v.rel, v.worst, row.check_detail.c_str());
        }
      }
    }
    emit(row);
  }
}

void Rank::group(const Shape& sh, int pidx) {
  sh_ = sh;
  pidx_ = pidx;
  pr_ = &kPrecs[pidx];
  const int W = w_.W;
  m_ = sh.M / W;
  k_ = sh.K / W;
  gemm_err_.clear();
  ref_err_.clear();
  ref_ok_ = false;
  ref_rel_ = NAN;
  std::vector<Impl> impls;
  for (const Impl& im : all_impls())
    if (selected(a_, im.label())) impls.push_back(im);
  const std::string bad = cell_unsupported();
  if (!bad.empty()) {
    for (const Impl& im : impls)
      for (const auto& mode : a_.modes) {
        Row row = base_row(im, mode);
        row.skipped = bad;
        emit(row);
      }
    return;
  }
  const bool ag = w_.suite == SuiteKind::kAg;
  gemm_ = GemmShape{};
  gemm_.M = sh.M;
  gemm_.N = sh.N;
  gemm_.K = ag ? sh.K : k_;
  gemm_.ab = pr_->ab;
  gemm_.d = DType::kBFloat16;
  gemm_.b_nk = a_.b_nk;
  gemm_.scale = pr_->scale;
  gemm_.fast_accum = fp8() && a_.fast_accum && pr_->scale != ScaleKind::kBlock;
  gemm_err_ = lt_.prepare(gemm_);
  // The reference never uses fast accumulation.
  ref_gemm_ = gemm_;
  ref_gemm_.fast_accum = false;
  if (ag) {
    const std::string e = lt_.prepare(ref_gemm_);
    ref_err_ = e.empty() ? "" : "reference GEMM: " + e;
  } else {
    partial_ = ref_gemm_;
    partial_.d = DType::kFloat32;
    if (!lt_.prepare(partial_).empty()) {
      // cuBLASLt has no fp32-output kernel for this combination: bf16 partials (one more rounding, within kTol).
      partial_.d = DType::kBFloat16;
      const std::string e = lt_.prepare(partial_);
      if (!e.empty()) ref_err_ = "reference GEMM: " + e;
    }
  }
  // The same decision on every rank (heuristics are deterministic, but a rank must never diverge in collectives).
  if (!all_true(ref_err_.empty()) && ref_err_.empty()) ref_err_ = "another rank cannot compute the reference";
  if (!all_true(gemm_err_.empty()) && gemm_err_.empty()) gemm_err_ = "another rank cannot run the GEMM";
  if (ref_err_.empty()) {
    const bool graph = std::find(a_.modes.begin(), a_.modes.end(), "graph") != a_.modes.end();
    if (a_.check && graph) {
      gen(1);
      compute_ref(1);
    }
    gen(0);
    compute_ref(0);
    if (a_.check) {
      DirectCheck c;
      c.a = ag ? b_.a_full : b_.a_in;
      c.a_scale = ag ? b_.a_full_scale : b_.a_scale;
      c.b = b_.b_in;
      c.b_scale = b_.b_scale;
      c.d = ag ? b_.ref[0] : b_.partial;
      c.shape = ag ? ref_gemm_ : partial_;
      c.seed = 4242;
      const DirectResult dr = direct_check(c, b_.scratch, s_);
      ref_rel_ = max_all(dr.rel);
      ref_ok_ = all_true(dr.nonfinite == 0 && dr.rel <= a_.tol);
      if (!ref_ok_) {
        ref_err_ = "the reference GEMM failed its float64 check (rel " + std::to_string(ref_rel_) + ")";
        if (lead()) {
          ++w_.failures;
          std::printf("REFERENCE FAILED: %s %s %s: cuBLASLt vs float64 dot products rel %.3g (> %.3g)\n",
                      suite_name(w_.suite), pr_->name, sh.str().c_str(), ref_rel_, a_.tol);
        }
      }
    }
  } else {
    gen(0);
  }
  for (const Impl& im : impls) run_impl(im);
  if (lead()) {
    std::printf("  %s %s done\n", sh.str().c_str(), pr_->name);
    std::fflush(stdout);
  }
}

// --trace: one instrumented eager call per implementation of one shape and dtype.
void Rank::trace_phase() {
  Shape tsh = a_.trace_shape;
  int tp = 0;
  for (int p = 0; p < 4; ++p)
    if (a_.trace_dtype == kPrecs[p].name) tp = p;
  sh_ = tsh;
  pidx_ = tp;
  pr_ = &kPrecs[tp];
  m_ = tsh.M / w_.W;
  k_ = tsh.K / w_.W;
  if (!cell_unsupported().empty()) {
    if (lead()) w_.trace_status = "trace: " + cell_unsupported();
    return;
  }
  const bool fits = [&] {
    for (const Shape& s : a_.shapes)
      if (s.M >= tsh.M && s.K >= tsh.K && s.N >= tsh.N) return true;
    return false;
  }();
  if (!all_true(fits)) {
    if (lead()) w_.trace_status = "trace: --trace-shape must not exceed the largest benchmarked shape (buffers)";
    return;
  }
  const bool ag = w_.suite == SuiteKind::kAg;
  gemm_ = GemmShape{};
  gemm_.M = tsh.M;
  gemm_.N = tsh.N;
  gemm_.K = ag ? tsh.K : k_;
  gemm_.ab = pr_->ab;
  gemm_.b_nk = a_.b_nk;
  gemm_.scale = pr_->scale;
  gemm_.fast_accum = fp8() && a_.fast_accum && pr_->scale != ScaleKind::kBlock;
  gemm_err_ = lt_.prepare(gemm_);
  if (!all_true(gemm_err_.empty()) && gemm_err_.empty()) gemm_err_ = "another rank cannot run the GEMM";
  gen(0);
  struct Traced {
    std::string label;
    std::function<AsyncTpEngine()> op;
  };
  std::vector<Traced> ops;
  for (const Impl& im : all_impls()) {
    if (!selected(a_, im.label())) continue;
    AllGatherMatmulArgs agv;
    MatmulReduceScatterArgs rsv;
    std::string engine;
    const std::string why = skip_reason(im, &agv, &rsv, &engine);
    if (!all_true(why.empty())) continue;
    ops.push_back({im.label(), make_call(im, agv, rsv)});
  }
  try {
    for (auto& t : ops) t.op();  // warm-up outside the trace
    comm_.synchronize(s_);
  } catch (const Error& e) {
    if (lead()) w_.trace_status = std::string("trace: warm-up failed: ") + e.what();
    all_true(false);
    return;
  }
  if (!all_true(true)) return;
  comm_.host_barrier();
  if (lead()) {
    std::string why;
    w_.tracer = Tracer::start(&why);
    if (!w_.tracer) w_.trace_status = "trace: " + why;
  }
  comm_.host_barrier();
  if (!w_.tracer) return;
  w_.tracer->bind_thread(r_, comm_.device());
  comm_.host_barrier();
  for (auto& t : ops) {
    comm_.host_barrier();
    w_.tracer->mark_stream(r_, s_, b_.marker);
    const unsigned long long t0 = w_.tracer->now();
    bool ok = true;
    try {
      t.op();
      comm_.synchronize(s_);
    } catch (const Error&) {
      ok = false;
    }
    const unsigned long long t1 = w_.tracer->now();
    w_.tracer->phase(r_, t.label + (ok ? "" : " (failed)"), t0, t1);
    comm_.host_barrier();
  }
  comm_.host_barrier();
}

void Rank::run() {
  BENCH_CUDA(cudaSetDevice(comm_.device()));
  BENCH_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
  alloc();
  // Workspace for every shape up front (collective): graph capture must not grow it.
  bool any_tpcomm = false;
  for (const Impl& im : all_impls()) any_tpcomm = any_tpcomm || (!im.gemm_only && selected(a_, im.label()));
  if (any_tpcomm) {
    std::size_t ag_bytes = 0, rs_bytes = 0;
    for (const Shape& s : a_.shapes) {
      if (w_.suite == SuiteKind::kAg) ag_bytes = std::max<std::size_t>(ag_bytes, s.M * s.K * 2);
      else rs_bytes = std::max<std::size_t>(rs_bytes, s.M * s.N * 2);
    }
    reserve_async_tp(comm_, ag_bytes, rs_bytes);
  }
  comm_.host_barrier();
  for (const Shape& sh : a_.shapes)
    for (int p : a_.precs) group(sh, p);
  if (!a_.trace.empty()) trace_phase();
  comm_.synchronize(s_);
  comm_.host_barrier();
  if (lead()) w_.stats0 = comm_.stats();
  free_all();
  cudaStreamDestroy(s_);
}

// ---- output ------------------------------------------------------------------------------------------------------
std::string row_json(const World& w, const Row& r) {
  if (!r.raw.empty()) return r.raw;
  JsonObject o;
  o.add("suite", suite_name(w.suite)).add("impl", r.impl).add("dtype", r.dtype);
  o.add("M", static_cast<long long>(r.shape.M)).add("K", static_cast<long long>(r.shape.K)).add("N", static_cast<long long>(r.shape.N));
  o.add("world", w.W).add("loopback", w.loopback).add("mode", r.mode);
  if (std::isfinite(r.us)) o.add("us", r.us);
  else o.add_raw("us", "null");
  if (r.correct < 0) o.add_raw("correct", "null");
  else o.add("correct", r.correct == 1);
  if (!r.transport.empty()) o.add("transport", r.transport);
  if (!r.engine.empty()) o.add("engine", r.engine);
  if (!r.skipped.empty()) o.add("skipped", r.skipped);
  if (!r.error.empty()) o.add("error", r.error);
  if (std::isfinite(r.rel)) o.add("rel_err", r.rel);
  if (std::isfinite(r.worst_row)) o.add("worst_row_rel_err", r.worst_row);
  if (std::isfinite(r.tol)) o.add("tol", r.tol);
  if (!r.check_detail.empty()) o.add("check_detail", r.check_detail);
  if (r.iters) o.add("iters", r.iters);
  return o.str();
}

// us of a row matching (impl, dtype, shape, mode) with a time, NaN if none.
double lookup(const std::vector<Row>& rows, const std::string& impl, const Row& like) {
  for (const Row& r : rows)
    if (r.impl == impl && r.dtype == like.dtype && r.shape == like.shape && r.mode == like.mode && std::isfinite(r.us) &&
        r.correct != 0)
      return r.us;
  return NAN;
}

void print_tables(const World& w) {
  for (const std::string& mode : w.a.modes) {
    std::printf("\n%s %s, world %d%s: us = median (max over ranks); x gemm = us / gemm_only us; vs nccl = nccl+cublas us / us; "
                "vs torch = torch_symm_mem us / us\n",
                suite_name(w.suite), mode.c_str(), w.W, w.loopback ? " (loopback world on one GPU: timings measure nothing)" : "");
    std::printf("%-16s %-15s %-22s %-14s %10s %7s %8s %9s %6s\n", "shape", "dtype", "impl", "engine", "us", "x gemm",
                "vs nccl", "vs torch", "check");
    for (const Shape& sh : w.a.shapes)
      for (int p : w.a.precs)
        for (const Row& r : w.rows) {
          if (!(r.shape == sh) || r.dtype != kPrecs[p].name || r.mode != mode) continue;
          const std::string label = r.transport.empty() ? r.impl : r.impl + ":" + r.transport;
          if (!r.skipped.empty() || !r.error.empty()) {
            std::printf("%-16s %-15s %-22s %s: %.150s\n", sh.str().c_str(), r.dtype.c_str(), label.c_str(),
                        r.skipped.empty() ? "ERROR" : "skipped", (r.skipped.empty() ? r.error : r.skipped).c_str());
            continue;
          }
          const double g = lookup(w.rows, "gemm_only", r), n = lookup(w.rows, "nccl+cublas", r),
                       t = lookup(w.rows, "torch_symm_mem", r);
          char xg[16] = "-", vn[16] = "-", vt[16] = "-";
          if (std::isfinite(g)) std::snprintf(xg, sizeof(xg), "%.3f", r.us / g);
          if (std::isfinite(n)) std::snprintf(vn, sizeof(vn), "%.2fx", n / r.us);
          if (std::isfinite(t)) std::snprintf(vt, sizeof(vt), "%.2fx", t / r.us);
          std::printf("%-16s %-15s %-22s %-14s %10.1f %7s %8s %9s %6s\n", sh.str().c_str(), r.dtype.c_str(), label.c_str(),
                      r.engine.empty() ? "-" : r.engine.c_str(), r.us, xg, vn, vt,
                      r.correct < 0 ? "-" : r.correct ? "ok" : "FAIL");
        }
  }
}

// async_tp.json holds both suites: this run's rows replace this suite's and the other suite's are kept. The file is
// written one row per line so that it can be merged line by line.
bool write_json(const World& w, const std::string& path, const std::string& suite_meta) {
  const std::string me = suite_name(w.suite);
  std::vector<std::string> keep_rows, keep_meta;
  {
    std::ifstream f(path);
    std::string line;
    bool in_results = false, in_suites = false;
    while (std::getline(f, line)) {
      if (line.rfind("\"suites\": {", 0) == 0) { in_suites = true; continue; }
      if (line.rfind("\"results\": [", 0) == 0) { in_results = true; in_suites = false; continue; }
      if (in_suites && line.rfind("  \"", 0) == 0 && line.rfind("  \"" + me + "\"", 0) != 0) {
        std::string l = line;
        if (!l.empty() && l.back() == ',') l.pop_back();
        keep_meta.push_back(l);
      }
      if (in_results && line.rfind("  {\"suite\": ", 0) == 0 && line.rfind("  {\"suite\": \"" + me + "\"", 0) != 0) {
        std::string l = line.substr(2);
        if (!l.empty() && l.back() == ',') l.pop_back();
        keep_rows.push_back(l);
      }
    }
  }
  std::vector<std::string> metas = keep_meta;
  metas.push_back("  " + json_escape(me) + ": " + suite_meta);
  std::sort(metas.begin(), metas.end());
  std::vector<std::string> rows = keep_rows;
  for (const Row& r : w.rows) rows.push_back(row_json(w, r));
  std::string text = "{\"format\": \"tpcomm-bench async_tp rows (one per line; ag_gemm and gemm_rs merged)\",\n\"suites\": {\n";
  for (std::size_t i = 0; i < metas.size(); ++i) text += metas[i] + (i + 1 < metas.size() ? ",\n" : "\n");
  text += "},\n\"results\": [\n";
  for (std::size_t i = 0; i < rows.size(); ++i) text += "  " + rows[i] + (i + 1 < rows.size() ? ",\n" : "\n");
  text += "]}\n";
  return write_file(path, text);
}

int run_suite(SuiteKind kind, int argc, char** argv) {
  World w;
  w.suite = kind;
  const char* sname = suite_name(kind);
  const int pr = parse(sname, argc, argv, w.a);
  if (pr) return pr == 1 ? 0 : pr;
  const Args& a = w.a;
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess) ndev = 0;
  if (ndev == 0) {
    std::printf("%s: skipped: no CUDA device\n", sname);
    return 0;
  }
  w.loopback = a.loopback;
  std::string mode_note;
  if (!a.loopback && a.world == 0 && ndev < 2) {
    w.loopback = true;
    mode_note = "one GPU visible: a loopback world of 2 ranks on GPU " + std::to_string(a.device) +
                " (correctness only; timings measure nothing)";
  }
  if (w.loopback) {
    w.W = a.world > 0 ? a.world : 2;
    if (a.device < 0 || a.device >= ndev) {
      std::fprintf(stderr, "%s: --device %d: %d GPUs visible\n", sname, a.device, ndev);
      return 2;
    }
    std::string why;
    w.comms = make_loopback(w.W, a.device, &why);
    if (w.comms.empty()) {
      std::fprintf(stderr, "%s: cannot create a loopback world: %s\n", sname, why.c_str());
      return 2;
    }
    w.devices.assign(w.W, a.device);
  } else {
    w.W = a.world > 0 ? a.world : ndev;
    if (w.W > ndev) {
      std::fprintf(stderr, "%s: --world %d needs %d GPUs (%d visible); --loopback runs W ranks on one GPU\n", sname, w.W,
                   w.W, ndev);
      return 2;
    }
    if (w.W < 2) {
      std::printf("%s: skipped: --world %d (needs 2 or more ranks; --loopback for one GPU)\n", sname, w.W);
      return 0;
    }
    for (int d = 0; d < w.W; ++d) w.devices.push_back(d);
    w.comms = Communicator::create_local(w.devices);
  }
  std::string command = "tpcomm-bench";
  for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
  Communicator& c0 = *w.comms[0];
  std::printf("%s: %d ranks%s, %s, fast path %s%s\n", sname, w.W, w.loopback ? " (loopback, one GPU)" : "",
              device_name(c0.device()).c_str(), c0.fast_path() ? "on" : "off: ", c0.fast_path() ? "" : c0.topology().reason.c_str());
  if (!mode_note.empty()) std::printf("%s: %s\n", sname, mode_note.c_str());
  std::printf("reproduce: %s\n", command.c_str());
  std::printf("check: every cell vs this bench's reference, worst-row relative error <= %.3g (FP8 fast accumulation: "
              "%.3g), run-to-run%s bitwise equal\n",
              a.tol, std::max(a.tol, a.tol_fast), kind == SuiteKind::kAg ? " and cross-rank" : "");
  std::fflush(stdout);

  w.bufs.resize(w.W);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < w.W; ++r)
      threads.emplace_back([&w, r] {
        try {
          Rank rank(w, r);
          rank.run();
        } catch (const Error& e) {
          // A rank that cannot go on would leave its peers waiting in a collective: end the process.
          std::fprintf(stderr, "%s: rank %d: %s\n", suite_name(w.suite), r, e.what());
          std::fflush(nullptr);
          std::_Exit(1);
        }
      });
    for (auto& t : threads) t.join();
  }
  // Trace (rank 0's thread started it; finished here once every rank is done).
  if (w.tracer) {
    JsonObject meta;
    meta.add("suite", sname).add("shape", a.trace_shape.str()).add("dtype", a.trace_dtype).add("world", w.W);
    meta.add("loopback", w.loopback).add("command", command);
    meta.add("method", "CUPTI activity records of one eager call per implementation (kernels, copies and memsets "
                       "with GPU start/end per stream; host enqueue times of stream memory operations and event waits), "
                       "after one untraced warm-up call each; ranks separated by host barriers between implementations");
    std::string why;
    if (w.tracer->finish(a.trace, meta.str(), &why)) w.trace_status = "wrote trace " + a.trace;
    else w.trace_status = "trace: " + why;
    w.tracer.reset();
  }
  for (auto& c : w.comms) c->destroy();
  w.comms.clear();

  // PyTorch's fused ops, same GPUs and shapes, after this bench's own cells (so that the two never share a GPU).
  TorchResult tr;
  const bool want_torch = selected(a, "torch_symm_mem");
  if (want_torch) {
    std::string why;
    if (w.loopback) why = "loopback world (one GPU): PyTorch's symmetric-memory ops need one process per GPU";
    else why = torch_unavailable(a.python, w.W);
    if (why.empty()) {
      TorchRun run;
      run.suite = sname;
      run.nproc = w.W;
      std::string shapes, dtypes, modes;
      for (const Shape& s : a.shapes) shapes += (shapes.empty() ? "" : ",") + s.str();
      for (int p : a.precs) dtypes += (dtypes.empty() ? "" : ",") + std::string(kPrecs[p].name);
      for (const auto& m : a.modes) modes += (modes.empty() ? "" : ",") + m;
      run.shapes = shapes;
      run.dtypes = dtypes;
      run.modes = modes;
      run.b_layout = a.b_nk ? "nk" : "kn";
      run.fast_accum = a.fast_accum;
      run.check = a.check;
      run.tol = a.tol;
      run.tol_fast = a.tol_fast;
      run.iters = a.iters;
      run.reps = a.reps;
      run.python = a.python;
      run.script = a.torch_script;
      run.timeout_s = a.torch_timeout;
      std::printf("%s: running PyTorch's fused ops: %s\n", sname, find_torch_script(a.torch_script).c_str());
      std::fflush(stdout);
      tr = run_torch(run);
      if (!tr.ran) why = tr.why_not;
      else if (!tr.why_not.empty()) std::printf("%s: %s\n", sname, tr.why_not.c_str());
    }
    if (tr.ran) {
      for (const FlatRow& fr : tr.rows) {
        Row r;
        r.impl = "torch_symm_mem";
        r.raw = fr.raw;
        r.dtype = fr.str.count("dtype") ? fr.str.at("dtype") : "";
        r.mode = fr.str.count("mode") ? fr.str.at("mode") : "";
        r.shape = {fr.num.count("M") ? static_cast<int64_t>(fr.num.at("M")) : 0,
                   fr.num.count("K") ? static_cast<int64_t>(fr.num.at("K")) : 0,
                   fr.num.count("N") ? static_cast<int64_t>(fr.num.at("N")) : 0};
        if (fr.num.count("us")) r.us = fr.num.at("us");
        if (fr.boolean.count("correct")) r.correct = fr.boolean.at("correct") ? 1 : 0;
        if (fr.str.count("skipped")) r.skipped = fr.str.at("skipped");
        if (fr.num.count("rel_err")) r.rel = fr.num.at("rel_err");
        if (r.correct == 0) {
          ++w.failures;
          std::printf("CHECK FAILED (%s): torch_symm_mem %s %s: %s\n", r.mode.c_str(), r.dtype.c_str(),
                      r.shape.str().c_str(), fr.str.count("check_detail") ? fr.str.at("check_detail").c_str() : "");
        }
        w.rows.push_back(std::move(r));
      }
    } else {
      std::printf("%s: torch_symm_mem skipped: %s\n", sname, why.c_str());
      for (const Shape& sh : a.shapes)
        for (int p : a.precs)
          for (const auto& mode : a.modes) {
            Row r;
            r.impl = "torch_symm_mem";
            r.dtype = kPrecs[p].name;
            r.mode = mode;
            r.shape = sh;
            r.skipped = why;
            w.rows.push_back(std::move(r));
          }
    }
  }

  print_tables(w);
  if (!w.trace_status.empty()) std::printf("%s\n", w.trace_status.c_str());
  int cells = 0, checked = 0, ok = 0, skipped = 0;
  for (const Row& r : w.rows) {
    ++cells;
    if (!r.skipped.empty()) ++skipped;
    if (r.correct >= 0) ++checked;
    if (r.correct == 1) ++ok;
  }
  std::printf("%s: %d rows, %d skipped, %d checked, %d correct, %d failures\n", sname, cells, skipped, checked, ok,
              w.failures.load());
  std::printf("rank 0 async-TP calls: fused %llu, unfused %llu, fallbacks %llu\n",
              static_cast<unsigned long long>(w.stats0.async_tp_fused_calls),
              static_cast<unsigned long long>(w.stats0.async_tp_unfused_calls),
              static_cast<unsigned long long>(w.stats0.async_tp_fallbacks));

  JsonObject meta;
  meta.add("command", command).add("device", device_name(w.devices[0])).add("world", w.W).add("loopback", w.loopback);
  meta.add("devices", std::vector<long long>(w.devices.begin(), w.devices.end()));
  int ncclv = 0;
  ncclGetVersion(&ncclv);
  meta.add("nccl_version", ncclv).add("b_layout", a.b_nk ? "nk" : "kn").add("fp8_fast_accum", a.fast_accum);
  meta.add("reps", a.reps).add("check", a.check).add("check_tol", a.tol).add("check_tol_fast_accum", a.tol_fast);
  meta.add("failures", w.failures.load());
  if (a.check)
    meta.add("check_method",
             std::string("reference on the same inputs: ") +
                 (kind == SuiteKind::kAg ? "shards gathered by cudaMemcpy + cuBLASLt"
                                         : "cuBLASLt A@B per rank in fp32, output rows summed over ranks in fp32 in rank "
                                           "order, rounded once to bf16") +
                 "; the reference GEMM and gemm_only checked on 2048 sampled outputs against float64 dot products of the "
                 "dequantized operands; the reference never uses FP8 fast accumulation; inputs vary in magnitude by 2^+-4 per row "
                 "and 128-column block; a cell is correct when the worst row's ||out-ref||/||ref|| <= check_tol "
                 "(check_tol_fast_accum for FP8 GEMMs with fast accumulation; outputs "
                 "poisoned with NaN first), two calls on one input give the same bits" +
                 (kind == SuiteKind::kAg ? ", and every rank's output has the same bits (B is the same on every rank)" : "") +
                 "; eager: two calls before timing; graph: one more replay of the timed graph on fresh inputs");
  if (tr.ran) {
    meta.add("torch_command", tr.command);
    FlatRow m;
    const std::string& line = tr.meta;
    const auto b = line.find("{", 1);
    if (b != std::string::npos && parse_flat_row(line.substr(b, line.rfind('}') - b), &m)) meta.add_raw("torch", m.raw);
  }
  meta.add("async_tp_fused_calls_rank0", static_cast<std::size_t>(w.stats0.async_tp_fused_calls));
  meta.add("async_tp_unfused_calls_rank0", static_cast<std::size_t>(w.stats0.async_tp_unfused_calls));
  meta.add("async_tp_fallbacks_rank0", static_cast<std::size_t>(w.stats0.async_tp_fallbacks));
  const std::string path = a.json.empty() ? a.out_dir + "/async_tp.json" : a.json;
  if (write_json(w, path, meta.str())) std::printf("wrote %s\n", path.c_str());
  return w.failures.load() ? 1 : 0;
}

int body_ag(int argc, char** argv) { return run_suite(SuiteKind::kAg, argc, argv); }
int body_rs(int argc, char** argv) { return run_suite(SuiteKind::kRs, argc, argv); }

}  // namespace
}  // namespace tpcomm::bench::atp

static int run_ag_gemm_suite(int argc, char** argv) {
  return tpcomm::bench::run_suite_guarded("ag_gemm", tpcomm::bench::atp::body_ag, argc, argv);
}
static int run_gemm_rs_suite(int argc, char** argv) {
  return tpcomm::bench::run_suite_guarded("gemm_rs", tpcomm::bench::atp::body_rs, argc, argv);
}
TPCOMM_BENCH_SUITE("ag_gemm", 30, "async TP all-gather + GEMM: gemm_only, nccl+cublas, tpcomm engines, torch symm_mem",
                   run_ag_gemm_suite);
TPCOMM_BENCH_SUITE("gemm_rs", 31, "async TP GEMM + reduce-scatter: gemm_only, nccl+cublas, tpcomm engines, torch symm_mem",
                   run_gemm_rs_suite);
