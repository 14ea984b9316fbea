"""Two gloo processes on one machine, for the tests of the sharded ops.

``spawn(run, tmp)`` starts ``run(rank, init_file, out_dir)`` in WORLD spawned
processes and returns what each saved; a worker wraps its body in
``gloo_group(rank, init_file)`` and ends with ``save(results, rank, out_dir)``.
Workers live in their own modules so the children import torch and gencore,
not pytest and the test module (start-up dominates those tests' time).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gencore

WORLD = 2


def spawn(run, tmp) -> list:
    mp.start_processes(run, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@contextlib.contextmanager
def gloo_group(rank: int, init_file: str):
    """A WORLD-process gloo group, one thread per process for torch and gencore."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        gencore.set_num_threads(1)
        yield
    finally:
        dist.destroy_process_group()


def save(results, rank: int, out_dir: str) -> None:
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
