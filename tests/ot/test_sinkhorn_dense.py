"""The dense Sinkhorn op (gencore::ot_sinkhorn_dense) behind ``sinkhorn_cost_matrix``.

Oracles: ``reference.sinkhorn_dense`` (torch logsumexp over the dense matrix) on
fresh random problems over many shapes, every SIMD level and both thread
layouts (threads over problems, threads inside one problem); POT's
``sinkhorn_log`` where installed; the CUDA glue over tests/cuda_fake.py.
Float64 problems must agree to rounding, iteration counts included; float32
ones are compared at a fixed iteration count (tol = 0 and few iterations, so
no stopping decision sits within rounding of tol) and, run to tolerance, by
their plans.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gencore import ot as got
from gencore.ot import reference
from gencore.ot.ops._sinkhorn_dense import SINKHORN_DENSE

SHAPES = [(1, 1, 1), (1, 1, 17), (1, 33, 1), (3, 7, 19), (2, 64, 129), (5, 100, 31), (1, 300, 260)]


def problem(rng, B, n, m, dtype=torch.float64, zeros=0):
    cost = torch.rand(B, n, m, generator=rng, dtype=torch.float64)
    a = torch.rand(B, n, generator=rng, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=rng, dtype=torch.float64) + 0.1
    if zeros and n > zeros and m > zeros:
        a[:, :zeros] = 0.0   # points without mass
        b[:, -zeros:] = 0.0
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype)


def native(*args):
    return SINKHORN_DENSE.implementation("native-cpu")(*args)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_float64_matches_the_reference_to_tolerance(rng, num_threads, shape, threads):
    num_threads(threads)
    cost, a, b = problem(rng, *shape, zeros=2)
    args = (cost, a, b, 0.05, 1.0, 1e-9, 5000, 40)
    got_out, want = native(*args), reference.sinkhorn_dense(*args)
    assert torch.equal(got_out[4], want[4]) and bool((want[4] == reference.DENSE_CONVERGED).all())
    assert torch.equal(got_out[2], want[2])
    for x, y in zip(got_out[:2], want[:2]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert bool((got_out[3] <= 1e-9).all())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_matches_the_reference_at_every_simd_level(rng, simd_level, shape):
    cost, a, b = problem(rng, *shape, dtype=torch.float32, zeros=1)
    args = (cost, a, b, 0.02, 1.0, 0.0, 8, 40)
    got_out, want = native(*args), reference.sinkhorn_dense(*args)
    # A single point on one side is solved in one step: the error then sits at rounding
    # level and float32 may or may not hit exactly 0 (tol) on either side.
    if 1 not in shape[1:]:
        assert torch.equal(got_out[2], want[2]) and torch.equal(got_out[4], want[4])
    for x, y in zip(got_out[:2], want[:2]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got_out[3], want[3], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_float32_runs_to_tolerance_and_the_plan_has_the_marginals(rng, simd_level, num_threads, threads):
    num_threads(threads)
    cost, a, b = problem(rng, 3, 120, 77, dtype=torch.float32)
    f, g, n_iter, error, status = native(cost, a, b, 0.01, 1.0, 1e-5, 5000, 40)
    assert bool((status == reference.DENSE_CONVERGED).all()) and bool((error <= 1e-5).all())
    plan = a[:, :, None] * b[:, None, :] * torch.exp((f[:, :, None] + g[:, None, :] - cost) / 0.01)
    torch.testing.assert_close(plan.sum(1), b, rtol=1e-4, atol=1e-7)     # exact after g's update
    assert bool(((plan.sum(2) - a).abs().sum(-1) <= 1.5e-5).all())     # the error measured: L1, weighted
    f64, g64, *_ = reference.sinkhorn_dense(cost.double(), a.double(), b.double(), 0.01, 1.0, 1e-10, 5000, 40)
    plan64 = a[:, :, None] * b[:, None, :] * torch.exp((f64[:, :, None] + g64[:, None, :] - cost.double()) / 0.01)
    assert bool(((plan.double() - plan64).abs().sum((1, 2)) <= 5e-5).all())   # the same plan, to tol


def test_problems_stop_on_their_own(rng):
    # An easy problem (large reg) and a hard one (small reg) in one batch: the easy one
    # stops early and keeps its potentials; the hard one keeps iterating.
    cost, a, b = problem(rng, 2, 50, 60)
    easy = native(cost[:1], a[:1], b[:1], 1.0, 1.0, 1e-10, 5000, 40)
    hard = native(cost[1:], a[1:], b[1:], 0.01, 1.0, 1e-10, 5000, 40)
    # per-problem reg is not an argument, so build the batch at one reg with a scaled cost:
    # reg * (cost / reg') has the potentials of reg' scaled by reg / reg'.
    batch = native(torch.stack([cost[0] * 0.01, cost[1]]), a, b, 0.01, 1.0, 1e-10, 5000, 40)
    assert int(batch[2][0]) == int(easy[2][0]) < int(batch[2][1]) == int(hard[2][0])
    torch.testing.assert_close(batch[0][0], easy[0][0] * 0.01, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(batch[0][1], hard[0][0], rtol=0, atol=0)


def test_float32_floor_is_reported_not_run_to_the_cap(rng):
    cost, a, b = problem(rng, 1, 500, 500, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = got.sinkhorn_cost_matrix(cost[0], a[0], b[0], reg=0.01, tol=1e-13, max_iter=100_000)
    assert res.status in ("converged", "plateau") and res.n_iter < 2000
    if res.status == "plateau":   # the float32 floor, ~1e-7
        assert not res.converged and 1e-13 < res.marginal_error < 1e-5
        assert any("stopped decreasing" in str(w.message) for w in caught)


def test_unbalanced_matches_the_reference(rng):
    cost, a, b = problem(rng, 2, 40, 23)
    damping = 1.0 / (1.0 + 0.1 / 0.5)
    args = (cost, a, 0.6 * b, 0.1, damping, 1e-11, 10000, 40)
    got_out, want = native(*args), reference.sinkhorn_dense(*args)
    assert torch.equal(got_out[2], want[2]) and torch.equal(got_out[4], want[4])
    torch.testing.assert_close(got_out[0], want[0], rtol=1e-10, atol=1e-12)


def test_batched_public_solver_matches_pot_per_problem(rng):
    pot = pytest.importorskip("ot", reason="POT is the second oracle")
    cost, a, b = problem(rng, 4, 31, 45)
    res = got.sinkhorn_cost_matrix(cost, a, b, reg=0.05, tol=1e-12)
    assert res.converged and res.plan.shape == (4, 31, 45)
    for k in range(4):
        want = pot.bregman.sinkhorn_log(a[k].numpy(), b[k].numpy(), cost[k].numpy(), 0.05, stopThr=1e-13, numItermax=100000)
        np.testing.assert_allclose(res.plan[k].numpy(), want, rtol=0, atol=1e-10)


def test_non_contiguous_and_expanded_inputs(rng):
    cost, a, b = problem(rng, 3, 9, 14)
    want = native(cost, a, b, 0.1, 1.0, 1e-10, 1000, 40)
    wide = torch.zeros(3, 9, 28, dtype=torch.float64)
    wide[:, :, ::2] = cost   # every other column
    got_out = native(wide[:, :, ::2], a.t().contiguous().t(), b, 0.1, 1.0, 1e-10, 1000, 40)
    for x, y in zip(got_out, want):
        assert torch.equal(x, y)
    shared = native(cost[:1].expand(3, 9, 14), a[:1].expand(3, 9), b[:1].expand(3, 14), 0.1, 1.0, 1e-10, 1000, 40)
    one = native(cost[:1], a[:1], b[:1], 0.1, 1.0, 1e-10, 1000, 40)
    assert torch.equal(shared[0], one[0].expand(3, 9))


@pytest.mark.parametrize("bad,kind,match", [
    (dict(M=torch.rand(2, 3)), ValueError, "M"),
    (dict(a=torch.rand(1, 4)), ValueError, "rows of M"),
    (dict(b=torch.rand(2, 5)), ValueError, "problems"),
    (dict(a=torch.rand(1, 3, dtype=torch.float64)), TypeError, "dtype"),
    (dict(reg=0.0), ValueError, "reg"),
    (dict(reg=float("inf")), ValueError, "reg"),
    (dict(damping=1.5), ValueError, "damping"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(plateau=0), ValueError, "plateau"),
    (dict(a=-torch.ones(1, 3)), ValueError, "a must be >= 0"),
    (dict(b=torch.zeros(1, 4)), ValueError, "b has a problem with no mass"),
    (dict(M=torch.full((1, 3, 4), float("nan"))), ValueError, "M"),
    (dict(M=torch.rand(1, 0, 4), a=torch.rand(1, 0)), ValueError, "M is empty"),
])
def test_bad_input_names_the_argument(bad, kind, match):
    args = dict(M=torch.rand(1, 3, 4), a=torch.full((1, 3), 1 / 3), b=torch.full((1, 4), 0.25), reg=0.1, damping=1.0,
                tol=1e-6, max_iter=100, plateau=40)
    args.update(bad)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(kind, match=match):
        SINKHORN_DENSE(*args.values())
    for k, v in before.items():
        assert torch.equal(args[k], v) or bool(torch.isnan(v).all())


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 19), (2, 64, 300)], ids=str)
def test_cuda_glue_over_the_fake(rng, monkeypatch, shape):
    from gencore import _native, _native_call

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    cost, a, b = problem(rng, *shape, dtype=torch.float32, zeros=1)
    args = (cost, a, b, 0.05, 1.0, 1e-5, 3000, 40)
    f, g, n_iter, error, status = SINKHORN_DENSE.implementation("native-cuda")(*args)
    assert fake.calls["sinkhorn_dense"] == 1
    assert f.dtype == g.dtype == error.dtype == torch.float32 and n_iter.dtype == status.dtype == torch.int64
    want = reference.sinkhorn_dense(cost.double(), a.double(), b.double(), 0.05, 1.0, 1e-9, 5000, 40)
    assert bool((status == reference.DENSE_CONVERGED).all()) and bool((error <= 1e-5).all())
    shift = (g.double().mean(-1) - want[1].mean(-1))[:, None]   # potentials are defined up to f + c, g - c
    torch.testing.assert_close(f.double() + shift, want[0], rtol=0, atol=2e-5)
    fixed = SINKHORN_DENSE.implementation("native-cuda")(cost, a, b, 0.05, 1.0, 0.0, 6, 40)
    ref = reference.sinkhorn_dense(cost, a, b, 0.05, 1.0, 0.0, 6, 40)
    assert torch.equal(fixed[2], ref[2])
    torch.testing.assert_close(fixed[0], ref[0], rtol=1e-5, atol=2e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and the gencore._cuda module")
@pytest.mark.parametrize("shape", [(1, 500, 400), (64, 64, 64), (3, 7, 1000)], ids=str)
def test_cuda_matches_the_cpu_kernel(rng, shape):
    cost, a, b = problem(rng, *shape, dtype=torch.float32, zeros=1)
    args = (0.02, 1.0, 0.0, 10, 40)
    want = native(cost, a, b, *args)
    out = SINKHORN_DENSE(cost.cuda(), a.cuda(), b.cuda(), *args)
    assert torch.equal(out[2].cpu(), want[2])
    for x, y in zip(out[:2], want[:2]):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-5, atol=2e-6)
    res = got.sinkhorn_cost_matrix(cost.cuda(), a.cuda(), b.cuda(), reg=0.02, tol=1e-5)
    assert res.converged and res.plan.is_cuda


@pytest.mark.parametrize("reg", [1e-3, 1e-4])
def test_small_reg_in_float32_stays_finite_and_right(rng, simd_level, num_threads, reg):
    # At reg 1e-4 of a cost in [0, 1] the potentials move by thousands of reg in the first
    # iterations: the column sums accumulated against the previous iteration's log-sum-exp
    # underflow, and those columns must be summed again exactly (never 0, never -inf).
    num_threads(2)
    cost, a, b = problem(rng, 1, 150, 130, dtype=torch.float32)
    args = (cost, a, b, reg, 1.0, 0.0, 12, 40)
    f, g, *_ = native(*args)
    f64, g64, *_ = reference.sinkhorn_dense(cost.double(), a.double(), b.double(), reg, 1.0, 0.0, 12, 40)
    assert bool(torch.isfinite(f).all() and torch.isfinite(g).all())
    torch.testing.assert_close(f.double(), f64, rtol=0, atol=2e-5)
    torch.testing.assert_close(g.double(), g64, rtol=0, atol=2e-5)


def test_collapsing_column_sums_are_recomputed_exactly(rng, simd_level, num_threads):
    # Unbalanced (damping 0.5) with costs 10 + U[0, 1) at reg 1e-3: each column's log-sum-exp
    # falls by ~1250, 310, 80, ... in the first iterations, so the running sums seeded with the
    # previous one underflow (float32 flushes below e^-87) and those columns are summed again
    # exactly.
    num_threads(2)
    cost, a, b = problem(rng, 1, 150, 130, dtype=torch.float32)
    cost = cost + 10.0
    args = (cost, a, b, 1e-3, 0.5, 0.0, 8, 40)
    f, g, *_ = native(*args)
    f64, g64, *_ = reference.sinkhorn_dense(cost.double(), a.double(), b.double(), 1e-3, 0.5, 0.0, 8, 40)
    assert bool(torch.isfinite(f).all() and torch.isfinite(g).all())
    torch.testing.assert_close(f.double(), f64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-5)
