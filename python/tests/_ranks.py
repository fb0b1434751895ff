"""Running the ranks of a loopback world: one thread per rank, each on its own CUDA stream (collectives need every rank
at once; a hang becomes a test failure after `timeout_s`)."""

from __future__ import annotations

import threading

import torch


def run_ranks(comms, fn, timeout_s: float = 120.0):
    """fn(rank, comm) on one thread per rank inside `torch.cuda.stream(its stream)`; the stream is synchronized and
    comm.check() called before the thread ends. Returns the results by rank; re-raises the first exception."""
    results = [None] * len(comms)
    errors = [None] * len(comms)

    def body(r):
        c = comms[r]
        try:
            torch.cuda.set_device(c.device)
            s = torch.cuda.Stream(c.device)
            with torch.cuda.stream(s):
                results[r] = fn(r, c)
            s.synchronize()
            c.check()
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors[r] = e

    # Inputs were made on the caller's stream; the ranks' streams must see them complete.
    torch.cuda.synchronize()
    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(len(comms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"ranks still running after {timeout_s} s: "
                           f"{[r for r, t in enumerate(threads) if t.is_alive()]}")
    for e in errors:
        if e is not None:
            raise e
    return results


def rank_randn(rank: int, *shape, dtype=torch.bfloat16, device="cuda", seed: int = 0) -> torch.Tensor:
    """Fresh random data, different on every rank and call site (never zeros)."""
    g = torch.Generator(device="cpu").manual_seed(1000 * seed + rank)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
