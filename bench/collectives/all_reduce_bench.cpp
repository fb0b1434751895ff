// tpcomm-bench all_reduce: sweeps message sizes over every tpcomm algorithm and NCCL in the same run, in
// eager mode and inside CUDA graphs; measures the machine's peer-copy bandwidth in the same run.
//
//   tpcomm-bench all_reduce [-b 1K] [-e 256M] [-f 2] [--dtype bf16] [--op sum] [--impls auto,...]
//                           [--modes graph,eager] [--check|--no-check] [--out DIR | --json PATH] [--nproc N]
//                           [--wire fp8 [--fp8-block 128|32] [--gather-wire fp8|exact]]
// --wire fp8 adds the opt-in FP8-wire two-shot (AllReduceWire::kFp8) as the row two_shot_fp8wire (also nameable in
// --impls). With --check every row also reports its error against the exact (float64) reduction of the inputs;
// FP8-wire rows are checked against that (e4m3 bound, docs/all_reduce.md) instead of against NCCL.
// Started without a launcher, it starts one process per local GPU itself (tpcomm-launch); under torchrun or
// mpirun it uses their ranks.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "collectives/bench_kernels.cuh"
#include "common.h"
#include "suites.h"
#include "comm/comm_impl.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm::bench {
namespace {

struct Impl {
  std::string name;  // "tpcomm:auto", ..., "nccl"
  AllReduceAlgo algo;
  bool zero_copy;
  bool fp8_wire = false;  // "tpcomm:two_shot_fp8wire": algo kTwoShot, AllReduceWire::kFp8
};

struct Args {
  std::size_t begin = 1024, end = std::size_t(256) << 20;
  double factor = 2;
  DType dtype = DType::kBFloat16;
  ReduceOp op = ReduceOp::kSum;
  std::vector<std::string> impls = {"auto", "one_shot_ll", "one_shot", "one_shot_zc", "two_shot", "one_shot_ce", "nccl"};
  std::vector<std::string> modes = {"graph", "eager"};
  bool check = true;
  std::string out_dir = "bench/results/local", json;
  int nproc = 0;
  bool quick = false;
  std::size_t lamport_max = 0;  // CommOptions::lamport_max_bytes (0 = library default)
  bool wire_fp8 = false;        // --wire fp8: add the two_shot_fp8wire row
  int fp8_block = 128;          // --fp8-block
  bool gather_fp8 = true;       // --gather-wire fp8|exact
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t a = 0;
  while (a <= s.size()) {
    const std::size_t b = s.find(',', a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

void usage() {
  std::printf(
      "tpcomm-bench all_reduce [-b MIN] [-e MAX] [-f FACTOR] [--dtype bf16|f16|f32] [--op sum|max|min]\n"
      "    [--impls auto,one_shot_ll,one_shot,one_shot_zc,two_shot,one_shot_ce,nccl] [--modes graph,eager]\n"
      "    [--check|--no-check] [--quick] [--out DIR] [--json PATH] [--nproc N] [--lamport-max BYTES]\n"
      "    [--wire exact|fp8] [--fp8-block 128|32] [--gather-wire fp8|exact]   (fp8: adds the row two_shot_fp8wire)\n");
}

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "all_reduce: %s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "-b" || k == "--minbytes") a.begin = parse_size(next());
    else if (k == "-e" || k == "--maxbytes") a.end = parse_size(next());
    else if (k == "-f" || k == "--stepfactor") a.factor = std::atof(next().c_str());
    else if (k == "--dtype") a.dtype = parse_dtype(next(), "--dtype");
    else if (k == "--op") a.op = parse_reduce_op(next(), "--op");
    else if (k == "--impls") a.impls = split(next());
    else if (k == "--modes") a.modes = split(next());
    else if (k == "--check") a.check = true;
    else if (k == "--no-check") a.check = false;
    else if (k == "--quick") a.quick = true;
    else if (k == "--out") a.out_dir = next();
    else if (k == "--json") a.json = next();
    else if (k == "--nproc") a.nproc = std::atoi(next().c_str());
    else if (k == "--lamport-max") a.lamport_max = parse_size(next());
    else if (k == "--wire") a.wire_fp8 = parse_all_reduce_wire(next()) == AllReduceWire::kFp8;
    else if (k == "--fp8-block") a.fp8_block = std::atoi(next().c_str());
    else if (k == "--gather-wire") a.gather_fp8 = parse_all_reduce_wire(next()) == AllReduceWire::kFp8;
    else if (k == "-h" || k == "--help") { usage(); return false; }
    // other suites' options (the default job passes one argument list to every suite) are ignored
  }
  if (a.quick) {
    a.begin = std::max<std::size_t>(a.begin, 8192);
    a.end = std::min<std::size_t>(a.end, std::size_t(4) << 20);
    a.factor = 4;
  }
  if (a.factor <= 1) a.factor = 2;
  if (a.fp8_block != 32 && a.fp8_block != 128) {
    std::fprintf(stderr, "all_reduce: --fp8-block must be 32 or 128\n");
    std::exit(2);
  }
  if (a.wire_fp8 && std::find(a.impls.begin(), a.impls.end(), "two_shot_fp8wire") == a.impls.end())
    a.impls.push_back("two_shot_fp8wire");
  return true;
}

Impl make_impl(const std::string& n) {
  if (n == "nccl") return {"nccl", AllReduceAlgo::kNccl, false};
  if (n == "one_shot_zc") return {"tpcomm:one_shot_zc", AllReduceAlgo::kOneShot, true};
  if (n == "two_shot_fp8wire") return {"tpcomm:two_shot_fp8wire", AllReduceAlgo::kTwoShot, false, true};
  return {"tpcomm:" + n, parse_all_reduce_algo(n), false};
}

double tolerance(DType d, int world) {
  switch (d) {
    case DType::kBFloat16: return world * 1.6e-2;
    case DType::kFloat16: return world * 2e-3;
    default: return world * 1e-5;
  }
}

// FP8-wire rows against the exact reduction: inputs are uniform in [-1, 1), so every block amax is <= 1 and each
// e4m3 quantization errs by at most 2^-4 |x| + 2^-10 / 448 (docs/all_reduce.md); W of them on the reduce-scatter
// side, one more of a value <= W on an FP8 all-gather, then the rounding to dtype (2^-8 relative for bf16).
double fp8_wire_tolerance(DType d, int world, bool gather_fp8) {
  const double rs = world * (std::ldexp(1.0, -4) * 1.01 + std::ldexp(1.0, -10) / 448.0);
  const double ag = gather_fp8 ? (world * 1.07) * std::ldexp(1.0, -4) * 1.01 + std::ldexp(1.0, -10) / 448.0 * world : 0.0;
  return rs + ag + tolerance(d, world);
}

int iters_for(std::size_t bytes, bool quick) {
  if (quick) return 20;
  if (bytes <= (std::size_t(1) << 20)) return 100;
  if (bytes <= (std::size_t(16) << 20)) return 30;
  return 10;
}

struct CheckResult {
  int state = -1;  // -1 not checked, 0 failed, 1 passed
  double maxdiff = 0;  // vs NCCL (NaN for FP8-wire rows, which are not compared with NCCL)
  ExactError exact{};  // vs the float64 reduction of the inputs
};

// Fits auto's crossover table to graph-mode timings. kAuto (select_all_reduce) runs one_shot_ll up to `ll`,
// one_shot up to `one`, two_shot up to `two` and NCCL above (the copy-engine and zero-copy forms are never
// auto's choice, so they are not candidates). Picks the limits (each at a measured size, 0 = never) that
// minimise the sum over sizes of t(chosen) / t(fastest candidate at that size); a cell that failed its check
// or was not run cannot be chosen. value: "ll=..,one=..,two=.." in TPCOMM_AR_TABLE's syntax, or empty (why).
struct TableFit {
  std::string value, why;
  int off = 0;       // sizes where the fitted table does not pick the fastest candidate
  double worst = 1;  // largest t(chosen) / t(fastest) over sizes
};
TableFit fit_auto_table(const std::vector<std::size_t>& sizes, const std::map<std::size_t, std::map<std::string, double>>& us,
                        const std::map<std::size_t, std::map<std::string, int>>& checked) {
  static const char* const kCand[4] = {"tpcomm:one_shot_ll", "tpcomm:one_shot", "tpcomm:two_shot", "nccl"};
  TableFit fit;
  const std::size_t n = sizes.size();
  if (n == 0) {
    fit.why = "no sizes";
    return fit;
  }
  // t[c][k]: time of candidate c at size k, NaN when not usable.
  std::vector<std::vector<double>> t(4, std::vector<double>(n, NAN));
  std::vector<double> best(n, NAN);
  std::vector<int> best_c(n, -1);
  for (std::size_t k = 0; k < n; ++k) {
    const auto row = us.find(sizes[k]);
    const auto chk = checked.find(sizes[k]);
    for (int c = 0; c < 4; ++c) {
      if (row == us.end() || !row->second.count(kCand[c])) continue;
      if (chk != checked.end() && chk->second.count(kCand[c]) && chk->second.at(kCand[c]) == 0) continue;
      const double v = row->second.at(kCand[c]);
      if (!std::isfinite(v) || v <= 0) continue;
      t[c][k] = v;
      if (best_c[k] < 0 || v < best[k]) { best[k] = v; best_c[k] = c; }
    }
    if (best_c[k] < 0) {
      fit.why = "no usable one_shot_ll/one_shot/two_shot/nccl cell at " + format_size(sizes[k]);
      return fit;
    }
  }
  // Prefix sums of the relative cost and of the unusable cells, per candidate.
  std::vector<std::vector<double>> cost(4, std::vector<double>(n + 1, 0));
  std::vector<std::vector<int>> missing(4, std::vector<int>(n + 1, 0));
  for (int c = 0; c < 4; ++c)
    for (std::size_t k = 0; k < n; ++k) {
      const bool ok = std::isfinite(t[c][k]);
      cost[c][k + 1] = cost[c][k] + (ok ? t[c][k] / best[k] : 0);
      missing[c][k + 1] = missing[c][k] + (ok ? 0 : 1);
    }
  auto span_ok = [&](int c, std::size_t i, std::size_t j) { return missing[c][j] - missing[c][i] == 0; };
  auto span_cost = [&](int c, std::size_t i, std::size_t j) { return cost[c][j] - cost[c][i]; };
  // Sizes [0, i1) one_shot_ll, [i1, i2) one_shot, [i2, i3) two_shot, [i3, n) nccl.
  double bc = 0;
  std::size_t b1 = 0, b2 = 0, b3 = 0;
  bool found = false;
  for (std::size_t i1 = 0; i1 <= n; ++i1) {
    if (!span_ok(0, 0, i1)) break;
    for (std::size_t i2 = i1; i2 <= n; ++i2) {
      if (!span_ok(1, i1, i2)) break;
      for (std::size_t i3 = i2; i3 <= n; ++i3) {
        if (!span_ok(2, i2, i3)) break;
        if (!span_ok(3, i3, n)) continue;
        const double c = span_cost(0, 0, i1) + span_cost(1, i1, i2) + span_cost(2, i2, i3) + span_cost(3, i3, n);
        if (!found || c < bc - 1e-9) { found = true; bc = c; b1 = i1; b2 = i2; b3 = i3; }
      }
    }
  }
  if (!found) {
    fit.why = "no table of auto's form (ll <= one <= two, NCCL above) uses only measured, correct cells";
    return fit;
  }
  for (std::size_t k = 0; k < n; ++k) {
    const int c = k < b1 ? 0 : k < b2 ? 1 : k < b3 ? 2 : 3;
    if (t[c][k] > best[k]) ++fit.off;
    fit.worst = std::max(fit.worst, t[c][k] / best[k]);
  }
  auto limit = [&](std::size_t i) { return i ? format_size(sizes[i - 1]) : std::string("0"); };
  fit.value = "ll=" + limit(b1) + ",one=" + limit(b2) + ",two=" + limit(b3);
  return fit;
}

// Peer copy bandwidth with the copy engine through a peer mapping (GB/s per direction):
//  uni:   rank 0 -> rank 1 alone;
//  bidir: every rank copies to its right neighbour at the same time (what an all-reduce does: at W = 2
//         each rank must send and receive the whole message), slowest rank's rate.
struct PeerCopy {
  double uni = 0, bidir = 0;
};
PeerCopy peer_copy_GBps(const Communicator& comm, cudaStream_t s) {
  PeerCopy pc;
  if (comm.world_size() < 2 || !comm.fast_path()) return pc;
  const std::size_t bytes = std::size_t(512) << 20;
  auto buf = SymmetricBuffer::allocate(comm, bytes);
  const int R = comm.rank(), W = comm.world_size();
  double uni = 0;
  if (R == 0) {
    const double us = time_eager_us(s, [&] { BENCH_CUDA(cudaMemcpyAsync(buf->peer(1), buf->local(), bytes, cudaMemcpyDeviceToDevice, s)); }, 1, 10, 2);
    uni = bytes / (us * 1e3);
  }
  comm.host_barrier();
  std::vector<double> all(W);
  comm.host_all_gather(&uni, all.data(), sizeof(double));
  pc.uni = all[0];
  // Simultaneous: each replay is preceded by a host barrier so the copies overlap.
  std::vector<double> samples;
  for (int r = 0; r < 7; ++r) {
    comm.host_barrier();
    const double us = time_eager_us(s, [&] { BENCH_CUDA(cudaMemcpyAsync(buf->peer((R + 1) % W), buf->local(), bytes, cudaMemcpyDeviceToDevice, s)); }, 1, 1, 0);
    samples.push_back(us);
  }
  double bi = bytes / (median(samples) * 1e3);
  comm.host_all_gather(&bi, all.data(), sizeof(double));
  pc.bidir = *std::min_element(all.begin(), all.end());
  return pc;
}

int run(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, a)) return 0;
  int rc = 0;
  if (relaunch_per_gpu("all_reduce", argc, argv, a.nproc, 0, &rc)) return rc;

