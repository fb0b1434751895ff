"""Symmetric memory with the shape of torch.distributed._symmetric_memory:

    t = tpcomm.symm.empty(4096, dtype=torch.bfloat16, device="cuda", group=group)
    h = tpcomm.symm.rendezvous(t, group)
    peer = h.get_buffer(1 - h.rank, (4096,), torch.bfloat16)   # rank p's copy, readable/writable from here
    h.barrier(channel=0)

Over tpcomm::SymmetricBuffer (include/tpcomm/symmetric_memory.h): the allocation is the collective step, so unlike
torch's `empty()` this one is collective over `group` (every rank calls it, in the same order, with the same size);
rendezvous() then only looks the buffer up and needs no communication. Buffers are CUDA-IPC allocations of whole
2 MiB units with a zeroed signal pad of uint32 words (64 KiB unless signal_pad_bytes says otherwise).

Signal ops (barrier, put_signal, wait_signal) run on the current stream as one small kernel, with torch's slot layout
(pad[dst][channel * world + src]); timeout_ms=0 means the communicator's timeout (tpcomm never waits forever): a wait
that times out is raised by the next op or Communicator.check() as CommTimeoutError naming the rank.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import _C
from ._comm import Communicator, get_communicator
from ._errors import invalid_argument

__all__ = ["empty", "rendezvous", "SymmetricMemory"]


def _sizes(size) -> list[int]:
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    return [int(s) for s in size]


def _view(raw: torch.Tensor, byte_offset: int, sizes: Sequence[int], dtype: torch.dtype, arg: str) -> torch.Tensor:
    esz = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(sizes) * esz
    if byte_offset < 0 or byte_offset + nbytes > raw.numel():
        raise invalid_argument(arg, f"{list(sizes)} of {dtype} at byte offset {byte_offset} needs "
                                    f"{byte_offset + nbytes} bytes, the buffer has {raw.numel()}")
    return raw[byte_offset:byte_offset + nbytes].view(dtype).view(list(sizes))


def empty(*size, dtype: torch.dtype | None = None, device=None, group=None,
          signal_pad_bytes: int = 64 * 1024) -> torch.Tensor:
    """A tensor in symmetric memory (collective over `group`: process group, Communicator or group name; default the
    world). device defaults to the communicator's (any other device is an error)."""
    comm = get_communicator(group)
    sizes = _sizes(size)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if device is not None:
        d = torch.device(device)
        if d.type != "cuda" or (d.index is not None and d.index != comm.device.index):
            raise invalid_argument("device", f"{d} is not the communicator's device {comm.device}")
    nbytes = math.prod(sizes) * torch.empty((), dtype=dtype).element_size()
    buf = _C.SymmetricBuffer.allocate(comm._c, max(nbytes, 1), signal_pad_bytes)
    raw = torch.from_dlpack(buf.dlpack(buf.rank))
    return _view(raw, 0, sizes, dtype, "size")


class SymmetricMemory:
    """The handle rendezvous() returns (torch's _SymmetricMemory shape)."""

    def __init__(self, buf: "_C.SymmetricBuffer", comm: Communicator):
        self._buf = buf
        self.comm = comm

    rank = property(lambda self: self._buf.rank)
    world_size = property(lambda self: self._buf.world_size)
    buffer_size = property(lambda self: self._buf.bytes)
    signal_pad_size = property(lambda self: self._buf.signal_pad_bytes)
    # Data / signal-pad addresses of every rank as seen from this process (host list), and the device arrays of them.
    buffer_ptrs = property(lambda self: list(self._buf.buffer_ptrs))
    signal_pad_ptrs = property(lambda self: list(self._buf.signal_pad_ptrs))
    buffer_ptrs_dev = property(lambda self: self._buf.buffer_ptrs_dev)
    signal_pad_ptrs_dev = property(lambda self: self._buf.signal_pad_ptrs_dev)

    def _rank_arg(self, rank: int, arg: str = "rank") -> int:
        if not 0 <= rank < self.world_size:
            raise invalid_argument(arg, f"{rank} is outside the world of {self.world_size} ranks")
        return rank

    def get_buffer(self, rank: int, sizes: Sequence[int], dtype: torch.dtype, storage_offset: int = 0) -> torch.Tensor:
        """Rank `rank`'s buffer as a tensor of `sizes` and `dtype` starting `storage_offset` elements in (on this
        rank's device; peer memory is read and written over NVLink)."""
        raw = torch.from_dlpack(self._buf.dlpack(self._rank_arg(rank)))
        esz = torch.empty((), dtype=dtype).element_size()
        return _view(raw, storage_offset * esz, _sizes((sizes,)), dtype, "sizes")

    def get_signal_pad(self, rank: int, sizes: Sequence[int] | None = None, dtype: torch.dtype = torch.uint32,
                       storage_offset: int = 0) -> torch.Tensor:
        """Rank `rank`'s signal pad (default: all of it as uint32)."""
        raw = torch.from_dlpack(self._buf.dlpack(self._rank_arg(rank), True))
        esz = torch.empty((), dtype=dtype).element_size()
        if sizes is None:
            sizes = [raw.numel() // esz - storage_offset]
        return _view(raw, storage_offset * esz, _sizes((sizes,)), dtype, "sizes")

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.comm.device).cuda_stream

    def barrier(self, channel: int = 0, timeout_ms: int = 0) -> None:
        """Every rank waits for every other (on the current stream; release/acquire at system scope)."""
        self._buf.barrier(channel, self._stream(), timeout_ms)

    def put_signal(self, dst_rank: int, channel: int = 0, timeout_ms: int = 0) -> None:
        """Signals `dst_rank` (after the current stream's earlier work)."""
        self._buf.put_signal(dst_rank, channel, self._stream(), timeout_ms)

    def wait_signal(self, src_rank: int, channel: int = 0, timeout_ms: int = 0) -> None:
        """The current stream waits for `src_rank`'s signal (and consumes it)."""
        self._buf.wait_signal(src_rank, channel, self._stream(), timeout_ms)

    def __repr__(self) -> str:
        return (f"tpcomm.symm.SymmetricMemory(rank={self.rank}, world_size={self.world_size}, "
                f"buffer_size={self.buffer_size}, group_name={self.comm.group_name!r})")


def rendezvous(t: torch.Tensor, group=None) -> SymmetricMemory:
    """The handle of the symmetric buffer under `t` (made by empty(); any view into it). `group`, when given, must be
    the one the buffer was allocated over."""
    buf = _C.SymmetricBuffer.lookup(t.data_ptr()) if t.is_cuda else None
    if buf is None:
        raise invalid_argument("t", "is not in tpcomm symmetric memory (allocate it with tpcomm.symm.empty)")
    comm = get_communicator(group) if group is not None else None
    from ._comm import communicators

    owner = next((c for c in communicators() if c._c is buf.comm), None)
    if comm is not None and (owner is None or comm is not owner):
        raise invalid_argument("group", f"the tensor was allocated over group "
                                        f"'{owner.group_name if owner else '?'}', not '{comm.group_name}'")
    if owner is None:
        raise invalid_argument("t", "its communicator was destroyed")
    return SymmetricMemory(buf, owner)
