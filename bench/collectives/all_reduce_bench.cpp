// tpcomm-bench all_reduce: sweeps message sizes over every tpcomm algorithm and NCCL in the same run, in
// eager mode and inside CUDA graphs; measures the machine's peer-copy bandwidth in the same run.
//
//   tpcomm-bench all_reduce [-b 1K] [-e 256M] [-f 2] [--dtype bf16] [--op sum] [--impls auto,...]
//                           [--modes graph,eager] [--check|--no-check] [--out DIR | --json PATH] [--nproc N]
// Started without a launcher, it starts one process per local GPU itself (tpcomm-launch); under torchrun or
// mpirun it uses their ranks.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
      "    [--check|--no-check] [--quick] [--out DIR] [--json PATH] [--nproc N] [--lamport-max BYTES]\n");
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
    else if (k == "-h" || k == "--help") { usage(); return false; }
    // other suites' options (the default job passes one argument list to every suite) are ignored
  }
  if (a.quick) {
    a.begin = std::max<std::size_t>(a.begin, 8192);
    a.end = std::min<std::size_t>(a.end, std::size_t(4) << 20);
    a.factor = 4;
  }
  if (a.factor <= 1) a.factor = 2;
  return true;
}

Impl make_impl(const std::string& n) {
  if (n == "nccl") return {"nccl", AllReduceAlgo::kNccl, false};
  if (n == "one_shot_zc") return {"tpcomm:one_shot_zc", AllReduceAlgo::kOneShot, true};
  return {"tpcomm:" + n, parse_all_reduce_algo(n), false};
}

double tolerance(DType d, int world) {
  switch (d) {
    case DType::kBFloat16: return world * 1.6e-2;
    case DType::kFloat16: return world * 2e-3;
    default: return world * 1e-5;
  }
}

