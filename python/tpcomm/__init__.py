"""tpcomm for PyTorch: symmetric memory, all-reduce faster than NCCL, and async tensor parallelism (fused
all-gather + GEMM, GEMM + reduce-scatter) on NVLink-connected GPUs, as torch ops.

    import torch, torch.distributed as dist, tpcomm
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    comm = tpcomm.init()                                   # this group's communicator (adopts torch's NCCL comm)
    y = tpcomm.all_reduce(x)                               # torch.ops.tpcomm.all_reduce(x, "sum", comm.group_name)
    A, [out] = tpcomm.ops.fused_all_gather_matmul(a_shard, [w.t()], 0, comm.group_name)

Modules: tpcomm.ops (async TP, torch.ops.symm_mem's signatures), tpcomm.symm (symmetric memory), tpcomm.all_reduce /
CustomAllReduce (vLLM's shape). Errors are tpcomm.TpcommError subclasses with `.code`; library logs go to the
"tpcomm" logger.
"""

from __future__ import annotations

import atexit as _atexit
import os as _os

# torch first: it loads the CUDA runtime, cuBLASLt and NCCL libraries libtpcomm links to (same sonames), so tpcomm
# and torch share one NCCL (an adopted ncclComm_t must come from the same library).
import torch as _torch  # noqa: F401

from . import _C
from . import _errors
from ._errors import (CommTimeoutError, CudaError, Error, ErrorCode, InternalError, InvalidArgumentError,
                      InvalidStateError, MismatchError, NcclError, TpcommError, UnsupportedError)

_C._set_error_factory(_errors._from_code)
_errors._PREFIXES.update({name: code for code, name in _C.error_code_names().items()})

from . import _logging  # noqa: E402
from ._logging import logger, set_log_level  # noqa: E402

_logging.install()

from . import _fake  # noqa: E402,F401  (registers the fake implementations)
from . import ops, symm  # noqa: E402
from ._all_reduce import CustomAllReduce, all_reduce, all_reduce_  # noqa: E402
from ._comm import (Communicator, communicators, get_communicator, group_name_of, init,  # noqa: E402
                    loopback_world, shutdown)

__version__ = "0.1.0"

# The C++ package inside the wheel: find_package(tpcomm) with CMAKE_PREFIX_PATH=tpcomm.cmake_prefix_path.
_native_dir = _os.path.dirname(_os.path.abspath(_C.__file__))
cmake_prefix_path = _os.path.join(_native_dir, "lib", "cmake")


def get_include() -> str:
    """The C++ headers (tpcomm/*.h) installed with the package."""
    return _os.path.join(_native_dir, "include")


def _at_exit() -> None:
    # While CUDA and the interpreter are alive: free the communicators, then stop calling into Python for logs.
    shutdown()
    _logging.uninstall()


_atexit.register(_at_exit)

__all__ = [
    "init", "loopback_world", "get_communicator", "group_name_of", "communicators", "shutdown", "Communicator",
    "all_reduce", "all_reduce_", "CustomAllReduce", "ops", "symm",
    "TpcommError", "Error", "ErrorCode", "InvalidArgumentError", "UnsupportedError", "CudaError", "NcclError",
    "CommTimeoutError", "MismatchError", "InvalidStateError", "InternalError", "logger", "set_log_level",
    "cmake_prefix_path", "get_include",
]
