"""GPU tests on a loopback world (W ranks on one GPU, one thread per rank): every op against a float64/fp32 reference and
against the C++ call on the same inputs, results bitwise identical across ranks, CUDA-graph capture + replay on fresh
input, symmetric memory, signals and a timeout that names the missing rank. Inputs are fresh random data; outputs are
poisoned first (NaN) where the op writes into a caller's tensor."""

import pytest
import torch

from conftest import gpu_count

pytestmark = pytest.mark.skipif(gpu_count() < 1, reason="no CUDA device")

import tpcomm  # noqa: E402
from _ranks import rank_randn, run_ranks  # noqa: E402

W = 2
BF16, F8 = torch.bfloat16, torch.float8_e4m3fn


@pytest.fixture(scope="module")
def world():
    comms = tpcomm.loopback_world(W)
    yield comms
    for c in comms:
        c.synchronize()


def sum_ref(xs, op="sum"):
    """fp32 accumulation in rank order 0..W-1, rounded once (tpcomm's all-reduce numerics)."""
    acc = xs[0].float()
    for x in xs[1:]:
        acc = acc + x.float() if op == "sum" else torch.maximum(acc, x.float()) if op == "max" else torch.minimum(acc, x.float())
    return acc.to(xs[0].dtype)


def test_world(world):
    assert [c.rank for c in world] == list(range(W))
    assert all(c.world_size == W and c.loopback and c.owner == "loopback" for c in world)
    assert len({c.group_name for c in world}) == W


@pytest.mark.parametrize("algo", ["auto", "one_shot_ll", "one_shot", "two_shot"])
@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("numel", [1000, 1 << 18])
def test_all_reduce(world, algo, dtype, numel):
    xs = [rank_randn(r, numel, dtype=dtype, seed=numel) for r in range(W)]

    def fn(r, c):
        x = xs[r]
        functional = tpcomm.all_reduce(x, c, algo)
        out = torch.full_like(x, float("nan"))
        tpcomm.all_reduce(x, c, algo, out=out)
        inplace = x.clone()
        tpcomm.all_reduce_(inplace, c, algo)
        mx = tpcomm.all_reduce(x, c.group_name, algo, op="max")
        # the C++ call on the same input (raw pointers, same stream)
        cpp = torch.full_like(x, float("nan"))
        c._c.all_reduce_ptr(x.data_ptr(), cpp.data_ptr(), x.numel(), "bf16" if dtype == BF16 else "f32", "sum",
                            torch.cuda.current_stream().cuda_stream, algo)
        return functional, out, inplace, mx, cpp

    res = run_ranks(world, fn)
    ref, ref_max = sum_ref(xs), sum_ref(xs, "max")
    for functional, out, inplace, mx, cpp in res:
        for t in (functional, out, inplace, cpp):
            assert torch.equal(t, ref)
        assert torch.equal(mx, ref_max)
    assert all(torch.equal(res[0][0], r[0]) for r in res)  # bitwise identical on every rank


def test_all_reduce_error_crosses_the_dispatcher(world):
    x = torch.ones(16, dtype=torch.int64, device=world[0].device)
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: input: dtype Long has no tpcomm"):
        tpcomm.all_reduce(x, world[0])
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: algo: unknown"):
        tpcomm.all_reduce(torch.ones(16, device=world[0].device), world[0], "fastest")
    with pytest.raises(RuntimeError, match="^invalid_argument: input: dtype Long"):  # torch.ops directly: same message
        torch.ops.tpcomm.all_reduce(x, "sum", world[0].group_name)


def gathered(shards, dim):
    return torch.cat(shards, dim=dim)


@pytest.mark.parametrize("engine", ["auto", "decomposed", "native", "unfused"])
@pytest.mark.parametrize("shape,gather_dim", [((256, 512), 0), ((2, 128, 512), 1)])
def test_fused_all_gather_matmul(world, engine, shape, gather_dim):
    if engine == "native" and gather_dim != 0:
        pytest.skip("the native engine gathers rows (dim 0 of a 2-D shard)")
    shards = [rank_randn(r, *shape, seed=7) for r in range(W)]
    B1 = rank_randn(0, shape[-1], 384, seed=8) / 16
    B2 = rank_randn(0, 256, shape[-1], seed=9).t() / 16  # the (N, K) weight layout
    A_full = gathered(shards, gather_dim)
    refs = [(A_full.double() @ B.double()) for B in (B1, B2)]

    def fn(r, c):
        a, outs = tpcomm.ops.fused_all_gather_matmul(shards[r], [B1, B2], gather_dim, c.group_name, engine=engine)
        _, outs2 = torch.ops.tpcomm.fused_all_gather_matmul(shards[r], [B1], gather_dim, c.group_name,
                                                            return_A=False, engine=engine)
        return a, outs, outs2

    for a, outs, outs2 in run_ranks(world, fn):
        assert torch.equal(a, A_full)
        for o, ref in zip(outs, refs):
            assert o.shape == ref.shape and o.dtype == BF16
            torch.testing.assert_close(o.double(), ref, atol=2e-2, rtol=2e-2)
        assert torch.equal(outs2[0], outs[0])


