"""gencore.ood.distributed.knn: two gloo processes on one machine against the
single-process op on the concatenated bank.

One spawn runs every case (process start-up and torch import dominate the
time). Exact equality of values and indices is demanded on integer-valued
data, where every distance is exact in float32, so ties exist and the tie
rule (lower global index first) is tested; random float64 data checks the
general case, with values compared to tolerance (a shard's GEMM may round a
pair differently from the full bank's).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import gencore
from gencore.ood import distributed

from tests._distributed import spawn

from ._dist_worker import CASES, WORLD, case_data, run


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return spawn(run, tmp_path_factory.mktemp("dist"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("name", sorted(CASES))
def test_sharded_knn_equals_single_process(rank_results, name):
    local0, local1, queries, k, metric = case_data(name)
    expected_values, expected_indices = gencore.ood.knn(queries, torch.cat([local0, local1]), k, metric)
    for rank in range(WORLD):
        values, indices = rank_results[rank][name]
        if CASES[name][4] == torch.float64:
            # Random float64 data has no near-ties at this size, so indices match exactly.
            torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-12)
            assert torch.equal(indices, expected_indices), (rank, name)
        elif metric == "cosine" and gencore.info()["ops"]["ood.knn"]["cpu"]["float32"] == "reference":
            # The reference normalizes rows before a torch matmul whose rounding
            # depends on the tile's shape, so shards agree to rounding, not bits.
            torch.testing.assert_close(values, expected_values, rtol=2e-7, atol=0)
            assert torch.equal(indices, expected_indices), (rank, name)
        else:
            assert torch.equal(values, expected_values), (rank, name)
            assert torch.equal(indices, expected_indices), (rank, name)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_errors_are_raised_on_every_rank(rank_results):
    for rank in range(WORLD):
        assert "k=81 exceeds the global bank size N=80" in rank_results[rank]["error"]


def test_needs_an_initialized_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.knn(torch.zeros(1, 2), torch.zeros(3, 2), 1)