  CommOptions opts;
  opts.two_shot_max_bytes = std::min<std::size_t>(std::max<std::size_t>(a.end, 1 << 20), std::size_t(64) << 20);
  opts.copy_engine_max_bytes = opts.two_shot_max_bytes;  // measure the pinned copy-engine path over the same range
  opts.lamport_max_bytes = a.lamport_max;
  auto comm = Communicator::from_env(opts);
  const int R = comm->rank(), W = comm->world_size();
  const bool lead = R == 0;
  cudaStream_t s;
  BENCH_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const std::size_t esize = dtype_size(a.dtype);

  std::string command = "tpcomm-bench";
  for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
  if (lead) {
    std::printf("all_reduce: %d ranks, %s, dtype %s, op %s, fast path %s%s\n", W, device_name(comm->device()).c_str(),
                dtype_name(a.dtype), reduce_op_name(a.op), comm->fast_path() ? "on" : "off: ",
                comm->fast_path() ? "" : comm->topology().reason.c_str());
    std::printf("reproduce: %s\n", command.c_str());
    std::fflush(stdout);
  }
  const PeerCopy pc = peer_copy_GBps(*comm, s);
  const double peer_gbps = pc.uni;
  if (lead)
    std::printf("peer copy (copy engine, 512 MiB): GPU0->GPU1 alone %.1f GB/s; all ranks at once %.1f GB/s per direction\n",
                pc.uni, pc.bidir);

