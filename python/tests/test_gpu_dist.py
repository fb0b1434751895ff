"""torchrun GPU tests: dist_worker.py on 1 process (every GPU machine) and on 2 processes (machines with 2 GPUs)."""

import os
import subprocess
import sys

import pytest

from conftest import gpu_count

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun(nproc):
    if gpu_count() < nproc:
        pytest.skip(f"needs {nproc} CUDA device(s), found {gpu_count()}")
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        WORKER], env=env, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert out.count("tpcomm dist worker: ok") == nproc, out[-6000:]
