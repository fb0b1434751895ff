"""What `pip install` puts in place: the native module and the C++ package inside the wheel (headers, libtpcomm,
find_package(tpcomm) config), and the public Python names."""

import os

import tpcomm


def test_cpp_package_is_installed_with_the_wheel():
    cfg = os.path.join(tpcomm.cmake_prefix_path, "tpcomm", "tpcommConfig.cmake")
    assert os.path.isfile(cfg), cfg
    assert os.path.isfile(os.path.join(tpcomm.get_include(), "tpcomm", "tpcomm.h"))
    assert os.path.isfile(os.path.join(tpcomm.get_include(), "tpcomm", "async_tp.h"))
    libdir = os.path.join(os.path.dirname(tpcomm._C.__file__), "lib")
    assert any(f.startswith("libtpcomm.so") for f in os.listdir(libdir))


def test_public_names():
    for name in tpcomm.__all__:
        assert hasattr(tpcomm, name), name
    for name in ["empty", "rendezvous", "SymmetricMemory"]:
        assert hasattr(tpcomm.symm, name)
    for name in tpcomm.ops.__all__:
        assert callable(getattr(tpcomm.ops, name))
    assert tpcomm.Error is tpcomm.TpcommError
