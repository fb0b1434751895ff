"""Communicators for PyTorch: one per torch.distributed process group (cached by the group's name), or the ranks of a
loopback world (W ranks on one GPU, each used from its own thread; for tests).

Bootstrap from a process group (init): when every rank of the group already has an NCCL communicator
(ProcessGroupNCCL._comm_ptr() is non-zero everywhere, decided by a vote over the group), tpcomm adopts it (torch keeps
owning it: destroy tpcomm's communicator before the process group); otherwise rank 0 makes an ncclUniqueId, the group
broadcasts it, and tpcomm creates its own NCCL communicator (owned by tpcomm). `Communicator.owner` records which.

The torch ops name their group by a string (as torch.ops.symm_mem does): a communicator is registered under its
`group_name` (the process group's group_name, or a per-rank name for a loopback world), which the ops look up.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Any, Callable, NamedTuple

import torch

from . import _C
from ._errors import invalid_argument

_OPTION_NAMES = ("two_shot_max_bytes", "one_shot_max_bytes", "lamport_max_bytes", "copy_engine_max_bytes",
                 "timeout_s", "force_nccl")

_lock = threading.RLock()
_groups: dict[str, "Communicator"] = {}
_loopback_ids = itertools.count()


def _options(options: dict[str, Any]) -> "_C.CommOptions":
    o = _C.CommOptions()
    for k, v in options.items():
        if k not in _OPTION_NAMES:
            raise invalid_argument(k, f"unknown communicator option (known: {', '.join(_OPTION_NAMES)})")
        setattr(o, k, v)
    return o


class Communicator:
    """One rank's tpcomm communicator (wraps tpcomm::Communicator).

    group_name: the name the torch ops take (`torch.ops.tpcomm.*(..., group_name)`).
    owner: who owns the NCCL communicator underneath: "torch" (adopted from the process group), "tpcomm" (created by
    tpcomm), or "loopback" (none).
    """

    def __init__(self, native: "_C.Communicator", group_name: str, owner: str, group: Any = None):
        self._c = native
        self.group_name = group_name
        self.owner = owner
        self.group = group  # the torch.distributed ProcessGroup (kept alive while an adopted NCCL comm is in use)

    # ---- what the library knows
    @property
    def rank(self) -> int:
        return self._c.rank

    @property
    def world_size(self) -> int:
        return self._c.world_size

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self._c.device)

    @property
    def fast_path(self) -> bool:
        return self._c.fast_path

    @property
    def loopback(self) -> bool:
        return self._c.loopback

    @property
    def topology(self) -> dict:
        return self._c.topology

    def stats(self) -> dict:
        return self._c.stats()

    def check(self) -> None:
        """Raises the first device-side error (e.g. CommTimeoutError naming the rank) of any earlier op."""
        self._c.check()

    def synchronize(self, stream: torch.cuda.Stream | None = None) -> None:
        """Synchronizes `stream` (default: the current stream of the communicator's device), then check()."""
        s = stream if stream is not None else torch.cuda.current_stream(self.device)
        self._c.synchronize(s.cuda_stream)

    def destroy(self) -> None:
        """Frees everything and unregisters the group name (raises InvalidStateError while work is in flight)."""
        with _lock:
            self._c.destroy()
            if _groups.get(self.group_name) is self:
                del _groups[self.group_name]

    # ---- collectives' setup
    def resolve_all_reduce(self, nbytes: int, algo: str = "auto") -> str:
        """The algorithm all_reduce runs for a message of `nbytes` ("one_shot_ll", ..., "nccl")."""
        return self._c.resolve_all_reduce(nbytes, algo)

    def register_buffer(self, t: torch.Tensor) -> None:
        """Registers t's memory for zero-copy all-reduce (collective: every rank, same order)."""
        self._check_tensor(t, "t")
        self._c.register_buffer(t.data_ptr(), t.numel() * t.element_size())

    @contextlib.contextmanager
    def graph_capture(self):
        """Scope around CUDA-graph capture for zero-copy all-reduce (tpcomm::GraphCapture); on a normal exit the
        recorded buffers are exchanged (register_graph_buffers, collective) so the graph can be replayed."""
        scope = self._c.graph_capture()
        try:
            yield self
        finally:
            scope.close()
        self._c.register_graph_buffers()

    def reserve_async_tp(self, ag_gathered_bytes: int, rs_output_bytes: int) -> None:
        """Grows the async-TP workspace (collective) so fused ops up to these sizes allocate nothing: call before
        capturing them into a CUDA graph."""
        self._c.reserve_async_tp(ag_gathered_bytes, rs_output_bytes)

    def _check_tensor(self, t: torch.Tensor, arg: str) -> None:
        if not t.is_cuda or t.device.index != self._c.device:
            raise invalid_argument(arg, f"must be on {self.device} (the communicator's device), got {t.device}")

    def __repr__(self) -> str:
        return (f"tpcomm.Communicator(group_name={self.group_name!r}, rank={self.rank}, world_size={self.world_size}, "
                f"device={self.device}, owner={self.owner!r}, fast_path={self.fast_path})")


def _register(comm: Communicator) -> Communicator:
    _C.register_group(comm.group_name, comm._c, comm.owner)
    _groups[comm.group_name] = comm
    return comm


# ---- bootstrap from a process group ------------------------------------------------------------------------------------
class BootstrapPlan(NamedTuple):
    kind: str                  # "adopt" or "create"
    nccl_comm: int = 0         # adopt: the ncclComm_t
    unique_id: bytes = b""     # create: the ncclUniqueId every rank received


def _nccl_comm_ptr(group, device: int) -> int:
    """The group's NCCL communicator for `device` (0 when the group has no NCCL backend or no comm yet)."""
    try:
        backend = group._get_backend(torch.device("cuda", device))
    except Exception:
        return 0
    fn = getattr(backend, "_comm_ptr", None)
    if fn is None:
        return 0
    try:
        return int(fn())
    except Exception:
        return 0


def _vote_device(group, device: int | None) -> torch.device:
    """Where the group's collectives for the vote run: CPU when the group has a CPU backend (gloo), else its GPU."""
    try:
        group._get_backend(torch.device("cpu"))
        return torch.device("cpu")
    except Exception:
        return torch.device("cuda", device if device is not None else torch.cuda.current_device())


def _all_ranks(group, flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


def _bootstrap_plan(group, read_comm_ptr: Callable[[], int], make_unique_id: Callable[[], bytes],
                    device: int | None = None) -> BootstrapPlan:
    """Collective over `group`: adopt its NCCL communicator when every rank has one, else share a new ncclUniqueId."""
    import torch.distributed as dist

    vote_on = _vote_device(group, device)
    ptr = read_comm_ptr()
    if _all_ranks(group, ptr != 0, vote_on):
        return BootstrapPlan("adopt", nccl_comm=ptr)
    if vote_on.type == "cuda":
        # The vote itself ran through the group's NCCL backend, whose (lazily created) communicator exists now.
        ptr = read_comm_ptr()
        if _all_ranks(group, ptr != 0, vote_on):
            return BootstrapPlan("adopt", nccl_comm=ptr)
    obj = [make_unique_id() if group.rank() == 0 else None]
    dist.broadcast_object_list(obj, group=group, group_src=0, device=vote_on)
    return BootstrapPlan("create", unique_id=obj[0])


def _group_device(group, device) -> int:
    if device is not None:
        d = torch.device(device)
        if d.type != "cuda":
            raise invalid_argument("device", f"must be a CUDA device, got {d}")
        return d.index if d.index is not None else torch.cuda.current_device()
    bound = getattr(group, "bound_device_id", None)
    if bound is not None and bound.type == "cuda" and bound.index is not None:
        return bound.index
    return torch.cuda.current_device()


def init(group=None, *, device=None, **options) -> Communicator:
    """The tpcomm communicator of a torch.distributed process group (default: the world), created on first use
    (collective: every rank of the group calls it) and cached by the group's name.

    device: this rank's GPU (default: the group's bound device, else the current device).
    options: tpcomm::CommOptions fields (timeout_s, force_nccl, two_shot_max_bytes, one_shot_max_bytes,
    lamport_max_bytes, copy_engine_max_bytes); they apply when the communicator is created.
    """
    import torch.distributed as dist

    if group is None:
        if not dist.is_initialized():
            raise invalid_argument("group", "torch.distributed is not initialized (call init_process_group first, or "
                                            "pass a tpcomm communicator)")
        group = dist.group.WORLD
    name = group.group_name
    with _lock:
        if name in _groups:
            return _groups[name]
        opts = _options(options)
        dev = _group_device(group, device)
        with torch.cuda.device(dev):
            plan = _bootstrap_plan(group, lambda: _nccl_comm_ptr(group, dev), _C.nccl_unique_id, dev)
            if plan.kind == "adopt":
                native = _C.Communicator.adopt(plan.nccl_comm, opts)
                owner = "torch"
            else:
                native = _C.Communicator.create(group.rank(), group.size(), dev, plan.unique_id, opts)
                owner = "tpcomm"
        return _register(Communicator(native, name, owner, group))


def loopback_world(world_size: int, device=None, **options) -> list[Communicator]:
    """A loopback world: `world_size` ranks in this process, all on one GPU (default: the current device). Element i is
    rank i; drive each from its own thread (every collective needs all ranks), with that thread's current stream.
    Each rank registers under its own group name (comm.group_name). For correctness tests: ranks share one GPU."""
    opts = _options(options)
    dev = _group_device(None, device) if device is not None else torch.cuda.current_device()
    natives = _C.Communicator.create_loopback(world_size, dev, opts)
    wid = next(_loopback_ids)
    with _lock:
        return [_register(Communicator(c, f"tpcomm_loopback{wid}/rank{r}", "loopback")) for r, c in enumerate(natives)]


def get_communicator(group=None) -> Communicator:
    """`group` as a tpcomm Communicator: a Communicator, a registered group name, or a torch.distributed process
    group (created with init() if needed); None means the world group."""
    if isinstance(group, Communicator):
        return group
    if isinstance(group, str):
        with _lock:
            if group in _groups:
                return _groups[group]
        raise invalid_argument("group_name", f"no tpcomm communicator for group '{group}' (create one first: "
                                             "tpcomm.init(group) or tpcomm.loopback_world(n))")
    return init(group)


def group_name_of(group=None) -> str:
    """The name the torch ops take for `group` (see get_communicator)."""
    if isinstance(group, str):
        return group
    return get_communicator(group).group_name


def communicators() -> list[Communicator]:
    with _lock:
        return list(_groups.values())


def shutdown() -> None:
    """Destroys every communicator tpcomm made or adopted (run at interpreter exit; call it before
    torch.distributed.destroy_process_group when tpcomm adopted a group's NCCL communicator)."""
    with _lock:
        comms = list(_groups.values())
        _groups.clear()
    for c in comms:
        _C.unregister_group(c.group_name)
        try:
            c._c.destroy()
        except Exception as e:  # in flight or broken: logged, the process is ending anyway
            from ._logging import logger

            logger.warning("tpcomm.shutdown: %s: %s", c.group_name, e)
