"""Shared fixtures. CPU tests run everywhere (CI); GPU tests skip with the reason when there is no CUDA device."""

import pytest
import torch

WORLD = 4  # the fake process group's size (shape arithmetic of the fakes needs a world size > 1)


@pytest.fixture(scope="session")
def fake_group():
    """A torch.distributed 'fake' process group of WORLD ranks (this process is rank 0): the group name the ops take,
    resolvable by the fake implementations, with no communication and no GPU."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not dist.is_initialized():
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    return dist.group.WORLD.group_name


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


requires_gpu = pytest.mark.skipif(gpu_count() < 1, reason="no CUDA device")