  std::vector<std::size_t> sizes;
  for (double b = static_cast<double>(a.begin); b <= static_cast<double>(a.end) * 1.0001; b *= a.factor) {
    const std::size_t bytes = static_cast<std::size_t>(b) / esize * esize;
    if (bytes && (sizes.empty() || sizes.back() != bytes)) sizes.push_back(bytes);
  }
  const std::size_t max_bytes = sizes.empty() ? 0 : sizes.back();
  void *in = nullptr, *out = nullptr, *ref = nullptr, *ref_graph = nullptr;
  BENCH_CUDA(cudaMalloc(&in, max_bytes + 256));
  BENCH_CUDA(cudaMalloc(&out, max_bytes + 256));
  BENCH_CUDA(cudaMalloc(&ref, max_bytes + 256));
  if (a.check) BENCH_CUDA(cudaMalloc(&ref_graph, max_bytes + 256));
  // The exact reduction (float64 NCCL reduction of the inputs converted to float64) of the sweep input and of the
  // graph check's fresh input.
  double *exact = nullptr, *exact_graph = nullptr;
  const std::size_t max_count = max_bytes / esize;
  if (a.check) {
    BENCH_CUDA(cudaMalloc(&exact, max_count * sizeof(double) + 256));
    BENCH_CUDA(cudaMalloc(&exact_graph, max_count * sizeof(double) + 256));
  }
  const ncclRedOp_t nccl_op = a.op == ReduceOp::kSum ? ncclSum : a.op == ReduceOp::kMax ? ncclMax : ncclMin;
  auto exact_reduction = [&](double* dst, std::size_t count) {
    to_f64(in, count, a.dtype, dst, s);
    if (W > 1 && ncclAllReduce(dst, dst, count, ncclFloat64, nccl_op, comm->nccl(), s) != ncclSuccess) {
      std::fprintf(stderr, "all_reduce: float64 ncclAllReduce failed\n");
      std::exit(2);
    }
  };
  std::vector<Impl> impls;
  for (auto& n : a.impls) impls.push_back(make_impl(n));
  bool have_zc = false;
  for (auto& im : impls) have_zc = have_zc || im.zero_copy;
  if (have_zc && comm->fast_path()) register_buffer(*comm, in, max_bytes + 256);

