"""Fixtures of the distributed tests: ``run_ranks`` runs a test body in W gloo processes.

Children are forked from the test process (torch is already imported: starting 4
processes costs milliseconds, not 4 torch imports) and meet through a file store in a
temporary directory, so parallel test workers never fight over a TCP port. An exception
(or a failed assert) on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn, world: int, store_path: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout_s: float = 120.0) -> None:
    """``fn(rank, world, *args)`` in ``world`` processes of one gloo group; raises on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        ctx = mp.start_processes(_entry, args=(fn, world, store, args), nprocs=world, join=False, start_method="fork")
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=1.0):  # raises ProcessRaisedException when a rank failed
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                raise TimeoutError(f"{world} ranks did not finish within {timeout_s:.0f} s (a collective hung?)")


@pytest.fixture
def ranks():
    """``ranks(fn, world, *args)``: ``fn(rank, world, *args)`` on ``world`` gloo processes."""
    return run_ranks
