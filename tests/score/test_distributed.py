"""gencore.score.distributed: two gloo processes on one machine against the
single-process data-set denoiser on the concatenated data set.

The merge is a log-sum-exp of the ranks' partial results; it equals the single
process up to the rounding of adding the same terms in another order."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gencore.score import dataset_denoiser, dataset_log_density, distributed

from tests._distributed import spawn

from ._dist_worker import CASES, WORLD, case_data, run


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return spawn(run, tmp_path_factory.mktemp("dist"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("name", sorted(CASES))
def test_sharded_equals_single_process(rank_results, name):
    d0, d1, w0, w1, x, sigma = case_data(name)
    weights = None if w0 is None else torch.cat([w0, w1])
    want_d = dataset_denoiser(x, torch.cat([d0, d1]), sigma, weights)
    want_lp = dataset_log_density(x, torch.cat([d0, d1]), sigma, weights)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-5
    for rank in range(WORLD):
        got_d, got_lp = rank_results[rank][name]
        torch.testing.assert_close(got_d, want_d, rtol=tol, atol=tol)
        torch.testing.assert_close(got_lp, want_lp, rtol=tol, atol=tol * float(want_lp.abs().max()))


def test_needs_an_initialized_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.dataset_denoiser(torch.zeros(1, 2), torch.zeros(3, 2), 1.0)
