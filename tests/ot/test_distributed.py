"""gencore.ot.distributed: two gloo processes on one machine against the
single-process ``gencore.ot.sinkhorn`` / ``sinkhorn_divergence`` on the
concatenated clouds.

One spawn runs every case (process start-up and torch import dominate the
time). The softmin's partial sums merge across shards in another order than
the single-process op sums them, so potentials agree to rounding: 1e-5
relative in float32, 1e-10 in float64; the iteration count, the status and the
stopping decision agree exactly.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import gencore
from gencore.ot import distributed

from tests._distributed import spawn

from ._dist_worker import CASES, GRADIENT_CASES, WORLD, case_data, gradient_inputs

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    from ._dist_worker import run

    return spawn(run, tmp_path_factory.mktemp("ot_dist"))


def _tolerance(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-10


def _close(actual, expected, rtol, what):
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-3), msg=what)


def _single(name):
    xs, ys, a_s, b_s, kwargs = case_data(name)
    x, y = torch.cat(xs), torch.cat(ys)
    a = None if a_s is None else torch.cat(a_s)
    b = None if b_s is None else torch.cat(b_s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # every case converges
        if CASES[name][5].get("divergence"):
            return gencore.ot.sinkhorn_divergence(x, y, a, b, **kwargs)
        return gencore.ot.sinkhorn(x, y, a, b, **kwargs)


@pytest.mark.parametrize("name", sorted(n for n in CASES if not CASES[n][5].get("divergence")))
def test_sharded_sinkhorn_equals_single_process(rank_results, name):
    nx0, nx1, ny0, ny1, dtype, _ = CASES[name]
    rtol = _tolerance(dtype)
    expected = _single(name)
    assert expected.converged
    x_rows = [slice(0, nx0), slice(nx0, nx0 + nx1)]
    y_rows = [slice(0, ny0), slice(ny0, ny0 + ny1)]
    for rank in range(WORLD):
        got = SimpleNamespace(**rank_results[rank][name])
        assert got.n_iter == expected.n_iter, (rank, got.n_iter, expected.n_iter)
        assert (got.status, got.converged, got.eps) == (expected.status, expected.converged, expected.eps)
        assert got.f.dtype == got.g.dtype == expected.f.dtype
        assert got.f.shape == expected.f[x_rows[rank]].shape and got.g.shape == expected.g[y_rows[rank]].shape
        _close(got.f, expected.f[x_rows[rank]], rtol, f"f on rank {rank}")
        _close(got.g, expected.g[y_rows[rank]], rtol, f"g on rank {rank}")
        _close(got.cost, expected.cost, rtol, f"cost on rank {rank}")
        # The error sums |1 - exp((f - f~) / eps)|: rounding of f over eps, ~1e-5 in float32.
        if dtype == torch.float32:
            assert got.marginal_error == pytest.approx(expected.marginal_error, abs=2e-5)
        else:
            assert got.marginal_error == pytest.approx(expected.marginal_error, rel=1e-6)


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][5].get("divergence")))
def test_sharded_divergence_equals_single_process(rank_results, name):
    expected = _single(name)
    for rank in range(WORLD):
        _close(rank_results[rank][name], expected, _tolerance(CASES[name][4]), f"divergence on rank {rank}")


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_gradients_equal_single_process(rank_results, name):
    # Each rank's backward() gives the gradient to its own shard; a shared whitening matrix gets
    # one share per rank, summing to the single-process gradient.
    x, y, a, b, kwargs = gradient_inputs(name)
    fn = gencore.ot.sinkhorn_divergence if CASES[name][5].get("divergence") else gencore.ot.sinkhorn
    out = fn(x, y, a, b, **kwargs)
    (out if isinstance(out, torch.Tensor) else out.cost).backward()
    nx0, _, ny0, _, dtype, _ = CASES[name]
    rtol = 1e-4 if dtype == torch.float32 else 1e-9
    rows = {"x": (slice(0, nx0), slice(nx0, None)), "y": (slice(0, ny0), slice(ny0, None))}
    rows.update(a=rows["x"], b=rows["y"])
    expected = {"x": x.grad, "y": y.grad, "a": None if a is None else a.grad, "b": None if b is None else b.grad}
    for key, want in expected.items():
        for rank in range(WORLD):
            got = rank_results[rank]["gradients"][name][key]
            if want is None:
                assert got is None, (key, rank)
            else:
                _close(got, want[rows[key][rank]], rtol, f"d/d{key} on rank {rank}")
    if "whitening" in kwargs:
        shares = [rank_results[rank]["gradients"][name]["whitening"] for rank in range(WORLD)]
        _close(shares[0] + shares[1], kwargs["whitening"].grad, rtol, "d/dW summed over the ranks")


def test_default_weights_are_global_uniform(rank_results):
    # "uneven-float32" passes no weights; shards of 7 and 61 points: 1/68 each, not 1/7 and 1/61.
    nx0, nx1, ny0, ny1, _, _ = CASES["uneven-float32"]
    xs, ys, _, _, kwargs = case_data("uneven-float32")
    a = torch.full((nx0 + nx1,), 1.0 / (nx0 + nx1))
    b = torch.full((ny0 + ny1,), 1.0 / (ny0 + ny1))
    explicit = gencore.ot.sinkhorn(torch.cat(xs), torch.cat(ys), a, b, **kwargs)
    _close(rank_results[1]["uneven-float32"]["cost"], explicit.cost, 1e-5, "cost")


@pytest.mark.parametrize("case, message", [
    ("dims", "x_local.shape[1] (the feature dimension) must be the same on every rank, got [3, 2]"),
    ("nan", "bad input on 1 rank(s): rank 1: ValueError: y_local contains NaN"),
    ("weights-on-one-rank", "a_local (given or None) must be the same on every rank"),
    ("empty", "x_local is empty on every rank"),
    ("unbalanced-mass", "balanced OT needs sum(a) == sum(b) over all ranks"),
    ("unbalanced-weight-grad", "rank 0: ValueError: no gradient with respect to the weights of unbalanced OT"),
])
def test_bad_input_raises_on_every_rank(rank_results, case, message):
    for rank in range(WORLD):
        error = rank_results[rank]["errors"][case]
        assert error.startswith("ValueError: gencore.ot.distributed.sinkhorn: ") and message in error, (rank, error)


def test_streams_one_visiting_shard_at_a_time(rank_results):
    # "uneven-float32": x shards of 7 and 61 points, y shards of 45 and 3; never the clouds of 68 and 48
    for rank in range(WORLD):
        assert rank_results[rank]["visiting-sizes"] == [3, 7, 45, 61], rank


def test_group_usable_after_errors(rank_results):
    xs, ys, _, _, kwargs = case_data("even-float32")
    expected = gencore.ot.sinkhorn(torch.cat(xs), torch.cat(ys), **kwargs).cost
    for rank in range(WORLD):
        _close(rank_results[rank]["after-errors"], expected, 1e-5, "cost")


def test_needs_an_initialized_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.sinkhorn(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match="sinkhorn_divergence needs an initialized"):
        distributed.sinkhorn_divergence(torch.zeros(3, 2), torch.zeros(3, 2))


def test_lazy_import():
    assert gencore.ot.distributed is distributed
