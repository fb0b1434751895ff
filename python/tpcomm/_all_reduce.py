"""All-reduce from PyTorch: functional / out / in-place calls of torch.ops.tpcomm.all_reduce*, and CustomAllReduce, the
shape of vLLM's (and SGLang's) custom all-reduce class so their communicator classes can swap it in."""

from __future__ import annotations

import contextlib

import torch

from ._comm import Communicator, get_communicator, group_name_of
from ._errors import _call, invalid_argument

# What tpcomm's all-reduce kernels take (tpcomm/all_reduce.h: f32, f16, bf16).
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def all_reduce(x: torch.Tensor, group=None, algo: str = "auto", *, op: str = "sum", out: torch.Tensor | None = None,
               zero_copy: bool = False) -> torch.Tensor:
    """reduce(x over the ranks of `group`) as a new tensor, or into `out`. `group`: a process group, a Communicator or
    a group name (default: the world). algo: "auto", "one_shot_ll", "one_shot", "two_shot", "one_shot_ce", "nccl".
    op: "sum", "max", "min". zero_copy: pinned "one_shot" reading x from every peer (x registered, or captured inside
    Communicator.graph_capture())."""
    name = group_name_of(group)
    if out is None:
        return _call(torch.ops.tpcomm.all_reduce, x, op, name, algo, zero_copy)
    _call(torch.ops.tpcomm.all_reduce_out, x, op, name, algo, zero_copy, out)
    return out


def all_reduce_(x: torch.Tensor, group=None, algo: str = "auto", *, op: str = "sum", zero_copy: bool = False) -> torch.Tensor:
    """In-place all_reduce; returns x."""
    _call(torch.ops.tpcomm.all_reduce_, x, op, group_name_of(group), algo, zero_copy)
    return x


class CustomAllReduce:
    """vLLM-style custom all-reduce over a process group (or a tpcomm Communicator / group name).

        car = CustomAllReduce(group, device, max_size=8 << 20)
        out = car.all_reduce(x) if car.should_use(x) else torch_all_reduce(x)
        with car.capture():                     # around CUDA-graph capture
            with torch.cuda.graph(g):
                out = car.all_reduce(x)

    `disabled` is True when tpcomm's kernels cannot run on this communicator (no peer access, ranks across nodes,
    TPCOMM_FORCE_NCCL): then should_use() is False and all_reduce() returns None, as vLLM's does.
    zero_copy_in_capture: inside capture(), run the zero-copy one-shot (peers read the captured input directly; the
    buffers are exchanged when capture() exits), vLLM's registered-buffer scheme; otherwise captured calls run `algo`.
    """

    def __init__(self, group, device=None, max_size: int = 8 << 20, *, algo: str = "auto",
                 zero_copy_in_capture: bool = False):
        if isinstance(group, (Communicator, str)):
            self.comm = get_communicator(group)
        else:
            from ._comm import init

            self.comm = init(group, device=device)
        if device is not None:
            d = torch.device(device)
            if d.type != "cuda" or (d.index is not None and d.index != self.comm.device.index):
                raise invalid_argument("device", f"{d} is not the communicator's device {self.comm.device}")
        self.device = self.comm.device
        self.max_size = int(max_size)
        self.algo = algo
        self.zero_copy_in_capture = zero_copy_in_capture
        self.rank = self.comm.rank
        self.world_size = self.comm.world_size
        self.disabled = not self.comm.fast_path
        self._capturing = False

    def should_use(self, x: torch.Tensor) -> bool:
        """True when all_reduce(x) runs tpcomm's kernels: CUDA tensor on this device, contiguous, f32/f16/bf16, at most
        max_size bytes, and the algorithm tpcomm picks for its size is not NCCL."""
        if self.disabled or not x.is_cuda or x.device != self.device or x.dtype not in _DTYPES or not x.is_contiguous():
            return False
        nbytes = x.numel() * x.element_size()
        if nbytes == 0 or nbytes > self.max_size:
            return False
        algo = "one_shot" if self._zero_copy_now() else self.algo
        try:
            return self.comm.resolve_all_reduce(nbytes, algo) != "nccl"
        except Exception:  # a pinned algorithm whose workspace is too small for x
            return False

    def _zero_copy_now(self) -> bool:
        return self.zero_copy_in_capture and self._capturing and torch.cuda.is_current_stream_capturing()

    def all_reduce(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum of x over the ranks (new tensor, or into `out`); None when should_use(x) is False."""
        if not self.should_use(x):
            return None
        if self._zero_copy_now():
            return all_reduce(x, self.comm, "one_shot", out=out, zero_copy=True)
        return all_reduce(x, self.comm, self.algo, out=out)

    @contextlib.contextmanager
    def capture(self):
        """Wrap CUDA-graph capture: on exit the buffers of zero-copy calls captured inside are registered
        (tpcomm::register_graph_buffers, collective), before the first replay."""
        with self.comm.graph_capture():
            self._capturing = True
            try:
                yield
            finally:
                self._capturing = False

    def register_buffer(self, t: torch.Tensor) -> None:
        """Registers t for zero-copy calls outside capture (collective)."""
        self.comm.register_buffer(t)

    def close(self) -> None:
        """Nothing to free: the communicator belongs to tpcomm's per-group cache (tpcomm.shutdown() frees it)."""