int iters_for(std::size_t bytes, bool quick) {
  if (quick) return 20;
  if (bytes <= (std::size_t(1) << 20)) return 100;
  if (bytes <= (std::size_t(16) << 20)) return 30;
  return 10;
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
  void *in = nullptr, *out = nullptr, *ref = nullptr;
  BENCH_CUDA(cudaMalloc(&in, max_bytes + 256));
  BENCH_CUDA(cudaMalloc(&out, max_bytes + 256));
  BENCH_CUDA(cudaMalloc(&ref, max_bytes + 256));
  std::vector<Impl> impls;
  for (auto& n : a.impls) impls.push_back(make_impl(n));
  bool have_zc = false;
  for (auto& im : impls) have_zc = have_zc || im.zero_copy;
  if (have_zc && comm->fast_path()) register_buffer(*comm, in, max_bytes + 256);

  std::vector<std::string> rows;
  // results[mode][size][impl] = us
  std::map<std::string, std::map<std::size_t, std::map<std::string, double>>> table;
  std::map<std::size_t, std::string> auto_algo;
  int failures = 0;
  for (std::size_t bytes : sizes) {
    const std::size_t count = bytes / esize;
    fill_random(in, count, a.dtype, 0x1234ull * (R + 1) + bytes, s);
    BENCH_CUDA(cudaStreamSynchronize(s));
    if (a.check) {
      poison(ref, bytes, s);
      all_reduce(*comm, in, ref, count, a.dtype, a.op, s, {AllReduceAlgo::kNccl, false});
    }
    for (const Impl& im : impls) {
      AllReduceOptions o{im.algo, im.zero_copy};
      bool runnable = true;
      std::string ran = all_reduce_algo_name(im.algo);
      try {
        ran = all_reduce_algo_name(resolve_all_reduce(*comm, bytes, im.algo));
        if (im.zero_copy && !comm->fast_path()) runnable = false;
      } catch (const Error&) {
        runnable = false;
      }
      if (!runnable) continue;
      if (im.algo == AllReduceAlgo::kAuto) auto_algo[bytes] = ran;
      bool correct = true;
      double maxdiff = 0;
      if (a.check) {
        poison(out, bytes, s);
        all_reduce(*comm, in, out, count, a.dtype, a.op, s, o);
        comm->synchronize(s);
        const CompareResult cr = compare(out, ref, count, a.dtype, s);
        std::vector<uint64_t> hashes(W);
        comm->host_all_gather(&cr.hash, hashes.data(), sizeof(uint64_t));
        bool same = true;
        for (auto h : hashes) same = same && h == hashes[0];
        maxdiff = cr.max_abs_diff;
        correct = same && std::isfinite(maxdiff) && maxdiff <= tolerance(a.dtype, W);
        std::vector<int32_t> oks(W);
        const int32_t okv = correct ? 1 : 0;
        comm->host_all_gather(&okv, oks.data(), sizeof(int32_t));
        for (auto v : oks) correct = correct && v;
        if (!correct) {
          ++failures;
          if (lead)
            std::printf("CHECK FAILED: %s %s: max |diff| vs NCCL %.3g, ranks bitwise equal: %s\n", im.name.c_str(),
                        format_size(bytes).c_str(), maxdiff, same ? "yes" : "no");
        }
      }
      const int iters = iters_for(bytes, a.quick);
      const int reps = a.quick ? 5 : 15;
      auto call = [&] { all_reduce(*comm, in, out, count, a.dtype, a.op, s, o); };
      for (const std::string& mode : a.modes) {
        comm->host_barrier();
        double us = mode == "graph" ? time_graph_us(s, call, iters, reps) : time_eager_us(s, call, iters, reps);
        comm->synchronize(s);
        std::vector<double> all(W);
        comm->host_all_gather(&us, all.data(), sizeof(double));
        us = *std::max_element(all.begin(), all.end());
        table[mode][bytes][im.name] = us;
        const double algbw = bytes / (us * 1e3);
        const double busbw = algbw * 2.0 * (W - 1) / W;
        JsonObject r;
        r.add("suite", "all_reduce").add("impl", im.name).add("algo", ran).add("dtype", dtype_name(a.dtype));
        r.add("op", reduce_op_name(a.op)).add("bytes", bytes).add("mode", mode).add("us", us);
        r.add("algbw_GBps", algbw).add("busbw_GBps", busbw);
        if (a.check) r.add("correct", correct).add("max_abs_diff_vs_nccl", maxdiff);
        else r.add_raw("correct", "null");
        rows.push_back(r.str());
      }
    }
    if (lead) {
      std::printf("  %8s done\n", format_size(bytes).c_str());
      std::fflush(stdout);
    }
  }
  comm->synchronize(s);

  if (lead) {
    for (const std::string& mode : a.modes) {
      std::printf("\nall_reduce %s, %s, %d ranks, median us (max over ranks); busbw = 2(W-1)/W * bytes / t\n",
                  mode.c_str(), dtype_name(a.dtype), W);
      std::printf("%9s", "bytes");
      for (auto& im : impls) std::printf(" %14s", im.name.c_str());
      std::printf(" %12s %11s %10s\n", "auto algo", "auto busbw", "vs nccl");
      for (std::size_t bytes : sizes) {
        auto& row = table[mode][bytes];
        std::printf("%9s", format_size(bytes).c_str());
        for (auto& im : impls) {
          if (row.count(im.name)) std::printf(" %14.2f", row[im.name]);
          else std::printf(" %14s", "-");
        }
        const double au = row.count("tpcomm:auto") ? row["tpcomm:auto"] : NAN;
        const double nc = row.count("nccl") ? row["nccl"] : NAN;
        std::printf(" %12s %9.1f GB/s %9.2fx\n", auto_algo[bytes].c_str(), bytes / (au * 1e3) * 2.0 * (W - 1) / W, nc / au);
      }
    }
    // Fastest fast-path algorithm per size in graph mode: the data the auto table is tuned from.
    if (table.count("graph")) {
      std::printf("\nfastest per size (graph):");
      for (std::size_t bytes : sizes) {
        std::string best;
        double bu = 1e30;
        for (auto& [name, us] : table["graph"][bytes])
          if (name != "tpcomm:auto" && us < bu) { bu = us; best = name; }
        std::printf(" %s=%s", format_size(bytes).c_str(), best.c_str());
      }
      std::printf("\n");
    }
    const AllReduceTable& t = comm->impl().ar_table;
    JsonObject top;
    top.add("device", device_name(comm->device())).add("world_size", W).add("command", command);
    top.add("peer_copy_GBps", peer_gbps).add("peer_copy_bidir_GBps", pc.bidir).add("fast_path", comm->fast_path()).add("auto_table", t.source);
    int ncclv = 0;
    ncclGetVersion(&ncclv);
    top.add("nccl_version", ncclv).add("check", a.check).add("failures", failures);
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
