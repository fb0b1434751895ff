"""tpcomm's exceptions: the C++ library throws one type, tpcomm::Error(code, message); Python gets TpcommError (a
RuntimeError) of the subclass for the code, with `.code` and the library's message unchanged (it starts with the code's
name and names the offending argument or rank)."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """tpcomm::ErrorCode (include/tpcomm/error.h)."""

    INVALID_ARGUMENT = 1
    UNSUPPORTED = 2
    CUDA_ERROR = 3
    NCCL_ERROR = 4
    TIMEOUT = 5
    MISMATCH = 6
    INVALID_STATE = 7
    INTERNAL = 8


class TpcommError(RuntimeError):
    """Base of every tpcomm error. `code` is an ErrorCode; str(e) is the library's message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __reduce__(self):  # picklable across processes (torch.multiprocessing, torchrun error files)
        return (_from_code, (int(self.code), self.message))


class InvalidArgumentError(TpcommError, ValueError):
    """A caller-supplied value is wrong; the message starts with the argument's name."""


class UnsupportedError(TpcommError, NotImplementedError):
    """A valid request this build or topology cannot run (a pinned fast path, an engine, a dtype)."""


class CudaError(TpcommError):
    """A CUDA runtime or driver call failed."""


class NcclError(TpcommError):
    """An NCCL call failed."""


class CommTimeoutError(TpcommError):
    """A device-side wait timed out; the message names the rank that did not arrive."""


class MismatchError(TpcommError):
    """Ranks disagree (e.g. different sizes for one collective)."""


class InvalidStateError(TpcommError):
    """Use after destroy, destroy with work in flight, or a communicator broken by an earlier timeout."""


class InternalError(TpcommError):
    """A tpcomm bug."""


Error = TpcommError

_CLASSES = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.UNSUPPORTED: UnsupportedError,
    ErrorCode.CUDA_ERROR: CudaError,
    ErrorCode.NCCL_ERROR: NcclError,
    ErrorCode.TIMEOUT: CommTimeoutError,
    ErrorCode.MISMATCH: MismatchError,
    ErrorCode.INVALID_STATE: InvalidStateError,
    ErrorCode.INTERNAL: InternalError,
}


def _from_code(code: int, message: str) -> TpcommError:
    """The exception for a tpcomm::Error (the native module raises what this returns)."""
    try:
        cls = _CLASSES[ErrorCode(code)]
    except ValueError:
        cls, code = InternalError, ErrorCode.INTERNAL
    return cls(code, message)


# "<code name>: " -> code, filled from the library's own names at import (tpcomm/__init__.py).
_PREFIXES: dict[str, int] = {}


def _from_runtime_error(e: BaseException) -> TpcommError | None:
    """A torch op's RuntimeError carrying a tpcomm::Error (the dispatcher turns the C++ exception into RuntimeError with
    what() as the message, which starts with the code's name) as a TpcommError; None when it is not one."""
    if isinstance(e, TpcommError) or not isinstance(e, RuntimeError):
        return None
    msg = str(e)
    head, sep, _ = msg.partition(": ")
    if not sep or head not in _PREFIXES:
        return None
    return _from_code(_PREFIXES[head], msg)


def _call(op, *args, **kwargs):
    """Calls a torch op, re-raising a tpcomm::Error that crossed the dispatcher as its TpcommError."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as e:
        err = _from_runtime_error(e)
        if err is None:
            raise
        raise err from None


def _make(code: ErrorCode, arg: str, message: str) -> TpcommError:
    """An error raised by the Python layer itself, in the library's format: "<code>: <arg>: <message>"."""
    names = {v: k for k, v in _PREFIXES.items()}
    return _from_code(code, f"{names.get(int(code), code.name.lower())}: {arg}: {message}")


def invalid_argument(arg: str, message: str) -> InvalidArgumentError:
    return _make(ErrorCode.INVALID_ARGUMENT, arg, message)  # type: ignore[return-value]
