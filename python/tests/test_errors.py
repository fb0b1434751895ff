"""tpcomm::Error -> tpcomm.TpcommError mapping (class per code, `.code`, message unchanged), errors raised by the Python
layer (same format: "<code>: <argument>: <message>"), and what crosses the torch dispatcher."""

import logging
import pickle

import pytest
import torch

import tpcomm
from tpcomm import _C, _errors

CLASSES = {
    1: (tpcomm.InvalidArgumentError, "invalid_argument", ValueError),
    2: (tpcomm.UnsupportedError, "unsupported", NotImplementedError),
    3: (tpcomm.CudaError, "cuda_error", None),
    4: (tpcomm.NcclError, "nccl_error", None),
    5: (tpcomm.CommTimeoutError, "timeout", None),
    6: (tpcomm.MismatchError, "mismatch", None),
    7: (tpcomm.InvalidStateError, "invalid_state", None),
    8: (tpcomm.InternalError, "internal", None),
}


def test_code_names_are_the_library_s():
    assert _C.error_code_names() == {code: name for code, (_, name, _) in CLASSES.items()}
    assert {int(c) for c in tpcomm.ErrorCode} == set(CLASSES)


@pytest.mark.parametrize("code", sorted(CLASSES))
def test_native_error_maps_to_class_with_code_and_unchanged_message(code):
    cls, name, builtin = CLASSES[code]
    with pytest.raises(cls) as info:
        _C._raise(code, "rank 3 did not arrive")
    e = info.value
    assert type(e) is cls and isinstance(e, tpcomm.TpcommError) and isinstance(e, RuntimeError)
    assert e.code == code and e.code is tpcomm.ErrorCode(code)
    assert str(e) == f"{name}: rank 3 did not arrive"  # tpcomm::Error::what(), unchanged
    if builtin is not None:
        assert isinstance(e, builtin)
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and again.code == code and str(again) == str(e)


def test_library_validation_message_names_the_argument():
    with pytest.raises(tpcomm.InvalidArgumentError, match=r"^invalid_argument: algo: unknown all-reduce algorithm 'x'"):
        _C.parse_all_reduce_algo("x")
    with pytest.raises(tpcomm.InvalidArgumentError, match=r"^invalid_argument: engine: unknown async-TP engine 'x'"):
        _C.parse_async_tp_engine("x")
    with pytest.raises(tpcomm.InvalidArgumentError, match=r"^invalid_argument: reduce_op: "):
        _C.parse_reduce_op("prod", "reduce_op")
    assert _C.parse_all_reduce_algo("auto") == "auto" and _C.parse_async_tp_engine("native") == "native"


def test_dispatcher_runtime_error_is_re_raised_as_tpcomm_error():
    def op():
        raise RuntimeError("unsupported: engine: native needs sm_90")  # what a C++ throw through torch.ops looks like

    with pytest.raises(tpcomm.UnsupportedError) as info:
        _errors._call(op)
    assert info.value.code == tpcomm.ErrorCode.UNSUPPORTED and str(info.value) == "unsupported: engine: native needs sm_90"

    def other():
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError) as info:
        _errors._call(other)
    assert not isinstance(info.value, tpcomm.TpcommError)


def test_cpu_tensor_has_no_kernel():
    with pytest.raises(NotImplementedError, match="CPU"):
        torch.ops.tpcomm.all_reduce(torch.ones(4), "sum", "g")


def test_python_layer_errors():
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: group_name: no tpcomm communicator for "
                                                          "group 'nope'"):
        tpcomm.get_communicator("nope")
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: group_name: no tpcomm communicator"):
        tpcomm.ops.fused_matmul_reduce_scatter(torch.empty(8, 4, device="meta"), torch.empty(4, 4, device="meta"),
                                               "sum", 0, "nope2")
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: colour: unknown communicator option"):
        tpcomm.loopback_world(2, colour=1)
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: level: unknown log level 'loud'"):
        tpcomm.set_log_level("loud")
    with pytest.raises(tpcomm.InvalidArgumentError, match="^invalid_argument: t: is not in tpcomm symmetric memory"):
        tpcomm.symm.rendezvous(torch.ones(4))


def test_log_lines_reach_python_logging(caplog):
    with caplog.at_level(logging.DEBUG, logger="tpcomm"):
        _C.log(1, "warn line")
        _C.log(0, "error line")
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("tpcomm", logging.WARNING, "warn line") in got and ("tpcomm", logging.ERROR, "error line") in got


def test_log_level_filters_in_the_library(caplog):
    old = _C.log_level()
    try:
        tpcomm.set_log_level("error")
        with caplog.at_level(logging.DEBUG, logger="tpcomm"):
            _C.log(1, "dropped")
            _C.log(0, "kept")
        msgs = [r.getMessage() for r in caplog.records]
        assert "kept" in msgs and "dropped" not in msgs
        tpcomm.set_log_level(logging.DEBUG)
        assert _C.log_level() == 3
    finally:
        _C.set_log_level(old)