  std::vector<std::string> rows;
  // table[mode][size][impl] = us; checked[mode][size][impl] = check state; ran_algo[size][impl] = algorithm run
  std::map<std::string, std::map<std::size_t, std::map<std::string, double>>> table;
  std::map<std::string, std::map<std::size_t, std::map<std::string, int>>> checked;
  std::map<std::size_t, std::map<std::string, std::string>> ran_algo;
  int failures = 0;
  // Compares `out` (written by the impl under test) with `expect` (NCCL on the same input): within tolerance
  // and bitwise equal across ranks; FP8-wire rows instead within fp8_wire_tolerance of `exact64` (the float64
  // reduction), and bitwise equal across ranks. Every row's error against `exact64` is measured. Collective (host
  // all-gathers): every rank calls it in the same order.
  auto verify = [&](const Impl& im, std::size_t bytes, std::size_t count, const void* expect, const double* exact64,
                    const char* mode) {
    comm->synchronize(s);
    const ExactError ee = error_vs_exact(out, exact64, count, a.dtype, s);
    const CompareResult cr = im.fp8_wire ? CompareResult{NAN, 0, ee.hash} : compare(out, expect, count, a.dtype, s);
    std::vector<uint64_t> hashes(W);
    comm->host_all_gather(&cr.hash, hashes.data(), sizeof(uint64_t));
    bool same = true;
    for (auto h : hashes) same = same && h == hashes[0];
    const double maxdiff = cr.max_abs_diff;
    bool ok = same && (im.fp8_wire ? std::isfinite(ee.max_abs) && ee.max_abs <= fp8_wire_tolerance(a.dtype, W, a.gather_fp8)
                                   : std::isfinite(maxdiff) && maxdiff <= tolerance(a.dtype, W));
    std::vector<int32_t> oks(W);
    const int32_t okv = ok ? 1 : 0;
    comm->host_all_gather(&okv, oks.data(), sizeof(int32_t));
    for (auto v : oks) ok = ok && v;
    if (!ok) {
      ++failures;
      if (lead)
        std::printf("CHECK FAILED (%s): %s %s: max |diff| vs NCCL %.3g, vs the exact reduction %.3g, ranks bitwise equal: %s\n",
                    mode, im.name.c_str(), format_size(bytes).c_str(), maxdiff, ee.max_abs, same ? "yes" : "no");
    }
    return CheckResult{ok ? 1 : 0, maxdiff, ee};
  };
  for (std::size_t bytes : sizes) {
    const std::size_t count = bytes / esize;
    const uint64_t seed = 0x1234ull * (R + 1) + bytes;
    fill_random(in, count, a.dtype, seed, s);
    BENCH_CUDA(cudaStreamSynchronize(s));
    if (a.check) {
      poison(ref, bytes, s);
      all_reduce(*comm, in, ref, count, a.dtype, a.op, s, {AllReduceAlgo::kNccl, false});
      exact_reduction(exact, count);
    }
    for (const Impl& im : impls) {
      AllReduceOptions o{im.algo, im.zero_copy};
      if (im.fp8_wire) {
        o.wire = AllReduceWire::kFp8;
        o.fp8_block = a.fp8_block;
        o.gather_wire = a.gather_fp8 ? AllReduceWire::kFp8 : AllReduceWire::kExact;
      }
      bool runnable = true;
      std::string ran = all_reduce_algo_name(im.algo);
      try {
        const AllReducePlan plan = plan_all_reduce(*comm, count, a.dtype, o);  // throws where a pinned row cannot run
        ran = std::string(all_reduce_algo_name(plan.algo)) + (plan.wire == AllReduceWire::kFp8 ? "+fp8" : "");
        if (im.zero_copy && !comm->fast_path()) runnable = false;
      } catch (const Error&) {
        runnable = false;
      }
      if (!runnable) continue;
      ran_algo[bytes][im.name] = ran;
      // Eager: one call on the sweep's input, before timing.
      CheckResult eager_check, graph_check;
      if (a.check) {
        poison(out, bytes, s);
        all_reduce(*comm, in, out, count, a.dtype, a.op, s, o);
        eager_check = verify(im, bytes, count, ref, exact, "eager");
      }
      // Graph: after the timed replays (outside the timed region), one more replay of the same instantiated
      // graph on fresh input with the output poisoned, against NCCL on that input; then the sweep's input is
      // restored for the eager timing and the next impls' eager checks.
      std::function<void(cudaGraphExec_t)> check_graph;
      if (a.check)
        check_graph = [&](cudaGraphExec_t exec) {
          fill_random(in, count, a.dtype, seed + 0x9E3779B97F4A7C15ull, s);
          poison(ref_graph, bytes, s);
          all_reduce(*comm, in, ref_graph, count, a.dtype, a.op, s, {AllReduceAlgo::kNccl, false});
          exact_reduction(exact_graph, count);
          poison(out, bytes, s);
          BENCH_CUDA(cudaGraphLaunch(exec, s));
          graph_check = verify(im, bytes, count, ref_graph, exact_graph, "graph");
          fill_random(in, count, a.dtype, seed, s);
          BENCH_CUDA(cudaStreamSynchronize(s));
        };
      const int iters = iters_for(bytes, a.quick);
      const int reps = a.quick ? 5 : 15;
      auto call = [&] { all_reduce(*comm, in, out, count, a.dtype, a.op, s, o); };
      for (const std::string& mode : a.modes) {
        comm->host_barrier();
        double us = mode == "graph" ? time_graph_us(s, call, iters, reps, {}, check_graph)
                                    : time_eager_us(s, call, iters, reps);
        comm->synchronize(s);
        std::vector<double> all(W);
        comm->host_all_gather(&us, all.data(), sizeof(double));
        us = *std::max_element(all.begin(), all.end());
        const CheckResult& chk = mode == "graph" ? graph_check : eager_check;
        table[mode][bytes][im.name] = us;
        checked[mode][bytes][im.name] = a.check ? chk.state : -1;
        const double algbw = bytes / (us * 1e3);
        const double busbw = algbw * 2.0 * (W - 1) / W;
        JsonObject r;
        r.add("suite", "all_reduce").add("impl", im.name).add("algo", ran).add("dtype", dtype_name(a.dtype));
        r.add("op", reduce_op_name(a.op)).add("bytes", bytes).add("mode", mode).add("us", us);
        r.add("algbw_GBps", algbw).add("busbw_GBps", busbw);
        r.add("wire", im.fp8_wire ? "fp8" : "exact");
        if (im.fp8_wire) r.add("fp8_block", a.fp8_block).add("gather_wire", a.gather_fp8 ? "fp8" : "exact");
        if (a.check && chk.state >= 0) {
          r.add("correct", chk.state == 1);
          if (std::isfinite(chk.maxdiff)) r.add("max_abs_diff_vs_nccl", chk.maxdiff);
          else r.add_raw("max_abs_diff_vs_nccl", "null");
          r.add("max_abs_err_vs_exact", chk.exact.max_abs).add("max_rel_err_vs_exact", chk.exact.max_rel);
          r.add("rms_rel_err_vs_exact", chk.exact.rms_rel);
        } else {
          r.add_raw("correct", "null");
        }
        rows.push_back(r.str());
      }
    }
    if (lead) {
      std::printf("  %8s done\n", format_size(bytes).c_str());
      std::fflush(stdout);
    }
  }
  comm->synchronize(s);

