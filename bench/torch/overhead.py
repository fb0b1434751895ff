"""What the PyTorch binding costs over the C++ call, for all-reduce (bf16 sum, algo auto):

  graph  per-call time of N back-to-back calls captured in one CUDA graph, replayed: the C++ entry point on raw pointers
         (tpcomm::all_reduce through the thin pybind call Communicator.all_reduce_ptr), the torch op
         torch.ops.tpcomm.all_reduce_out, and the functional tpcomm.all_reduce (output from the graph's pool). In a
         graph only GPU work remains, so a difference here is work the binding adds on the device (target: ~0, <= 1 us).
  eager  per-call host time of N calls in a loop (synchronized once at the end): the same three, plus
         torch.distributed.all_reduce (NCCL through ProcessGroupNCCL) for reference.

    torchrun --nproc-per-node 1 bench/torch/overhead.py            # one GPU (a 1-rank world)
    torchrun --nproc-per-node 2 bench/torch/overhead.py --out bench/results/<machine>/torch_overhead.json

Every timed call's result is checked once against the op's result on the same input (bitwise).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist

import tpcomm


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
    return int(s[:-1] if s[-1] in "KMG" else s) * mult


def graph_us(fn, n, reps):
    """Median per-call microseconds of `n` calls of fn() captured in one graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm-up outside capture
        s.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(n):
                fn()
        g.replay()
        s.synchronize()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(s)
            g.replay()
            b.record(s)
            b.synchronize()
            times.append(a.elapsed_time(b) * 1000.0 / n)
    torch.cuda.current_stream().wait_stream(s)
    return statistics.median(times)


def eager_us(fn, n, reps):
    """Median per-call host microseconds of `n` calls (the GPU finishes before the next repetition)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        times.append((t1 - t0) * 1e6 / n)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8K,64K,1M", help="message sizes in bytes (bf16), comma-separated")
    p.add_argument("--calls", type=int, default=100, help="calls per graph / eager loop")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=None, help="JSON path (rank 0 writes it)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("overhead.py: skipped: no CUDA device")
        return 77
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank = dist.get_rank()
    comm = tpcomm.init()
    name = comm.group_name
    rows = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        n = size // 2
        x = torch.randn(n, device="cuda").to(torch.bfloat16)
        out_cpp, out_op = torch.empty_like(x), torch.empty_like(x)

        def cpp():
            comm._c.all_reduce_ptr(x.data_ptr(), out_cpp.data_ptr(), n, "bf16", "sum",
                                   torch.cuda.current_stream().cuda_stream, "auto")

        def op():
            torch.ops.tpcomm.all_reduce_out(x, "sum", name, "auto", False, out_op)

        def functional():
            return tpcomm.all_reduce(x, comm)

        def nccl():
            dist.all_reduce(out_op)

        cpp(), op()
        torch.cuda.synchronize()
        correct = torch.equal(out_cpp, out_op) and torch.equal(functional(), out_op)
        row = {"bytes": size, "algo": comm.resolve_all_reduce(size), "correct": correct,
               "graph_us": {"cpp": graph_us(cpp, args.calls, args.reps), "op": graph_us(op, args.calls, args.reps),
                            "functional": graph_us(functional, args.calls, args.reps)},
               "eager_us": {"cpp": eager_us(cpp, args.calls, args.reps), "op": eager_us(op, args.calls, args.reps),
                            "functional": eager_us(functional, args.calls, args.reps),
                            "torch_nccl": eager_us(nccl, args.calls, args.reps)}}
        row["graph_overhead_us"] = row["graph_us"]["op"] - row["graph_us"]["cpp"]
        rows.append(row)
        if rank == 0:
            g, e = row["graph_us"], row["eager_us"]
            print(f"{size:>9} B {row['algo']:<12} graph: cpp {g['cpp']:7.2f} op {g['op']:7.2f} functional "
                  f"{g['functional']:7.2f} (op - cpp {row['graph_overhead_us']:+.2f}) us | eager: cpp {e['cpp']:7.2f} "
                  f"op {e['op']:7.2f} functional {e['functional']:7.2f} torch/NCCL {e['torch_nccl']:7.2f} us  "
                  f"{'ok' if correct else 'MISMATCH'}", flush=True)
    if rank == 0 and args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "world_size": dist.get_world_size(),
                       "device": torch.cuda.get_device_name(), "host": socket.gethostname(), "torch": torch.__version__,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, f, indent=2)
        print(f"wrote {args.out}")
    ok = all(r["correct"] for r in rows)
    tpcomm.shutdown()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
