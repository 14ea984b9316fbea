"""Worker of test_distributed.py, in its own module so spawned children import
only torch and gencore (not pytest and the test module)."""
from __future__ import annotations

import torch

from gencore.score import distributed

from tests._distributed import WORLD, gloo_group, save  # noqa: F401 - WORLD is part of this module's interface


# name -> (rows of rank 0, rows of rank 1, weighted, sigma, dtype)
CASES = {
    "even": (60, 60, False, 0.7, torch.float64),
    "uneven-weighted": (5, 200, True, 0.3, torch.float64),
    "rank0-empty": (0, 40, False, 1.5, torch.float64),
    "rank1-empty-tiny-sigma": (50, 0, True, 1e-3, torch.float64),
    "float32": (300, 123, True, 0.5, torch.float32),
}


def case_data(name):
    """(rank 0 shard, rank 1 shard, weights 0, weights 1, queries, sigma), the same in every process."""
    n0, n1, weighted, sigma, dtype = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    data = torch.randn(n0 + n1, 5, generator=g, dtype=torch.float64).to(dtype)
    weights = (torch.rand(n0 + n1, generator=g, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    queries = torch.randn(7, 5, generator=g, dtype=torch.float64).to(dtype)
    w0, w1 = (None, None) if weights is None else (weights[:n0], weights[n0:])
    return data[:n0], data[n0:], w0, w1, queries, sigma


def run(rank, init_file, out_dir):
    with gloo_group(rank, init_file):
        results = {}
        for name in CASES:
            d0, d1, w0, w1, x, sigma = case_data(name)
            local, w = (d0, w0) if rank == 0 else (d1, w1)
            results[name] = (distributed.dataset_denoiser(x, local, sigma, w),
                             distributed.dataset_log_density(x, local, sigma, w))
        save(results, rank, out_dir)