  std::string suggested;
  if (lead) {
    for (const std::string& mode : a.modes) {
      std::printf("\nall_reduce %s, %s, %d ranks: us = median (max over ranks); algbw = bytes / us; "
                  "busbw = algbw * 2(W-1)/W; vs nccl = nccl us / us\n",
                  mode.c_str(), dtype_name(a.dtype), W);
      std::printf("%9s  %-18s  %-11s %10s %11s %11s %8s %6s\n", "bytes", "impl", "algo", "us", "algbw GB/s",
                  "busbw GB/s", "vs nccl", "check");
      for (std::size_t bytes : sizes) {
        auto& row = table[mode][bytes];
        const double nc = row.count("nccl") ? row["nccl"] : NAN;
        for (auto& im : impls) {
          if (!row.count(im.name)) continue;  // not runnable at this size (workspace, no fast path)
          const double us = row[im.name];
          const double algbw = bytes / (us * 1e3);
          const double busbw = algbw * 2.0 * (W - 1) / W;
          char vs[32] = "-";
          if (std::isfinite(nc)) std::snprintf(vs, sizeof(vs), "%.2fx", nc / us);
          const int st = checked[mode][bytes][im.name];
          std::printf("%9s  %-18s  %-11s %10.2f %11.2f %11.2f %8s %6s\n", format_size(bytes).c_str(), im.name.c_str(),
                      ran_algo[bytes][im.name].c_str(), us, algbw, busbw, vs, st < 0 ? "-" : st ? "ok" : "FAIL");
        }
      }
    }
    // Fastest fast-path algorithm per size in graph mode: the data the auto table is tuned from.
    if (table.count("graph")) {
      std::printf("\nfastest per size (graph):");
      for (std::size_t bytes : sizes) {
        std::string best;
        double bu = 1e30;
        for (auto& [name, us] : table["graph"][bytes])  // exact algorithms only: what auto chooses among
          if (name != "tpcomm:auto" && name != "tpcomm:two_shot_fp8wire" && us < bu) { bu = us; best = name; }
        if (best.empty()) best = "-";
        std::printf(" %s=%s", format_size(bytes).c_str(), best.c_str());
      }
      std::printf("\n");
      // The FP8 wire against the exact two-shot (the same protocol with bf16/f16/f32 payloads) and the fastest exact row.
      bool have_fp8 = false;
      for (auto& im : impls) have_fp8 = have_fp8 || im.fp8_wire;
      if (have_fp8) {
        std::printf("two_shot_fp8wire (block %d, all-gather %s) speedup, graph: vs two_shot / vs fastest exact row:", a.fp8_block,
                    a.gather_fp8 ? "fp8" : dtype_name(a.dtype));
        for (std::size_t bytes : sizes) {
          auto& row = table["graph"][bytes];
          if (!row.count("tpcomm:two_shot_fp8wire")) continue;
          const double f = row["tpcomm:two_shot_fp8wire"];
          double best = 1e30;
          for (auto& [name, us] : row)
            if (name != "tpcomm:two_shot_fp8wire") best = std::min(best, us);
          char two[32] = "-";
          if (row.count("tpcomm:two_shot")) std::snprintf(two, sizeof(two), "%.2fx", row["tpcomm:two_shot"] / f);
          std::printf(" %s=%s/%.2fx", format_size(bytes).c_str(), two, best / f);
        }
        std::printf("\n");
      }
      // A table can only be fitted from a run that timed every algorithm auto chooses among.
      std::string missing;
      for (const char* need : {"tpcomm:one_shot_ll", "tpcomm:one_shot", "tpcomm:two_shot", "nccl"}) {
        bool have = false;
        for (auto& im : impls) have = have || im.name == need;
        if (!have) missing += std::string(missing.empty() ? "" : ", ") + need;
      }
      TableFit fit;
      if (!missing.empty()) fit.why = "this run did not time " + missing + " (run with the default --impls)";
      else fit = fit_auto_table(sizes, table["graph"], checked["graph"]);
      if (fit.value.empty()) {
        std::printf("no TPCOMM_AR_TABLE suggested: %s\n", fit.why.c_str());
      } else {
        suggested = fit.value;
        const CommOptions& ro = comm->options();
        std::printf("export TPCOMM_AR_TABLE=%s  # suggested for %d ranks from graph mode (fastest of one_shot_ll, one_shot, "
                    "two_shot, nccl per size%s); %d of %zu sizes off their fastest, worst %+.1f%%; limits above a "
                    "workspace (this run: ll %s, one %s, two %s) fall through\n",
                    fit.value.c_str(), W, a.check ? ", checked cells only" : "", fit.off, sizes.size(),
                    100.0 * (fit.worst - 1), format_size(ro.lamport_max_bytes).c_str(),
                    format_size(ro.one_shot_max_bytes).c_str(), format_size(ro.two_shot_max_bytes).c_str());
      }
    }
    const AllReduceTable& t = comm->impl().ar_table;
    JsonObject top;
    top.add("device", device_name(comm->device())).add("world_size", W).add("command", command);
    top.add("peer_copy_GBps", peer_gbps).add("peer_copy_bidir_GBps", pc.bidir).add("fast_path", comm->fast_path()).add("auto_table", t.source);
    int ncclv = 0;
    ncclGetVersion(&ncclv);
    top.add("nccl_version", ncclv).add("check", a.check).add("failures", failures);
    if (a.check)
      top.add("check_method", "eager: one call on the sweep input before timing; graph: one more replay of the timed "
                              "graph after timing, on fresh input with the output poisoned; both vs NCCL within "
                              "tolerance and bitwise equal across ranks (FP8-wire rows: vs the exact float64 reduction "
                              "within the e4m3 bound, and bitwise equal across ranks); every row's *_err_vs_exact "
                              "against the float64 reduction of the inputs (float64 ncclAllReduce): max |err|, that over "
                              "max |exact|, and the RMS relative error");
    if (suggested.empty()) top.add_raw("suggested_ar_table", "null");
    else top.add("suggested_ar_table", suggested);
    top.add_raw("results", json_array(rows));
    const std::string path = a.json.empty() ? a.out_dir + "/all_reduce.json" : a.json;
    if (write_file(path, top.str() + "\n")) std::printf("wrote %s\n", path.c_str());
    const CommStats st = comm->stats();
    std::printf("rank 0 calls: fast %llu, nccl %llu, nccl fallbacks %llu\n", (unsigned long long)st.fast_calls,
                (unsigned long long)st.nccl_calls, (unsigned long long)st.nccl_fallbacks);
  }
  comm->host_barrier();
  cudaFree(in);
  cudaFree(out);
  cudaFree(ref);
  if (ref_graph) cudaFree(ref_graph);
  if (exact) cudaFree(exact);
  if (exact_graph) cudaFree(exact_graph);
  cudaStreamDestroy(s);
  comm->destroy();
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace tpcomm::bench

static int run_all_reduce_suite(int argc, char** argv) {
  return tpcomm::bench::run_suite_guarded("all_reduce", tpcomm::bench::run, argc, argv);
}
TPCOMM_BENCH_SUITE("all_reduce", 10, "all-reduce sweep: tpcomm algorithms vs NCCL, eager and CUDA graph", run_all_reduce_suite);
