"""Async tensor parallelism, with the signatures of torch.ops.symm_mem (torchtitan-style code switches by changing the
namespace: torch.ops.symm_mem.fused_all_gather_matmul -> tpcomm.ops.fused_all_gather_matmul, or call
torch.ops.tpcomm.* directly, which torch.compile traces through the fake implementations in tpcomm/_fake.py).

    A_gathered, [out] = tpcomm.ops.fused_all_gather_matmul(A_shard, [B], gather_dim=0, group_name=group)
    out = tpcomm.ops.fused_matmul_reduce_scatter(A, B, "sum", scatter_dim=0, group_name=group)

Semantics (shapes, scale modes, results) are torch's; the work is tpcomm's C++ ops (include/tpcomm/async_tp.h).
group_name: a group name, or anything tpcomm.get_communicator accepts (process group, Communicator).
Keyword-only extras: engine ("auto", "decomposed", "native", "unfused") and allow_fallback (run unfused, logged and
counted in Communicator.stats(), instead of raising UnsupportedError when the requested engine cannot run the call).
A non-contiguous A is copied once, as torch.ops.symm_mem does. Before capturing these ops into a CUDA graph, run them
once eagerly or call Communicator.reserve_async_tp (the workspace cannot grow during capture).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._comm import group_name_of
from ._errors import _call

__all__ = ["fused_all_gather_matmul", "fused_all_gather_scaled_matmul", "fused_matmul_reduce_scatter",
           "fused_scaled_matmul_reduce_scatter", "stream_write_value32_", "memset32_"]


def fused_all_gather_matmul(A_shard: torch.Tensor, Bs: Sequence[torch.Tensor], gather_dim: int, group_name, *,
                            return_A: bool = True, engine: str = "auto", allow_fallback: bool = False):
    """(all_gather(A_shard, gather_dim) or None, [all_gather(A_shard, gather_dim) @ B for B in Bs])."""
    return _call(torch.ops.tpcomm.fused_all_gather_matmul, A_shard, list(Bs), gather_dim, group_name_of(group_name),
                 return_A=return_A, engine=engine, allow_fallback=allow_fallback)


def fused_all_gather_scaled_matmul(A_shard, Bs, A_scale, B_scales, gather_dim, group_name, biases, result_scales,
                                   out_dtypes, use_fast_accum, *, engine: str = "auto", allow_fallback: bool = False):
    """FP8: (A gathered, [torch._scaled_mm(A gathered, B, A_scale, B_scale, bias, ...) for each B]). A_scale may be
    tensorwise, rowwise sharded or rowwise replicated (detected from its shape, as torch does), or 1x128 blockwise."""
    return _call(torch.ops.tpcomm.fused_all_gather_scaled_matmul, A_shard, list(Bs), A_scale, list(B_scales),
                 gather_dim, group_name_of(group_name), list(biases), list(result_scales), list(out_dtypes),
                 list(use_fast_accum), engine=engine, allow_fallback=allow_fallback)


def fused_matmul_reduce_scatter(A: torch.Tensor, B: torch.Tensor, reduce_op: str, scatter_dim: int, group_name, *,
                                engine: str = "auto", allow_fallback: bool = False) -> torch.Tensor:
    """reduce_scatter(A @ B, reduce_op ("sum" or "avg"), scatter_dim)."""
    return _call(torch.ops.tpcomm.fused_matmul_reduce_scatter, A, B, reduce_op, scatter_dim, group_name_of(group_name),
                 engine=engine, allow_fallback=allow_fallback)


def fused_scaled_matmul_reduce_scatter(A, B, A_scale, B_scale, reduce_op, orig_scatter_dim,
                                       scatter_dim_after_maybe_reshape, group_name, output_shape, bias=None,
                                       result_scale=None, out_dtype=None, use_fast_accum=False, *, engine: str = "auto",
                                       allow_fallback: bool = False) -> torch.Tensor:
    """FP8: reduce_scatter(torch._scaled_mm(A, B, ...) viewed as output_shape, reduce_op, orig_scatter_dim)."""
    return _call(torch.ops.tpcomm.fused_scaled_matmul_reduce_scatter, A, B, A_scale, B_scale, reduce_op,
                 orig_scatter_dim, scatter_dim_after_maybe_reshape, group_name_of(group_name),
                 None if output_shape is None else list(output_shape), bias, result_scale, out_dtype, use_fast_accum,
                 engine=engine, allow_fallback=allow_fallback)


def stream_write_value32_(t: torch.Tensor, offset: int, val: int) -> torch.Tensor:
    """t[offset] = val (a uint32/int32 word) from the current stream, ordered after its earlier work."""
    _call(torch.ops.tpcomm.stream_write_value32_, t, offset, val)
    return t


def memset32_(t: torch.Tensor, offset: int, val: int, count: int) -> torch.Tensor:
    """t[offset:offset + count] = val (32-bit words) on the current stream (capturable)."""
    _call(torch.ops.tpcomm.memset32_, t, offset, val, count)
    return t