@pytest.mark.parametrize("engine", ["auto", "decomposed", "unfused"])
@pytest.mark.parametrize("shape,scatter_dim,reduce_op", [((512, 256), 0, "sum"), ((2, 256, 256), 1, "sum"),
                                                         ((512, 256), 0, "avg")])
def test_fused_matmul_reduce_scatter(world, engine, shape, scatter_dim, reduce_op):
    As = [rank_randn(r, *shape, seed=11) for r in range(W)]
    Bs = [rank_randn(r, shape[-1], 384, seed=12) / 16 for r in range(W)]
    full = sum(A.double() @ B.double() for A, B in zip(As, Bs))
    if reduce_op == "avg":
        full = full / W
    chunks = full.chunk(W, dim=scatter_dim)

    def fn(r, c):
        return tpcomm.ops.fused_matmul_reduce_scatter(As[r], Bs[r], reduce_op, scatter_dim, c, engine=engine)

    for r, out in enumerate(run_ranks(world, fn)):
        assert out.shape == chunks[r].shape and out.dtype == BF16
        torch.testing.assert_close(out.double(), chunks[r], atol=3e-2, rtol=2e-2)


def fp8(x, scale):
    return (x / scale).to(F8)


@pytest.mark.parametrize("mode", ["tensorwise", "rowwise"])
def test_fused_all_gather_scaled_matmul(world, mode):
    M, K, N = 256, 512, 256
    xs = [rank_randn(r, M, K, dtype=torch.float32, seed=21) for r in range(W)]
    wt = rank_randn(0, N, K, dtype=torch.float32, seed=22)
    if mode == "tensorwise":
        a_scales = [torch.full((), 0.05, device="cuda") for _ in range(W)]
        b_scale = torch.full((), 0.02, device="cuda")
    else:
        a_scales = [x.abs().amax(dim=1, keepdim=True) / 448 for x in xs]
        b_scale = (wt.abs().amax(dim=1) / 448).view(1, N)
    a8 = [fp8(x, s) for x, s in zip(xs, a_scales)]
    b8 = fp8(wt, b_scale.view(N, 1) if mode == "rowwise" else b_scale).t()
    A_full = torch.cat(a8)
    sa_full = torch.cat([s.expand(M, 1) for s in a_scales])
    ref = (A_full.double() * sa_full.double()) @ (b8.double() * b_scale.double().view(1, -1).expand(1, N))

    def fn(r, c):
        return tpcomm.ops.fused_all_gather_scaled_matmul(a8[r], [b8], a_scales[r], [b_scale], 0, c.group_name, [None],
                                                         [None], [BF16], [False])

    for a, [out] in run_ranks(world, fn):
        assert torch.equal(a.view(torch.uint8), A_full.view(torch.uint8))
        assert out.dtype == BF16
        torch.testing.assert_close(out.double(), ref, atol=5e-2, rtol=2e-2)


def test_fused_scaled_matmul_reduce_scatter_flattened_a(world):
    # A flattened to 2-D with the 3-D output shape, as Inductor's pass emits; scatter on the output's dim 1.
    Bsz, S, k, N = 2, 128, 256, 256
    xs = [rank_randn(r, Bsz * S, k, dtype=torch.float32, seed=31) for r in range(W)]
    wt = rank_randn(0, N, k, dtype=torch.float32, seed=32)
    sa, sb = torch.full((), 0.05, device="cuda"), torch.full((), 0.02, device="cuda")
    a8, b8 = [fp8(x, sa) for x in xs], fp8(wt, sb).t()
    full = sum(a.double() * 0.05 @ (b8.double() * 0.02) for a in a8).view(Bsz, S, N)
    chunks = full.chunk(W, dim=1)

    def fn(r, c):
        return tpcomm.ops.fused_scaled_matmul_reduce_scatter(a8[r], b8, sa, sb, "sum", 1, 0, c.group_name, [Bsz, S, N],
                                                             out_dtype=BF16)

    for r, out in enumerate(run_ranks(world, fn)):
        assert out.shape == chunks[r].shape
        torch.testing.assert_close(out.double(), chunks[r], atol=5e-2, rtol=2e-2)


def test_unsupported_result_scale_is_refused(world):
    a = torch.zeros(16, 32, device="cuda", dtype=F8)
    with pytest.raises(tpcomm.UnsupportedError, match=r"^unsupported: result_scales\[0\]"):
        tpcomm.ops.fused_all_gather_scaled_matmul(a, [a.t()], torch.ones((), device="cuda"), [torch.ones((), device="cuda")],
                                                  0, world[0].group_name, [None], [torch.ones((), device="cuda")],
                                                  [BF16], [False])


