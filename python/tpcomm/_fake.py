"""Fake (meta) implementations of the torch.ops.tpcomm ops, so torch.compile / make_fx trace them without running
anything: each returns outputs of the shape, dtype and (contiguous) layout the CUDA kernel returns. They compute
shapes only; the library validates the real call (a bad argument that the shape arithmetic does not need surfaces when
the compiled graph runs)."""

from __future__ import annotations

import torch

from . import _C
from ._errors import invalid_argument


def _world_size(group_name: str) -> int:
    """World size of a group name: a tpcomm communicator's, else torch.distributed's (which also knows fake process
    groups used for tracing)."""
    info = _C.group_info(group_name)
    if info is not None:
        return info["world_size"]
    try:
        from torch.distributed import distributed_c10d as c10d

        return c10d._get_group_size_by_name(group_name)
    except Exception:
        raise invalid_argument("group_name", f"no tpcomm communicator or torch.distributed group named "
                                             f"'{group_name}'") from None


def _wrap(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _gathered(A: torch.Tensor, gather_dim: int, world: int) -> list:
    sizes = list(A.shape)
    d = _wrap(gather_dim, A.dim())
    if not 0 <= d < A.dim():
        raise invalid_argument("gather_dim", f"{gather_dim} is out of range for A of {A.dim()} dims")
    sizes[d] = sizes[d] * world
    return sizes


def _dtypes(scalar_types) -> list:
    """ScalarType?[] arrives in a fake as the enum's integers; torch.ops.symm_mem's helper maps them back."""
    from torch.distributed._symmetric_memory import _maybe_convert_scalar_types_to_dtypes

    return _maybe_convert_scalar_types_to_dtypes(list(scalar_types))


def _n_of(B: torch.Tensor, arg: str):
    if B.dim() != 2:
        raise invalid_argument(arg, f"must be 2-D (K, N), got sizes {tuple(B.shape)}")
    return B.shape[1]


@torch.library.register_fake("tpcomm::all_reduce")
def _all_reduce(input, reduce_op, group_name, algo="auto", zero_copy=False):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("tpcomm::all_reduce_out")
def _all_reduce_out(input, reduce_op, group_name, algo, zero_copy, out):
    return None


@torch.library.register_fake("tpcomm::all_reduce_")
def _all_reduce_inplace(input, reduce_op, group_name, algo="auto", zero_copy=False):
    return None


@torch.library.register_fake("tpcomm::stream_write_value32_")
def _stream_write_value32(input, offset, val):
    return None


@torch.library.register_fake("tpcomm::memset32_")
def _memset32(input, offset, val, count):
    return None


@torch.library.register_fake("tpcomm::fused_all_gather_matmul")
def _fused_all_gather_matmul(A, Bs, gather_dim, group_name, *, return_A=True, engine="auto", allow_fallback=False):
    g = _gathered(A, gather_dim, _world_size(group_name))
    outs = [A.new_empty(g[:-1] + [_n_of(B, f"Bs[{i}]")]) for i, B in enumerate(Bs)]
    return (A.new_empty(g) if return_A else None), outs


@torch.library.register_fake("tpcomm::fused_all_gather_scaled_matmul")
def _fused_all_gather_scaled_matmul(A, Bs, A_scale, B_scales, gather_dim, group_name, biases, result_scales,
                                    out_dtypes, use_fast_accum, *, engine="auto", allow_fallback=False):
    g = _gathered(A, gather_dim, _world_size(group_name))
    out_dtypes = _dtypes(out_dtypes)
    if len(out_dtypes) != len(Bs):
        raise invalid_argument("out_dtypes", f"{len(out_dtypes)} entries for {len(Bs)} Bs")
    outs = [A.new_empty(g[:-1] + [_n_of(B, f"Bs[{i}]")], dtype=dt if dt is not None else A.dtype)
            for i, (B, dt) in enumerate(zip(Bs, out_dtypes))]
    return A.new_empty(g), outs


def _rs_out(A, B, leading: list, scatter_dim: int, group_name: str, dtype):
    sizes = list(leading) + [_n_of(B, "B")]
    d = _wrap(scatter_dim, len(sizes))
    if not 0 <= d < len(sizes):
        raise invalid_argument("scatter_dim", f"{scatter_dim} is out of range for an output of {len(sizes)} dims")
    sizes[d] = sizes[d] // _world_size(group_name)
    return A.new_empty(sizes, dtype=dtype)


@torch.library.register_fake("tpcomm::fused_matmul_reduce_scatter")
def _fused_matmul_reduce_scatter(A, B, reduce_op, scatter_dim, group_name, *, engine="auto", allow_fallback=False):
    return _rs_out(A, B, list(A.shape[:-1]), scatter_dim, group_name, A.dtype)


@torch.library.register_fake("tpcomm::fused_scaled_matmul_reduce_scatter")
def _fused_scaled_matmul_reduce_scatter(A, B, A_scale, B_scale, reduce_op, orig_scatter_dim,
                                        scatter_dim_after_maybe_reshape, group_name, output_shape, bias=None,
                                        result_scale=None, out_dtype=None, use_fast_accum=False, *, engine="auto",
                                        allow_fallback=False):
    if output_shape is not None and len(output_shape) != A.dim() and len(output_shape) >= 2:
        leading = list(output_shape[:-1])
    else:
        leading = list(A.shape[:-1])
    if out_dtype is not None and not isinstance(out_dtype, torch.dtype):
        out_dtype = _dtypes([out_dtype])[0]
    return _rs_out(A, B, leading, orig_scatter_dim, group_name, out_dtype if out_dtype is not None else A.dtype)
