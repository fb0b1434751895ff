"""The torch ops' schemas: names, argument types, mutation annotations and tags; the async-TP ops keep
torch.ops.symm_mem's arguments (names, types, order) so code switches by changing the namespace."""

import pytest
import torch

import tpcomm  # noqa: F401  (registers torch.ops.tpcomm)
import torch.distributed._symmetric_memory  # noqa: F401  (registers torch.ops.symm_mem)

EXPECTED = {
    "all_reduce": "tpcomm::all_reduce(Tensor input, str reduce_op, str group_name, str algo=\"auto\", "
                  "bool zero_copy=False) -> Tensor",
    "all_reduce_out": "tpcomm::all_reduce_out(Tensor input, str reduce_op, str group_name, str algo, bool zero_copy, "
                      "Tensor(a!) out) -> ()",
    "all_reduce_": "tpcomm::all_reduce_(Tensor(a!) input, str reduce_op, str group_name, str algo=\"auto\", "
                   "bool zero_copy=False) -> ()",
    "stream_write_value32_": "tpcomm::stream_write_value32_(Tensor(a!) input, int offset, int val) -> ()",
    "memset32_": "tpcomm::memset32_(Tensor(a!) input, int offset, int val, int count) -> ()",
    "fused_all_gather_matmul": "tpcomm::fused_all_gather_matmul(Tensor A, Tensor[] Bs, int gather_dim, str group_name, "
                               "*, bool return_A=True, str engine=\"auto\", bool allow_fallback=False) "
                               "-> (Tensor?, Tensor[])",
    "fused_all_gather_scaled_matmul": "tpcomm::fused_all_gather_scaled_matmul(Tensor A, Tensor[] Bs, Tensor A_scale, "
                                      "Tensor[] B_scales, int gather_dim, str group_name, Tensor?[] biases, "
                                      "Tensor?[] result_scales, ScalarType?[] out_dtypes, bool[] use_fast_accum, *, "
                                      "str engine=\"auto\", bool allow_fallback=False) -> (Tensor, Tensor[])",
    "fused_matmul_reduce_scatter": "tpcomm::fused_matmul_reduce_scatter(Tensor A, Tensor B, str reduce_op, "
                                   "int scatter_dim, str group_name, *, str engine=\"auto\", "
                                   "bool allow_fallback=False) -> Tensor",
    "fused_scaled_matmul_reduce_scatter": "tpcomm::fused_scaled_matmul_reduce_scatter(Tensor A, Tensor B, "
                                          "Tensor A_scale, Tensor B_scale, str reduce_op, int orig_scatter_dim, "
                                          "int scatter_dim_after_maybe_reshape, str group_name, int[]? output_shape, "
                                          "Tensor? bias=None, Tensor? result_scale=None, ScalarType? out_dtype=None, "
                                          "bool use_fast_accum=False, *, str engine=\"auto\", "
                                          "bool allow_fallback=False) -> Tensor",
}

ASYNC_TP = ["fused_all_gather_matmul", "fused_all_gather_scaled_matmul", "fused_matmul_reduce_scatter",
            "fused_scaled_matmul_reduce_scatter"]


def schema(name):
    return getattr(torch.ops.tpcomm, name).default._schema


def test_every_op_is_known():
    ops = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("tpcomm::")}
    assert ops == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_text(name):
    assert str(schema(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mutation_is_declared(name):
    s = schema(name)
    mutated = [a.name for a in s.arguments if a.alias_info is not None and a.alias_info.is_write]
    # out-variants and in-place ops mutate exactly their declared argument and return nothing; the rest mutate nothing
    want = {"all_reduce_out": ["out"], "all_reduce_": ["input"], "stream_write_value32_": ["input"],
            "memset32_": ["input"]}.get(name, [])
    assert mutated == want
    if want:
        assert len(s.returns) == 0


@pytest.mark.parametrize("name", ASYNC_TP)
def test_async_tp_keeps_symm_mem_arguments(name):
    ours = schema(name)
    theirs = getattr(torch.ops.symm_mem, name).default._schema
    n = len(theirs.arguments)
    for a, b in zip(ours.arguments[:n], theirs.arguments):
        assert a.name == b.name
        assert a.kwarg_only == b.kwarg_only
        # the stable ABI has no SymInt: int[]? where symm_mem has SymInt[]?
        assert str(a.type).replace("SymInt", "int") == str(b.type).replace("SymInt", "int")
        assert a.default_value == b.default_value
    extra = ours.arguments[n:]
    assert [a.name for a in extra] == ["engine", "allow_fallback"] and all(a.kwarg_only for a in extra)
    assert [str(r.type) for r in ours.returns] == [str(r.type) for r in theirs.returns]
    assert torch.Tag.needs_fixed_stride_order in getattr(torch.ops.tpcomm, name).default.tags


def test_no_op_is_cudagraph_unsafe():
    # Every op is capturable once the communicator's workspaces exist; the non-capturable steps (communicator creation,
    # register_buffer, register_graph_buffers, reserve_async_tp) are Python/pybind calls, not ops.
    for name in EXPECTED:
        assert torch.Tag.cudagraph_unsafe not in getattr(torch.ops.tpcomm, name).default.tags


def test_ops_have_cuda_kernels_and_fakes():
    for name in EXPECTED:
        op = getattr(torch.ops.tpcomm, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta"), name
