"""One rank of the torchrun GPU test (test_gpu_dist.py runs it with 1 and, when there are 2 GPUs, 2 processes):
communicators from process groups (the NCCL group's comm adopted, a gloo group's made by tpcomm), every op against a
reference and against torch.ops.symm_mem on the same inputs, results bitwise identical across ranks, opcheck, CUDA-graph
capture + replay on fresh input, symmetric memory across processes. Prints "tpcomm dist worker: ok" on success."""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpcomm  # noqa: E402
from _ranks import rank_randn  # noqa: E402

BF16 = torch.bfloat16


def all_gathered(t):
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def same_on_every_rank(t):
    return all(torch.equal(t, o) for o in all_gathered(t))


def main():
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, W = dist.get_rank(), dist.get_world_size()
    comm = tpcomm.init()
    assert comm.owner == "torch", comm  # the eager (device_id) NCCL comm exists on every rank: adopted
    assert comm.rank == rank and comm.world_size == W and tpcomm.init() is comm
    gloo = dist.new_group(backend="gloo")
    comm2 = tpcomm.init(gloo, device=local)
    assert comm2.owner == "tpcomm" and comm2.world_size == W, comm2  # no NCCL comm there: tpcomm made its own
    name = comm.group_name

    # all-reduce: exact against the fp32 rank-order reference, bitwise equal across ranks
    for numel in (1000, 1 << 20):
        x = rank_randn(rank, numel, seed=numel)
        xs = all_gathered(x)
        ref = xs[0].float()
        for o in xs[1:]:
            ref = ref + o.float()
        for algo in ("auto", "one_shot_ll", "one_shot", "two_shot", "nccl"):
            if W == 1 and algo == "nccl":
                continue
            y = tpcomm.all_reduce(x, comm, algo)
            assert same_on_every_rank(y), algo
            if algo != "nccl":
                assert torch.equal(y, ref.to(BF16)), algo
            else:
                torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=1e-2)
        y2 = tpcomm.all_reduce(x, comm2)
        assert torch.equal(y2, tpcomm.all_reduce(x, comm))

    # async TP against torch.ops.symm_mem (same inputs, same semantics) and the float64 reference
    import torch.distributed._symmetric_memory as symm_mem

    symm_mem.enable_symm_mem_for_group(name)
    M, K, N = 512, 1024, 768
    a = rank_randn(rank, M, K, seed=1)
    w_up = rank_randn(0, N, K, seed=2) / 32  # (N, K) weights, used transposed as torch does
    A_ref, [o_ref] = torch.ops.symm_mem.fused_all_gather_matmul(a, [w_up.t()], 0, name)
    A, [o] = tpcomm.ops.fused_all_gather_matmul(a, [w_up.t()], 0, name)
    assert torch.equal(A, A_ref)
    torch.testing.assert_close(o.float(), o_ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(o.double(), A.double() @ w_up.t().double(), atol=2e-2, rtol=2e-2)
    h = rank_randn(rank, M * W, K, seed=3)
    w_down = rank_randn(rank, K, K, seed=4) / 32
    rs_ref = torch.ops.symm_mem.fused_matmul_reduce_scatter(h, w_down, "sum", 0, name)
    rs = tpcomm.ops.fused_matmul_reduce_scatter(h, w_down, "sum", 0, name)
    torch.testing.assert_close(rs.float(), rs_ref.float(), atol=5e-2, rtol=2e-2)

    # opcheck (schema, fake tensor, autograd registration, AOT dispatch) with real CUDA tensors
    from torch.library import opcheck

    opcheck(torch.ops.tpcomm.all_reduce.default, (rank_randn(rank, 4096, seed=5), "sum", name))
    opcheck(torch.ops.tpcomm.all_reduce_.default, (rank_randn(rank, 4096, seed=5), "sum", name))
    opcheck(torch.ops.tpcomm.fused_all_gather_matmul.default, (a, [w_up.t()], 0, name))
    opcheck(torch.ops.tpcomm.fused_matmul_reduce_scatter.default, (h, w_down, "sum", 0, name))

    # CUDA graph: capture once, replay on fresh input
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        x = rank_randn(rank, 8192, seed=6)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            y = tpcomm.all_reduce(x, comm)
            _, [og] = tpcomm.ops.fused_all_gather_matmul(a, [w_up.t()], 0, name)
        for it in range(3):
            x.copy_(rank_randn(rank, 8192, seed=10 + it))
            a.copy_(rank_randn(rank, M, K, seed=20 + it))
            g.replay()
            xs = all_gathered(x)
            ref = xs[0].float()
            for t in xs[1:]:
                ref = ref + t.float()
            assert torch.equal(y, ref.to(BF16))
            A_full = torch.cat(all_gathered(a))
            torch.testing.assert_close(og.double(), A_full.double() @ w_up.t().double(), atol=2e-2, rtol=2e-2)
    torch.cuda.current_stream().wait_stream(s)

    # symmetric memory across processes
    t = tpcomm.symm.empty(1024, dtype=torch.float32)
    hd = tpcomm.symm.rendezvous(t, dist.group.WORLD)
    t.copy_(rank_randn(rank, 1024, dtype=torch.float32, seed=30))
    hd.barrier()
    for p in range(W):
        assert torch.equal(hd.get_buffer(p, (1024,), torch.float32), rank_randn(p, 1024, dtype=torch.float32, seed=30))
    hd.barrier(channel=1)
    assert torch.all(hd.get_signal_pad(rank) == 0)
    comm.synchronize()
    print(f"rank {rank}: stats {comm.stats()}", flush=True)

    tpcomm.shutdown()  # before the process group: tpcomm adopted its NCCL communicator
    dist.destroy_process_group()
    print("tpcomm dist worker: ok", flush=True)


if __name__ == "__main__":
    main()
