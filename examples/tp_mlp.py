"""A tensor-parallel Llama-style MLP block (sequence parallel): gate/up column-parallel, down row-parallel,
forward + backward, three ways in one run, each checked against the unsharded torch MLP:

  vanilla   torch + NCCL: all-gather, matmul; matmul, reduce-scatter (torch.distributed functional collectives)
  symm_mem  torch's async TP: torch.ops.symm_mem.fused_all_gather_matmul / fused_matmul_reduce_scatter
  tpcomm    the same code with the namespace switched to torch.ops.tpcomm

    torchrun --nproc-per-node 2 examples/tp_mlp.py            # all three, step times, JSON
    python examples/tp_mlp.py --loopback 2                    # one GPU: tpcomm on a loopback world (correctness only)

Forward:  x_shard (T/W, H) -> [x (T, H) gathered] @ [W_gate_r^T, W_up_r^T] -> g, u (T, F/W) -> h = silu(g) * u
          -> reduce_scatter(h @ W_down_r^T) -> y_shard (T/W, H).
Backward: the mirror image: d(gate|up) -> one fused matmul + reduce-scatter for dx; dy_shard -> one fused all-gather +
          matmul for dh (the gathered dy also gives dW_down). Loss = sum over ranks of mean(y^2) terms, so every rank's
          weight-shard gradient is the gradient of the global loss.
Exits non-zero when a mode's loss or gradients differ from the unsharded reference.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time

import torch
import torch.nn.functional as F

TOL = 3e-2  # max |a - b| / max |b|: bf16 GEMMs whose K differs between sharded and unsharded math


# ---- the TP block, over an op namespace (torch.ops.symm_mem or torch.ops.tpcomm) ----------------------------------------
class GateUp(torch.autograd.Function):
    """g, u = all_gather(x_shard) @ W_gate^T, ... @ W_up^T (column parallel)."""

    @staticmethod
    def forward(ctx, x_shard, w_gate, w_up, ns, group):
        x, (g, u) = ns.fused_all_gather_matmul(x_shard, [w_gate.t(), w_up.t()], 0, group)
        ctx.save_for_backward(x, w_gate, w_up)
        ctx.ns, ctx.group = ns, group
        return g, u

    @staticmethod
    def backward(ctx, dg, du):
        x, w_gate, w_up = ctx.saved_tensors
        d = torch.cat([dg, du], dim=-1)
        dx_shard = ctx.ns.fused_matmul_reduce_scatter(d, torch.cat([w_gate, w_up], dim=0), "sum", 0, ctx.group)
        return dx_shard, dg.t() @ x, du.t() @ x, None, None


class Down(torch.autograd.Function):
    """y_shard = reduce_scatter(h @ W_down^T) (row parallel)."""

    @staticmethod
    def forward(ctx, h, w_down, ns, group):
        ctx.save_for_backward(h, w_down)
        ctx.ns, ctx.group = ns, group
        return ns.fused_matmul_reduce_scatter(h, w_down.t(), "sum", 0, group)

    @staticmethod
    def backward(ctx, dy_shard):
        h, w_down = ctx.saved_tensors
        dy, (dh,) = ctx.ns.fused_all_gather_matmul(dy_shard.contiguous(), [w_down], 0, ctx.group)
        return dh, dy.t() @ h, None, None


def mlp_fused(x_shard, w, ns, group):
    g, u = GateUp.apply(x_shard, w["gate"], w["up"], ns, group)
    return Down.apply(F.silu(g) * u, w["down"], ns, group)


def mlp_vanilla(x_shard, w, group):
    import torch.distributed._functional_collectives as funcol

    x = funcol.all_gather_tensor_autograd(x_shard, 0, group)
    h = F.silu(x @ w["gate"].t()) * (x @ w["up"].t())
    return funcol.reduce_scatter_tensor_autograd(h @ w["down"].t(), "sum", 0, group)


# ---- data and the unsharded reference ------------------------------------------------------------------------------------
def make_full(args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    T, H, Fd = args.tokens, args.hidden, args.ffn

    def rnd(*s, scale):
        return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=torch.bfloat16)

    return {"x": rnd(T, H, scale=1.0), "gate": rnd(Fd, H, scale=H ** -0.5), "up": rnd(Fd, H, scale=H ** -0.5),
            "down": rnd(H, Fd, scale=Fd ** -0.5)}


def shard_weights(w, rank, world):
    """Rank `rank`'s slices: gate/up rows (column parallel), down columns (row parallel)."""
    fs = w["gate"].shape[0] // world
    return {"gate": w["gate"][rank * fs:(rank + 1) * fs].contiguous(),
            "up": w["up"][rank * fs:(rank + 1) * fs].contiguous(),
            "down": w["down"][:, rank * fs:(rank + 1) * fs].contiguous()}


def shard(full, rank, world):
    ts = full["x"].shape[0] // world
    return {"x": full["x"][rank * ts:(rank + 1) * ts].contiguous(), **shard_weights(full, rank, world)}


def loss_of(y_part, T, H):
    return (y_part.float() ** 2).sum() / (T * H)


def reference(full):
    w = {k: v.detach().clone().requires_grad_() for k, v in full.items()}
    y = (F.silu(w["x"] @ w["gate"].t()) * (w["x"] @ w["up"].t())) @ w["down"].t()
    loss = loss_of(y, *full["x"].shape)
    loss.backward()
    return loss.item(), {k: w[k].grad for k in ("gate", "up", "down")}


