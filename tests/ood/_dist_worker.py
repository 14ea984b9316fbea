"""Worker of test_distributed.py, in its own module so spawned children import
only torch and gencore (not pytest and the test module): start-up dominates
that test's time."""
from __future__ import annotations

import torch

from gencore.ood import distributed

from tests._distributed import WORLD, gloo_group, save  # noqa: F401 - WORLD is part of this module's interface


# name -> (rows of rank 0, rows of rank 1, k, metric, dtype)
CASES = {
    "even-l2": (40, 40, 7, "l2", torch.float32),
    "uneven-sqeuclidean": (3, 50, 10, "sqeuclidean", torch.float32),
    "rank0-empty": (0, 30, 5, "l2", torch.float32),
    "rank1-empty": (25, 0, 25, "ip", torch.float32),
    "k-above-both-shards": (6, 9, 12, "l2", torch.float32),
    "cosine": (17, 23, 8, "cosine", torch.float32),
    "float64": (31, 12, 20, "l2", torch.float64),
}


def case_data(name):
    """(rank 0 shard, rank 1 shard, queries, k, metric) of a case, the same in every process."""
    n0, n1, k, metric, dtype = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if dtype == torch.float64:
        bank = torch.randn(n0 + n1, 6, generator=g, dtype=dtype)
        queries = torch.randn(9, 6, generator=g, dtype=dtype)
    else:  # small integers: exact arithmetic, many ties
        bank = torch.randint(-2, 3, (n0 + n1, 6), generator=g).to(dtype)
        queries = torch.randint(-2, 3, (9, 6), generator=g).to(dtype)
    return bank[:n0], bank[n0:], queries, k, metric


def run(rank, init_file, out_dir):
    with gloo_group(rank, init_file):
        results = {}
        for name in CASES:
            shards = case_data(name)
            results[name] = distributed.knn(shards[2], shards[rank], shards[3], shards[4])
        # Errors are raised on every rank alike (no rank is left waiting).
        shards = case_data("even-l2")
        try:
            distributed.knn(shards[2], shards[rank], 81, "l2")
        except ValueError as exc:
            results["error"] = str(exc)
        save(results, rank, out_dir)
