#!/usr/bin/env python3
"""PyTorch's fused async-TP ops, timed the way `tpcomm-bench ag_gemm` / `gemm_rs` time tpcomm's, on the same GPUs
and shapes. tpcomm-bench starts this script itself (one process per GPU, through torch.distributed.run) and merges
the rows it writes into its own async_tp.json; it can also be run by hand:

  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  python -m torch.distributed.run --standalone --nproc-per-node 2 bench/async_tp/torch_symm_mem.py \
      --suite ag_gemm --shapes 4096x8192x3584 --dtypes bf16,fp8_rowwise --out /tmp/torch_rows.jsonl

Ops (torch.ops.symm_mem): fused_all_gather_matmul (bf16, return_A=False: tpcomm's call does not return the gathered
A either), fused_all_gather_scaled_matmul (FP8), fused_matmul_reduce_scatter (bf16), fused_scaled_matmul_reduce_scatter
(FP8), as in the anchors' script (shared/reference/anchors/anchors2.py): A_shard (M/W, K) @ B (K, N) for AG,
A (M, K/W) @ B (K/W, N) scattered to (M/W, N) for RS, B the transposed (N, K) weight (--b-layout nk) or a (K, N)
row-major matrix (kn, bf16 only), FP8 e4m3 with use_fast_accum as given (off for blockwise scales).

Timing: CUDA-graph medians (a graph of `iters` back-to-back calls replayed `reps` times; median replay time / iters)
and eager medians (`reps` samples of `iters` calls between two events); max over ranks.
Check: every cell against the unfused path on the same inputs (all_gather_into_tensor + mm / _scaled_mm;
mm / _scaled_mm in fp32 + reduce_scatter_tensor; no fast accumulation), ||out - ref|| / ||ref|| <= --tol
(--tol-fast-accum for FP8 cells with fast accumulation); AG outputs bitwise equal across
ranks (B is the same on every rank); RS outputs bitwise equal from one call to the next; the graph is checked by one
more replay on fresh inputs with its output poisoned (NaN). Eager outputs are allocated by the op (no out= argument),
so they cannot be poisoned. A cell the op cannot run (e.g. blockwise FP8 scales, which torch's scale-mode detection
rejects) is a row with "skipped": the exception.
Output: one JSON object per line (rank 0), the same row schema as tpcomm-bench's.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

FP8_MAX = 448.0


# ---- FP8 quantization (e4m3, dequantization scales: x ~= q * scale) ----------------------------------------


def quant_tensor(x, amax):
    import torch
    s = FP8_MAX / amax.clamp(min=1e-12)
    return (x.float() * s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), (1.0 / s).float().reshape(())


def quant_rows(x):  # one scale per row of x (rows, cols)
    import torch
    amax = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    s = FP8_MAX / amax
    return (x.float() * s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), (1.0 / s).float()


def quant_blocks(x, br):  # (br x 128) blocks of x (rows, cols): scales (ceil(rows/br), cols/128) row-major
    import torch
    r, c = x.shape
    rp = (r + br - 1) // br * br
    xp = torch.zeros(rp, c, dtype=torch.float32, device=x.device)
    xp[:r] = x.float()
    blk = xp.view(rp // br, br, c // 128, 128)
    amax = blk.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    s = FP8_MAX / amax
    q = (blk * s).clamp(-FP8_MAX, FP8_MAX).view(rp, c)[:r].to(torch.float8_e4m3fn)
    return q, (1.0 / s).view(rp // br, c // 128)


def outer_major(t):  # same values, strides (1, rows): the layout _scaled_mm wants for blockwise scales
    return t.t().contiguous().t()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["ag_gemm", "gemm_rs"], required=True)
    p.add_argument("--shapes", default="1024x8192x3584,2048x8192x3584,4096x8192x3584,8192x8192x14336,4096x5120x8192")
    p.add_argument("--dtypes", default="bf16,fp8_tensorwise,fp8_rowwise,fp8_blockwise")
    p.add_argument("--modes", default="graph,eager")
    p.add_argument("--b-layout", choices=["nk", "kn"], default="nk")
    p.add_argument("--fast-accum", type=int, default=1)
    p.add_argument("--check", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-2)
    p.add_argument("--tol-fast-accum", type=float, default=3e-2,
                   help="bound for FP8 cells with fast accumulation (the reference never uses it)")
    p.add_argument("--iters", type=int, default=0, help="calls per sample (0: ~5 ms per sample, 3..20)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", required=True, help="JSON-lines file written by rank 0")
    return p.parse_args()


def parse_shape(s):
    m, k, n = (int(v) for v in s.lower().split("x"))
    return m, k, n


def main():
    args = parse_args()
    import torch
    import torch.distributed as dist
    from datetime import timedelta

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", timeout=timedelta(seconds=180), device_id=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    import torch.distributed._symmetric_memory as symm_mem

    group = dist.group.WORLD
    gname = group.group_name
    symm_mem.enable_symm_mem_for_group(gname)
    rows = []
    meta = {"torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "device": torch.cuda.get_device_name(dev)}

    def log(*a):
        if rank == 0:
            print("torch_symm_mem:", *a, flush=True)

    def max_over_ranks(v):
        t = torch.tensor([v], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def all_true(b):
        t = torch.tensor([0 if b else 1], dtype=torch.int32, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item()) == 0

    def rel_err(out, ref):
        o, r = out.float(), ref.float()
        if not torch.isfinite(o).all():
            return math.inf
        den = torch.linalg.vector_norm(r).item()
        num = torch.linalg.vector_norm(o - r).item()
        return num / den if den > 0 else (0.0 if num == 0 else math.inf)

    def same_on_all_ranks(t):
        ref = t.clone()
        dist.broadcast(ref, src=0)
        return all_true(torch.equal(ref.view(torch.int16), t.view(torch.int16)))

    def pick_iters(fn):
        if args.iters > 0:
            return args.iters
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        us = max_over_ranks(e0.elapsed_time(e1) * 1000.0)
        return int(min(20, max(3, math.ceil(5000.0 / max(us, 1.0)))))

    def time_eager(fn, iters):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        dist.barrier()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ts = []
        for _ in range(args.reps):
            e0.record()
            for _ in range(iters):
                fn()
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) * 1000.0 / iters)
        return max_over_ranks(statistics.median(ts))

    def time_graph(fn, iters):
        """Returns (us, graph, static output of the last captured call)."""
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=s):
                for _ in range(iters):
                    last = fn()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        dist.barrier()
        g.replay()
        torch.cuda.synchronize()
        dist.barrier()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ts = []
        for _ in range(args.reps):
            e0.record()
            g.replay()
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) * 1000.0 / iters)
        return max_over_ranks(statistics.median(ts)), g, last

    F8 = torch.float8_e4m3fn

    def make_inputs(suite, M, K, N, dtype, seed):
        """Returns a dict of this rank's tensors: a, b (the op's operands), sa, sb (scales or None)."""
        g = torch.Generator(device=dev)
        W = world
        if suite == "ag_gemm":
            g.manual_seed(seed * 1000 + 17 * (rank + 1))
            a = torch.rand(M // W, K, generator=g, device=dev) * 2 - 1
            g.manual_seed(seed * 1000 + 999)  # the same B on every rank
            w = torch.rand(N, K, generator=g, device=dev) * 2 - 1
        else:
            k = K // W
            g.manual_seed(seed * 1000 + 17 * (rank + 1))
            a = torch.rand(M, k, generator=g, device=dev) * 2 - 1
            g.manual_seed(seed * 1000 + 31 * (rank + 1) + 5)
            w = torch.rand(N, k, generator=g, device=dev) * 2 - 1
        a = a.to(torch.bfloat16)
        w = w.to(torch.bfloat16)
        if dtype == "bf16":
            b = w.t() if args.b_layout == "nk" else w.t().contiguous()
            return {"a": a, "b": b, "sa": None, "sb": None}
        if dtype == "fp8_tensorwise":
            amax = a.float().abs().amax()
            if suite == "ag_gemm":  # one scale for the whole gathered A
                dist.all_reduce(amax, op=dist.ReduceOp.MAX)
            aq, sa = quant_tensor(a, amax)
            wq, sb = quant_tensor(w, w.float().abs().amax())
        elif dtype == "fp8_rowwise":
            aq, sa = quant_rows(a)                   # (rows, 1)
            wq, swr = quant_rows(w)                  # (N, 1)
            sb = swr.view(1, -1).contiguous()        # (1, N)
        elif dtype == "fp8_blockwise":
            aq, sa_rm = quant_blocks(a, 1)           # (rows, K/128)
            sa = outer_major(sa_rm)
            wq, sw = quant_blocks(w, 128)            # (N/128, K/128)
            sb = sw.t()                              # (K/128, N/128), strides (1, K/128)
        else:
            raise ValueError("dtype " + dtype)
        return {"a": aq, "b": wq.t(), "sa": sa, "sb": sb}

    def fast_accum(dtype):
        return bool(args.fast_accum) and dtype != "fp8_blockwise"

    def op_fn(suite, M, K, N, dtype, t):
        fa = fast_accum(dtype)
        if suite == "ag_gemm":
            if dtype == "bf16":
                return lambda: torch.ops.symm_mem.fused_all_gather_matmul(t["a"], [t["b"]], 0, gname, return_A=False)[1][0]
            return lambda: torch.ops.symm_mem.fused_all_gather_scaled_matmul(
                t["a"], [t["b"]], t["sa"], [t["sb"]], 0, gname, [None], [None], [torch.bfloat16], [fa])[1][0]
        if dtype == "bf16":
            return lambda: torch.ops.symm_mem.fused_matmul_reduce_scatter(t["a"], t["b"], "sum", 0, gname)
        return lambda: torch.ops.symm_mem.fused_scaled_matmul_reduce_scatter(
            t["a"], t["b"], t["sa"], t["sb"], "sum", 0, 0, gname, [M, N], None, None, torch.bfloat16, fa)

    def cell_tol(dtype):
        return max(args.tol, args.tol_fast_accum) if fast_accum(dtype) else args.tol

    def reference(suite, M, K, N, dtype, t):
        """The unfused path on the same inputs, without fast accumulation."""
        fa = False
        W = world
        if suite == "ag_gemm":
            a = t["a"]
            ag = torch.empty(M, K, dtype=a.dtype, device=dev)
            dist.all_gather_into_tensor(ag.view(torch.uint8) if a.dtype == F8 else ag,
                                        a.view(torch.uint8) if a.dtype == F8 else a)
            if dtype == "bf16":
                return ag @ t["b"]
            sa = t["sa"]
            if dtype == "fp8_rowwise":
                sag = torch.empty(M, 1, dtype=torch.float32, device=dev)
                dist.all_gather_into_tensor(sag, sa.contiguous())
            elif dtype == "fp8_blockwise":
                parts = [torch.empty_like(sa.contiguous()) for _ in range(W)]
                dist.all_gather(parts, sa.contiguous())
                sag = outer_major(torch.cat(parts, 0))
            else:
                sag = sa
            return torch._scaled_mm(ag, t["b"], sag, t["sb"], out_dtype=torch.bfloat16, use_fast_accum=fa)
        if dtype == "bf16":
            c = t["a"].float() @ t["b"].float()
        else:
            c = torch._scaled_mm(t["a"], t["b"], t["sa"], t["sb"], out_dtype=torch.float32, use_fast_accum=fa)
        o = torch.empty(M // W, N, dtype=torch.float32, device=dev)
        dist.reduce_scatter_tensor(o, c.contiguous())
        return o.to(torch.bfloat16)

    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    modes = [m for m in args.modes.split(",") if m]
    log(f"{args.suite}: torch {meta['torch']}, NCCL {meta['nccl']}, {world} ranks, {meta['device']}")

    def row(M, K, N, dtype, mode, **kw):
        r = {"suite": args.suite, "impl": "torch_symm_mem", "dtype": dtype, "M": M, "K": K, "N": N, "world": world,
             "loopback": False, "mode": mode}
        r.update(kw)
        r.setdefault("us", None)
        r.setdefault("correct", None)
        r["torch"] = meta["torch"]
        return r

    for (M, K, N) in shapes:
        for dtype in dtypes:
            if M % world or K % world:
                for mode in modes:
                    rows.append(row(M, K, N, dtype, mode, skipped=f"M and K must be divisible by the world size {world}"))
                continue
            if dtype != "bf16" and args.b_layout == "kn":
                for mode in modes:
                    rows.append(row(M, K, N, dtype, mode, skipped="FP8 needs B as the (N, K) weight (--b-layout nk)"))
                continue
            try:
                t = make_inputs(args.suite, M, K, N, dtype, seed=1)
                fn = op_fn(args.suite, M, K, N, dtype, t)
                checks = {}
                ok_eager, rel_eager = None, None
                if args.check:
                    ref = reference(args.suite, M, K, N, dtype, t)
                    o1 = fn().clone()
                    o2 = fn()
                    torch.cuda.synchronize()
                    rel_eager = max_over_ranks(rel_err(o1, ref))
                    stable = all_true(torch.equal(o1.view(torch.int16), o2.view(torch.int16)))
                    cross = same_on_all_ranks(o1) if args.suite == "ag_gemm" else True
                    ok_eager = rel_eager <= cell_tol(dtype) and stable and cross
                    checks["eager"] = (ok_eager, rel_eager, stable, cross)
                    del o1, o2, ref
                iters = pick_iters(fn)
                for mode in modes:
                    extra = {"iters": iters, "reps": args.reps, "fast_accum": fast_accum(dtype),
                             "b_layout": args.b_layout, "tol": cell_tol(dtype)}
                    if mode == "graph":
                        us, g, static_out = time_graph(fn, iters)
                        if args.check:
                            # Fresh inputs into the captured tensors, output poisoned, one replay.
                            t2 = make_inputs(args.suite, M, K, N, dtype, seed=2)
                            for key in ("a", "b", "sa", "sb"):
                                if t[key] is not None:
                                    t[key].copy_(t2[key])
                            ref2 = reference(args.suite, M, K, N, dtype, t)
                            static_out.fill_(float("nan"))
                            g.replay()
                            torch.cuda.synchronize()
                            rel = max_over_ranks(rel_err(static_out, ref2))
                            cross = same_on_all_ranks(static_out) if args.suite == "ag_gemm" else True
                            ok = rel <= cell_tol(dtype) and cross
                            extra.update(rel_err=rel, correct=ok)
                            if not ok:
                                extra["check_detail"] = f"graph replay: rel {rel:.3g}, equal across ranks {cross}"
                            t3 = make_inputs(args.suite, M, K, N, dtype, seed=1)
                            for key in ("a", "b", "sa", "sb"):
                                if t[key] is not None:
                                    t[key].copy_(t3[key])
                            del t2, t3, ref2
                        del g, static_out
                    else:
                        us = time_eager(fn, iters)
                        if args.check:
                            ok, rel, stable, cross = checks["eager"]
                            extra.update(rel_err=rel, correct=ok)
                            if not ok:
                                extra["check_detail"] = (f"eager: rel {rel:.3g}, run-to-run equal {stable}, "
                                                         f"equal across ranks {cross}")
                    rows.append(row(M, K, N, dtype, mode, us=us, **extra))
                    log(f"{M}x{K}x{N} {dtype} {mode}: {us:.1f} us" +
                        ("" if not args.check else f", rel {extra.get('rel_err'):.3g} {'ok' if extra.get('correct') else 'FAIL'}"))
                del t, fn
            except Exception as e:  # the op cannot run this cell: a row that says why
                reason = f"{type(e).__name__}: {e}".strip().replace("\n", " ")[:400]
                log(f"{M}x{K}x{N} {dtype}: skipped: {reason}")
                if os.environ.get("TPCOMM_TORCH_BENCH_TRACEBACK"):
                    traceback.print_exc()
                for mode in modes:
                    rows.append(row(M, K, N, dtype, mode, skipped=reason))
                torch.cuda.synchronize()
            torch.cuda.empty_cache()
            dist.barrier()

    def finite(r):  # JSON has no Infinity / NaN: write null
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}

    if rank == 0:
        with open(args.out, "w") as fh:
            fh.write(json.dumps({"meta": meta}) + "\n")
            for r in rows:
                fh.write(json.dumps(finite(r)) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