def step(fn, local, T, H):
    w = {k: v.detach().clone().requires_grad_() for k, v in local.items()}
    y = fn(w["x"], w)
    loss = loss_of(y, T, H)
    loss.backward()
    return loss.detach(), {k: w[k].grad for k in ("gate", "up", "down")}


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def check(name, rank, world, loss, grads, ref_loss, ref_grads):
    """Errors of rank `rank`'s shard against the reference's slice; returns (max error, message)."""
    ref = shard_weights(ref_grads, rank, world)
    errs = {k: rel_err(grads[k], ref[k]) for k in ("gate", "up", "down")}
    errs["loss"] = abs(loss - ref_loss) / abs(ref_loss)
    worst = max(errs.values())
    return worst, f"{name} rank {rank}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())


def time_steps(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(times)


# ---- torchrun ----------------------------------------------------------------------------------------------------------
def run_torchrun(args):
    import torch.distributed as dist

    import tpcomm

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    name = group.group_name
    comm = tpcomm.init(group)
    full = make_full(args, torch.device("cuda", local))
    local_w = shard(full, rank, world)
    T, H = args.tokens, args.hidden
    ref_loss, ref_grads = reference(full)

    modes = {"vanilla": lambda x, w: mlp_vanilla(x, w, group),
             "tpcomm": lambda x, w: mlp_fused(x, w, torch.ops.tpcomm, name)}
    if not args.no_symm_mem:
        import torch.distributed._symmetric_memory as symm_mem

        symm_mem.enable_symm_mem_for_group(name)
        modes["symm_mem"] = lambda x, w: mlp_fused(x, w, torch.ops.symm_mem, name)

    results, ok = {}, True
    for mname, fn in modes.items():
        try:
            loss, grads = step(fn, local_w, T, H)
            total = loss.clone()
            dist.all_reduce(total)
            worst, msg = check(mname, rank, world, total.item(), grads, ref_loss, ref_grads)
            us = time_steps(lambda: step(fn, local_w, T, H), args.iters)
            results[mname] = {"loss": total.item(), "max_rel_err": worst, "correct": worst < TOL, "step_us": us}
            ok &= worst < TOL
            if rank == 0 or worst >= TOL:
                print(f"{msg}  step {us:.1f} us  {'ok' if worst < TOL else 'MISMATCH'}", flush=True)
        except Exception as e:  # a mode that cannot run here is reported, not hidden
            results[mname] = {"error": f"{type(e).__name__}: {e}"}
            ok &= mname != "tpcomm"
            print(f"{mname} rank {rank}: {type(e).__name__}: {e}", flush=True)
    flags = torch.tensor([int(ok)], device="cuda")
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    if rank == 0:
        write_json(args, {"world_size": world, "mode": "torchrun", "reference_loss": ref_loss, "results": results,
                          "tpcomm_stats": comm.stats(), "all_correct": bool(flags.item())})
    tpcomm.shutdown()
    dist.destroy_process_group()
    return 0 if flags.item() else 1


# ---- loopback (one GPU) ------------------------------------------------------------------------------------------------
def run_loopback(args):
    import tpcomm

    world = args.loopback
    comms = tpcomm.loopback_world(world)
    full = make_full(args, torch.device("cuda"))
    ref_loss, ref_grads = reference(full)
    T, H = args.tokens, args.hidden
    out = [None] * world

    def body(r):
        try:
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                # Backward runs on autograd's one worker thread per device, for every rank's graph: size the async-TP
                # workspace now (a collective) so no op there waits on the host for the other ranks.
                comms[r].reserve_async_tp(T * H * 2, T * H * 2)
                out[r] = step(lambda x, w: mlp_fused(x, w, torch.ops.tpcomm, comms[r].group_name),
                              shard(full, r, world), T, H)
            s.synchronize()
            comms[r].check()
        except BaseException as e:  # noqa: BLE001
            out[r] = e

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in out if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    total = sum(o[0].item() for o in out)
    worst_all, ok = 0.0, True
    for r, (_, grads) in enumerate(out):
        worst, msg = check("tpcomm(loopback)", r, world, total, grads, ref_loss, ref_grads)
        print(f"{msg}  {'ok' if worst < TOL else 'MISMATCH'}", flush=True)
        worst_all, ok = max(worst_all, worst), ok and worst < TOL
    write_json(args, {"world_size": world, "mode": "loopback (correctness only: every rank on one GPU)",
                      "reference_loss": ref_loss, "results": {"tpcomm": {"loss": total, "max_rel_err": worst_all,
                                                                         "correct": ok}},
                      "all_correct": ok})
    return 0 if ok else 1


def write_json(args, payload):
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "results", "local",
                                    "tp_mlp.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload.update({"command": " ".join(sys.argv), "tokens": args.tokens, "hidden": args.hidden, "ffn": args.ffn,
                    "device": torch.cuda.get_device_name(), "host": socket.gethostname(),
                    "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {os.path.normpath(path)}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loopback", type=int, default=0, help="run W ranks on one GPU (tpcomm only, no timing)")
    p.add_argument("--tokens", type=int, default=None, help="T (default 4096; 1024 with --loopback)")
    p.add_argument("--hidden", type=int, default=None, help="H (default 4096; 1024 with --loopback)")
    p.add_argument("--ffn", type=int, default=None, help="F (default 14336; 4096 with --loopback)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per mode")
    p.add_argument("--no-symm-mem", action="store_true", help="skip torch's symm_mem async TP")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/local/tp_mlp.json)")
    args = p.parse_args()
    small = bool(args.loopback)
    args.tokens = args.tokens or (1024 if small else 4096)
    args.hidden = args.hidden or (1024 if small else 4096)
    args.ffn = args.ffn or (4096 if small else 14336)
    if not torch.cuda.is_available():
        print("tp_mlp: skipped: no CUDA device", flush=True)
        return 77
    return run_loopback(args) if args.loopback else run_torchrun(args)


if __name__ == "__main__":
    sys.exit(main())