def test_cuda_graph_capture_and_replay(world):
    M, K, N = 256, 512, 256
    Bw = rank_randn(0, K, N, seed=41) / 16

    def fn(r, c):
        x = rank_randn(r, 4096, seed=42)
        a = rank_randn(r, M, K, seed=43)
        # warm-up outside capture: creates the async-TP workspace (it cannot grow during capture)
        tpcomm.all_reduce(x, c)
        tpcomm.ops.fused_all_gather_matmul(a, [Bw], 0, c.group_name)
        torch.cuda.current_stream().synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=torch.cuda.current_stream(), capture_error_mode="thread_local"):
            y = tpcomm.all_reduce(x, c)
            _, [o] = tpcomm.ops.fused_all_gather_matmul(a, [Bw], 0, c.group_name)
        outs = []
        for it in range(3):  # replay on fresh input each time
            x.copy_(rank_randn(r, 4096, seed=50 + it))
            a.copy_(rank_randn(r, M, K, seed=60 + it))
            g.replay()
            outs.append((y.clone(), o.clone()))
        return outs

    res = run_ranks(world, fn)
    for it in range(3):
        xs = [rank_randn(r, 4096, seed=50 + it) for r in range(W)]
        A_full = torch.cat([rank_randn(r, M, K, seed=60 + it) for r in range(W)])
        ref = A_full.double() @ Bw.double()
        for r in range(W):
            y, o = res[r][it]
            assert torch.equal(y, sum_ref(xs))
            torch.testing.assert_close(o.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_custom_all_reduce_capture(world, zero_copy):
    cars = [tpcomm.CustomAllReduce(c, c.device, max_size=1 << 20, zero_copy_in_capture=zero_copy) for c in world]
    assert not cars[0].disabled
    assert not cars[0].should_use(torch.ones(4, dtype=torch.int32, device="cuda"))
    assert not cars[0].should_use(torch.ones(1 << 20, device="cuda"))  # 4 MiB > max_size
    assert cars[0].all_reduce(torch.ones(1 << 20, device="cuda")) is None

    def fn(r, c):
        car = cars[r]
        x = rank_randn(r, 8192, seed=70)
        eager = car.all_reduce(x)
        g = torch.cuda.CUDAGraph()
        with car.capture():
            with torch.cuda.graph(g, stream=torch.cuda.current_stream(), capture_error_mode="thread_local"):
                y = car.all_reduce(x)
        x.copy_(rank_randn(r, 8192, seed=71))
        g.replay()
        return eager, y.clone(), c.stats()

    res = run_ranks(world, fn)
    e_ref = sum_ref([rank_randn(r, 8192, seed=70) for r in range(W)])
    g_ref = sum_ref([rank_randn(r, 8192, seed=71) for r in range(W)])
    for eager, y, stats in res:
        assert torch.equal(eager, e_ref) and torch.equal(y, g_ref)
        if zero_copy:
            assert stats["zero_copy_calls"] > 0


def test_symmetric_memory(world):
    n = 4096

    def fn(r, c):
        t = tpcomm.symm.empty(n, dtype=torch.float32, group=c)
        h = tpcomm.symm.rendezvous(t, c)
        assert h.rank == r and h.world_size == W and h.buffer_size >= n * 4 and len(h.buffer_ptrs) == W
        assert h.buffer_ptrs[r] == t.data_ptr()
        t.copy_(rank_randn(r, n, dtype=torch.float32, seed=80))
        h.barrier()
        peer = h.get_buffer(1 - r, (n,), torch.float32).clone()
        view = h.get_buffer(r, (n // 2,), torch.float32, storage_offset=n // 2)
        assert view.data_ptr() == t.data_ptr() + n // 2 * 4
        h.barrier(channel=1)
        # rank 0 writes into rank 1's buffer, then signals it; rank 1 waits and reads its own buffer
        if r == 0:
            h.get_buffer(1, (n,), torch.float32).copy_(rank_randn(0, n, dtype=torch.float32, seed=81))
            h.put_signal(1, channel=2)
        else:
            h.wait_signal(0, channel=2)
        mine = t.clone()
        h.barrier(channel=3)
        pad = h.get_signal_pad(r).clone()
        with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: sizes: "):
            h.get_buffer(r, (n + 1,), torch.float32)
        with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: dst_rank: 5 is outside"):
            h.put_signal(5)
        return peer, mine, pad

    res = run_ranks(world, fn)
    for r, (peer, mine, pad) in enumerate(res):
        assert torch.equal(peer, rank_randn(1 - r, 4096, dtype=torch.float32, seed=80))
        assert torch.all(pad == 0)  # every signal slot returned to zero
    assert torch.equal(res[1][1], rank_randn(0, 4096, dtype=torch.float32, seed=81))


def test_wait_signal_timeout_names_the_missing_rank():
    comms = tpcomm.loopback_world(2, timeout_s=2.0)

    def fn(r, c):
        t = tpcomm.symm.empty(16, dtype=torch.float32, group=c)
        h = tpcomm.symm.rendezvous(t, c)
        if r == 1:
            h.wait_signal(0, channel=0, timeout_ms=200)  # rank 0 never signals
            with pytest.raises(tpcomm.CommTimeoutError, match="rank 0"):
                c.synchronize()
        return True

    try:
        run_ranks(comms, fn, timeout_s=60)
    except tpcomm.CommTimeoutError:
        pass  # run_ranks' final check() on rank 1 re-raises the recorded timeout: expected
