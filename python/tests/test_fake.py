"""Fake implementations (what torch.compile traces with): every op on fake CUDA tensors and on meta tensors, without a
GPU; output shapes and dtypes equal torch.ops.symm_mem's for the same inputs (their meta implementations), and
make_fx / torch.compile(fullgraph=True) trace the ops (direct and through tpcomm's Python functions) into one graph."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import tpcomm
import torch.distributed._symmetric_memory  # noqa: F401

from conftest import WORLD

BF16, F8 = torch.bfloat16, torch.float8_e4m3fn


def meta(*shape, dtype=BF16):
    return torch.empty(*shape, device="meta", dtype=dtype)


# (A shard shape, gather_dim) cases of torch's all-gather matmul: 2-D, 3-D along batch and sequence, 4-D.
AG_CASES = [((16, 64), 0), ((2, 8, 64), 0), ((2, 8, 64), 1), ((3, 2, 8, 64), 2)]


@pytest.mark.parametrize("shape,gather_dim", AG_CASES)
def test_all_gather_matmul_matches_symm_mem(fake_group, shape, gather_dim):
    A, B1, B2 = meta(*shape), meta(64, 32), meta(64, 48)
    ours_a, ours = torch.ops.tpcomm.fused_all_gather_matmul(A, [B1, B2], gather_dim, fake_group)
    theirs_a, theirs = torch.ops.symm_mem.fused_all_gather_matmul(A, [B1, B2], gather_dim, fake_group)
    assert ours_a.shape == theirs_a.shape and ours_a.dtype == theirs_a.dtype
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    assert all(o.is_contiguous() for o in [ours_a, *ours])  # the CUDA kernel's outputs are contiguous
    a, outs = torch.ops.tpcomm.fused_all_gather_matmul(A, [B1], gather_dim, fake_group, return_A=False)
    assert a is None and outs[0].shape == theirs[0].shape


def test_negative_gather_dim_is_wrapped(fake_group):
    # (torch.ops.symm_mem's meta mis-handles negative gather dims, so this compares with the positive dim instead)
    A, B = meta(2, 8, 64), meta(64, 32)
    a_neg, [o_neg] = torch.ops.tpcomm.fused_all_gather_matmul(A, [B], -2, fake_group)
    a_pos, [o_pos] = torch.ops.tpcomm.fused_all_gather_matmul(A, [B], 1, fake_group)
    assert a_neg.shape == a_pos.shape == (2, 8 * WORLD, 64) and o_neg.shape == o_pos.shape


@pytest.mark.parametrize("shape,scatter_dim", [((64, 32), 0), ((4, 16, 32), 0), ((4, 16, 32), 1), ((4, 16, 32), -2),
                                               ((4, 16, 32), 2)])
def test_matmul_reduce_scatter_matches_symm_mem(fake_group, shape, scatter_dim):
    A, B = meta(*shape), meta(32, 64)
    ours = torch.ops.tpcomm.fused_matmul_reduce_scatter(A, B, "sum", scatter_dim, fake_group)
    theirs = torch.ops.symm_mem.fused_matmul_reduce_scatter(A, B, "sum", scatter_dim, fake_group)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype


def test_scaled_ops_on_fake_cuda(fake_group):
    with FakeTensorMode():
        A = torch.empty(16, 64, device="cuda", dtype=F8)
        Bt = torch.empty(32, 64, device="cuda", dtype=F8).t()  # the (N, K) weight, as torch._scaled_mm wants
        a_scale = torch.empty(16, 1, device="cuda")
        b_scale = torch.empty(1, 32, device="cuda")
        a, outs = torch.ops.tpcomm.fused_all_gather_scaled_matmul(
            A, [Bt, Bt], a_scale, [b_scale, b_scale], 0, fake_group, [None, None], [None, None],
            [torch.bfloat16, torch.float32], [False, False])
        assert a.shape == (16 * WORLD, 64) and a.dtype == F8
        assert [(o.shape, o.dtype) for o in outs] == [((16 * WORLD, 32), torch.bfloat16), ((16 * WORLD, 32), torch.float32)]
        # RS with a flattened A and the 3-D output shape (what Inductor's pass emits): scatter on the output's dim 1
        A2 = torch.empty(2 * 8, 64, device="cuda", dtype=F8)
        out = torch.ops.tpcomm.fused_scaled_matmul_reduce_scatter(
            A2, Bt, torch.empty(16, 1, device="cuda"), b_scale, "sum", 1, 0, fake_group, [2, 8, 32],
            out_dtype=torch.bfloat16)
        assert out.shape == (2, 8 // WORLD, 32) and out.dtype == torch.bfloat16 and out.device.type == "cuda"


def test_all_reduce_variants_on_fake_cuda(fake_group):
    with FakeTensorMode():
        x = torch.empty(4, 1024, device="cuda", dtype=BF16)
        y = torch.ops.tpcomm.all_reduce(x, "sum", fake_group)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.ops.tpcomm.all_reduce_out(x, "sum", fake_group, "auto", False, torch.empty_like(x)) is None
        assert torch.ops.tpcomm.all_reduce_(x, "max", fake_group) is None
        w = torch.empty(16, device="cuda", dtype=torch.uint32)
        assert torch.ops.tpcomm.stream_write_value32_(w, 3, 1) is None
        assert torch.ops.tpcomm.memset32_(w, 0, 0, 16) is None


def tp_block(fake_group):
    def f(x, w_up, w_down, r):
        _, [h] = torch.ops.tpcomm.fused_all_gather_matmul(x, [w_up], 0, fake_group)
        y = torch.ops.tpcomm.fused_matmul_reduce_scatter(torch.relu(h), w_down, "sum", 0, fake_group)
        torch.ops.tpcomm.all_reduce_(r, "sum", fake_group)
        return y + 1, r
    return f


def test_make_fx_traces_every_call(fake_group):
    f = tp_block(fake_group)
    with FakeTensorMode():
        args = (torch.empty(16, 64, device="cuda", dtype=BF16), torch.empty(64, 128, device="cuda", dtype=BF16),
                torch.empty(128, 64, device="cuda", dtype=BF16), torch.empty(8, device="cuda"))
    gm = make_fx(f, tracing_mode="fake")(*args)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.tpcomm.fused_all_gather_matmul.default in targets
    assert torch.ops.tpcomm.fused_matmul_reduce_scatter.default in targets
    assert torch.ops.tpcomm.all_reduce_.default in targets


class Recorder:
    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _targets(gm):
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(fake_group, dynamic):
    torch._dynamo.reset()
    rec = Recorder()
    f = torch.compile(tp_block(fake_group), backend=rec, fullgraph=True, dynamic=dynamic)
    y, r = f(meta(16, 64), meta(64, 128), meta(128, 64), meta(8, dtype=torch.float32))
    assert y.shape == (16 * WORLD // WORLD, 64) and r.shape == (8,)
    names = _targets(rec.graphs[0])
    assert {"tpcomm.fused_all_gather_matmul.default", "tpcomm.fused_matmul_reduce_scatter.default",
            "tpcomm.all_reduce_.default"} <= names or \
           {"tpcomm.fused_all_gather_matmul", "tpcomm.fused_matmul_reduce_scatter", "tpcomm.all_reduce_"} <= names


def test_torch_compile_through_python_api(fake_group):
    torch._dynamo.reset()
    rec = Recorder()

    def g(x, w):
        _, [h] = tpcomm.ops.fused_all_gather_matmul(x, [w], 0, fake_group, engine="decomposed")
        return tpcomm.all_reduce(h, fake_group, "one_shot")

    out = torch.compile(g, backend=rec, fullgraph=True)(meta(16, 64), meta(64, 32))
    assert out.shape == (16 * WORLD, 32)
    code = rec.graphs[0].code
    assert "tpcomm.fused_all_gather_matmul" in code and "'decomposed'" in code
    assert "tpcomm.all_reduce" in code and "'one_shot'" in code


def test_fake_rejects_unknown_group():
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: group_name: no tpcomm communicator"):
        torch.ops.tpcomm.fused_all_gather_matmul(meta(16, 64), [meta(64, 32)], 0, "no_such_group")


def test_fake_names_bad_arguments(fake_group):
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: gather_dim: 5 is out of range"):
        torch.ops.tpcomm.fused_all_gather_matmul(meta(16, 64), [meta(64, 32)], 5, fake_group)
    with pytest.raises(tpcomm.InvalidArgumentError, match=r"^invalid_argument: Bs\[1\]: must be 2-D"):
        torch.ops.tpcomm.fused_all_gather_matmul(meta(16, 64), [meta(64, 32), meta(64)], 0, fake_group)
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: scatter_dim: 3 is out of range"):
        torch.ops.tpcomm.fused_matmul_reduce_scatter(meta(16, 64), meta(64, 32), "sum", 3, fake_group)
