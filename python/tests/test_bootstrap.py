"""The ProcessGroup bootstrap decision (tpcomm.init) on CPU: two processes over a gloo group vote on whether every rank
has an NCCL communicator to adopt; otherwise rank 0's ncclUniqueId reaches every rank. The communicator pointers and
unique ids are stand-ins: what is tested is the collective decision, not NCCL."""

import json
import os
import sys

import pytest
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(rank, world, init_file, out_dir, ptrs):
    sys.path.insert(0, HERE)
    import torch.distributed as dist

    from tpcomm import _comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        group = dist.group.WORLD
        made = []

        def make_uid():
            made.append(rank)
            return bytes([65 + rank]) * 128

        plan = _comm._bootstrap_plan(group, lambda: ptrs[rank], make_uid)
        res = {"kind": plan.kind, "ptr": plan.nccl_comm, "uid": plan.unique_id.decode() if plan.unique_id else "",
               "made": made, "vote_device": str(_comm._vote_device(group, None))}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def run(tmp_path, ptrs):
    init_file = tmp_path / "init"
    mp.spawn(_worker, args=(2, str(init_file), str(tmp_path), ptrs), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_adopts_when_every_rank_has_a_comm(tmp_path):
    r0, r1 = run(tmp_path, [0x1000, 0x2000])
    assert (r0["kind"], r0["ptr"]) == ("adopt", 0x1000)
    assert (r1["kind"], r1["ptr"]) == ("adopt", 0x2000)
    assert r0["made"] == r1["made"] == []  # no unique id made
    assert r0["vote_device"] == "cpu"      # a gloo group votes on CPU tensors


def test_creates_from_rank0_unique_id_when_one_rank_has_none(tmp_path):
    r0, r1 = run(tmp_path, [0x1000, 0])
    assert r0["kind"] == r1["kind"] == "create"
    assert r0["uid"] == r1["uid"] == "A" * 128  # rank 0's id, broadcast
    assert r0["made"] == [0] and r1["made"] == []
