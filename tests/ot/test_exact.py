"""gencore.ot.emd / emd2 / ot_coupling: POT's ot.emd2 as the oracle, optimality
through the duals, batched = per problem, closed forms, pivot limit, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gencore
from gencore import ot as got
from gencore.ot import reference

from tests.conftest import native_cpu_only

pot = pytest.importorskip("ot")


def weights(rng, n, *, uniform=False, zeros=0, dtype=torch.float64):
    w = torch.ones(n, dtype=torch.float64) if uniform else torch.rand(n, generator=rng, dtype=torch.float64) + 0.05
    if zeros:
        w[torch.randperm(n, generator=rng)[:zeros]] = 0.0
    return (w / w.sum()).to(dtype)


def pot_cost(a, b, M):
    a64, b64 = a.double().numpy(), b.double().numpy()
    return pot.emd2(a64, b64 * (a64.sum() / b64.sum()), M.double().numpy(), numItermax=10_000_000)


def assert_optimal(result, a, b, M, tol=1e-9):
    """Primal feasibility, dual feasibility, complementary slackness, equal objectives."""
    a, b, M = a.double(), b.double(), M.double()
    b = b * (a.sum() / b.sum())
    P = result.dense()
    scale = max(1.0, float(M.abs().max()))
    assert float(P.min()) >= 0
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=tol)
    torch.testing.assert_close(P.sum(0), b, rtol=0, atol=tol)
    u, v = result.duals
    slack = M - u[:, None] - v[None, :]
    assert float(slack.min()) >= -tol * scale, "dual infeasible"
    assert float(slack[P > 0].abs().max()) <= tol * scale, "complementary slackness"
    assert float((P * M).sum() - result.cost).__abs__() <= tol * scale
    assert abs(float(a @ u + b @ v - result.cost)) <= tol * scale, "duality gap"
    assert abs(float(a @ u - b @ v)) <= tol * scale, "duals not centred (a.u = b.v)"
    assert int(result.nnz) <= M.shape[0] + M.shape[1] - 1


SHAPES = [(1, 1), (1, 6), (7, 1), (2, 3), (5, 5), (17, 9), (31, 64), (120, 97)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,m", SHAPES)
def test_cost_matches_pot_and_is_optimal(rng, n, m, dtype):
    a, b = weights(rng, n), weights(rng, m)
    M = torch.rand(n, m, generator=rng, dtype=torch.float64).to(dtype)
    result = got.emd(a, b, M)
    assert result.converged and int(result.status) == reference.EMD_OPTIMAL
    assert result.cost.dtype == torch.float64
    assert abs(float(result.cost) - pot_cost(a, b, M)) <= 1e-12 * max(1, n * m)
    assert_optimal(result, a, b, M)


@pytest.mark.parametrize("n,m", [(8, 8), (25, 25), (40, 13)])
def test_degenerate_problems_uniform_weights_and_tied_integer_costs(rng, n, m):
    a, b = weights(rng, n, uniform=True), weights(rng, m, uniform=True)
    M = torch.randint(0, 3, (n, m), generator=rng).double()  # many ties
    result = got.emd(a, b, M)
    assert result.converged
    assert abs(float(result.cost) - pot_cost(a, b, M)) <= 1e-12
    assert_optimal(result, a, b, M)


def test_non_contiguous_cost_and_numpy_inputs(rng):
    a, b = weights(rng, 23), weights(rng, 19)
    big = torch.rand(19, 46, generator=rng, dtype=torch.float64)
    M = big[:, ::2].T  # [23, 19], neither rows nor columns contiguous
    assert not M.is_contiguous()
    want = got.emd(a, b, M.contiguous())
    strided = got.emd(a, b, M)
    assert torch.equal(strided.index, want.index) and torch.equal(strided.cost, want.cost)
    from_numpy = got.emd(a.numpy(), b.numpy(), M.numpy())
    assert torch.equal(from_numpy.mass, want.mass)
    assert abs(float(got.emd2(a, b, M)) - pot_cost(a, b, M)) <= 1e-12


def test_zero_mass_rows_and_columns(rng):
    a, b = weights(rng, 12, zeros=4), weights(rng, 10, zeros=3)
    M = torch.rand(12, 10, generator=rng, dtype=torch.float64)
    result = got.emd(a, b, M)
    assert abs(float(result.cost) - pot_cost(a, b, M)) <= 1e-12
    assert_optimal(result, a, b, M)
    P = result.dense()
    assert float(P[a == 0].abs().sum()) == 0 and float(P[:, b == 0].abs().sum()) == 0


def test_uniform_weights_and_none_are_the_same(rng):
    M = torch.rand(6, 9, generator=rng, dtype=torch.float64)
    r1 = got.emd(None, None, M)
    r2 = got.emd(torch.full((6,), 1 / 6, dtype=torch.float64), torch.full((9,), 1 / 9, dtype=torch.float64), M)
    assert torch.equal(r1.index, r2.index) and torch.allclose(r1.cost, r2.cost, rtol=1e-15)


@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2])
def test_batched_equals_per_problem(rng, num_threads, threads):
    num_threads(threads)
    B, n, m = 6, 11, 14
    a = torch.stack([weights(rng, n) for _ in range(B)])
    b = torch.stack([weights(rng, m, uniform=k % 2 == 0) for k in range(B)])
    M = torch.rand(B, n, m, generator=rng, dtype=torch.float64)
    batch = got.emd(a, b, M)
    assert batch.cost.shape == (B,) and batch.index.shape == (B, 2, n + m - 1)
    assert bool(batch.converged.all())
    dense = batch.dense()
    for k in range(B):
        one = got.emd(a[k], b[k], M[k])
        assert torch.equal(batch.cost[k], one.cost) and torch.equal(batch.index[k], one.index)
        assert torch.equal(batch.duals[0][k], one.duals[0]) and torch.equal(batch.n_iter[k], one.n_iter)
        assert torch.equal(dense[k], one.dense())


@native_cpu_only
def test_native_kernel_and_python_reference_take_the_same_pivots(rng):
    """The reference is the same network simplex in pure Python: on float64 data both
    agree bit for bit, degenerate problems included."""
    n, m = 9, 9
    a, b = weights(rng, n, uniform=True), weights(rng, m, uniform=True)
    M = torch.randint(0, 4, (n, m), generator=rng).double()
    native = got.emd(a, b, M)
    ref = reference.emd(a, b, M, 100_000)
    names = ("cost", "index", "mass", "nnz", "u", "v", "n_iter", "status")
    outs = (native.cost, native.index, native.mass, native.nnz, *native.duals, native.n_iter, native.status)
    for name, x, y in zip(names, outs, ref):
        assert torch.equal(x, y), name
    assert int(native.n_iter) > 0


def test_points_on_a_line_match_the_sorted_matching(rng):
    n = 40
    x = torch.randn(n, 1, generator=rng, dtype=torch.float64)
    y = torch.randn(n, 1, generator=rng, dtype=torch.float64) * 2 + 1
    M = (x - y.T).square()
    closed_form = (x.flatten().sort().values - y.flatten().sort().values).square().mean()
    assert abs(float(got.emd2(None, None, M)) - float(closed_form)) <= 1e-12


def test_uniform_square_problem_gives_a_permutation_and_ot_coupling(rng):
    n = 48
    x0 = torch.randn(n, 2, 3, generator=rng)
    x1 = torch.randn(n, 2, 3, generator=rng) + 0.5
    perm = got.ot_coupling(x0, x1)
    assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(n))
    cost = torch.cdist(x0.reshape(n, -1).double(), x1.reshape(n, -1).double()).square()
    result = got.emd(None, None, cost)
    assert int(result.nnz) >= n
    big = result.mass[: int(result.nnz)] > 0.5 / n
    assert int(big.sum()) == n  # one entry of mass 1/n per row (the rest rounding dust, if any)
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost.numpy())
    assert abs(float(cost[torch.arange(n), perm].sum()) - float(cost.numpy()[rows, cols].sum())) <= 1e-9
    with pytest.raises(ValueError, match="x0 and x1"):
        got.ot_coupling(x0, x1[:-1])
    with pytest.raises(ValueError, match="blur"):
        got.ot_coupling(x0, x1, method="sinkhorn", blur=0.0)


def test_sinkhorn_coupling_draws_from_the_entropic_plan(rng):
    n = 64
    x0 = torch.randn(n, 5, generator=rng, dtype=torch.float64)
    x1 = torch.randn(n, 5, generator=rng, dtype=torch.float64) + 1.0
    cost = torch.cdist(x0, x1).square()
    exact = float(cost[torch.arange(n), got.ot_coupling(x0, x1)].mean())
    drawn = float(cost.diagonal().mean())  # the batch as drawn: an independent pairing
    # A small blur concentrates each row of the plan on the exact partner.
    sharp = got.ot_coupling(x0, x1, method="sinkhorn", blur=0.05, generator=torch.Generator().manual_seed(1))
    assert sharp.dtype == torch.int64 and sharp.shape == (n,) and int(sharp.min()) >= 0 and int(sharp.max()) < n
    assert float(cost[torch.arange(n), sharp].mean()) <= exact * 1.05
    # The default blur (OT-CFM's 0.05 of the max cost) still pairs far better than chance...
    default = got.ot_coupling(x0, x1, method="sinkhorn", generator=torch.Generator().manual_seed(2))
    assert exact <= float(cost[torch.arange(n), default].mean()) < 0.5 * (exact + drawn)
    # ...and the draw follows the generator.
    again = got.ot_coupling(x0, x1, method="sinkhorn", generator=torch.Generator().manual_seed(2))
    assert torch.equal(default, again)
    # The row frequencies follow pi_ij / a_i: one row drawn many times against
    # the plan from the same potentials.
    from gencore.ot import sinkhorn
    half = cost / 2
    eps_blur = (0.05 * float(half.max())) ** 0.5
    result = sinkhorn(x0, x1, blur=eps_blur)
    row = torch.softmax((result.g[None, :] - half[:1]) / result.eps, dim=1)[0]
    draws = torch.stack([got.ot_coupling(x0, x1, method="sinkhorn", generator=torch.Generator().manual_seed(s))[0]
                         for s in range(400)])
    freq = torch.bincount(draws, minlength=n).double() / 400
    # L1 distance of 400 draws over 64 columns from their law: about 0.3 expected
    # (sum_j sqrt(2 p_j / (pi 400))); a wrong law (uniform) is far further away.
    to_plan, to_uniform = float((freq - row).abs().sum()), float((freq - 1 / n).abs().sum())
    assert to_plan < 0.5 and to_plan < 0.5 * to_uniform, (to_plan, to_uniform)


def test_pivot_limit_reports_non_convergence_with_a_feasible_plan(rng):
    a, b = weights(rng, 30), weights(rng, 25)
    M = torch.rand(30, 25, generator=rng, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="pivot limit"):
        result = got.emd(a, b, M, max_iter=7)
    assert not result.converged and int(result.status) == reference.EMD_ITERATION_LIMIT
    assert int(result.n_iter) == 7
    P = result.dense()
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(P.sum(0), b, rtol=0, atol=1e-12)
    assert float(result.cost) > pot_cost(a, b, M)  # 7 pivots cannot reach this optimum
    assert got.default_max_iter(4000, 4000) >= 100 * 4000 * 4000 / 10


def test_bad_input_names_the_argument_and_leaves_data_alone(rng):
    a, b = weights(rng, 4), weights(rng, 5)
    M = torch.rand(4, 5, generator=rng, dtype=torch.float64)
    before = (a.clone(), b.clone(), M.clone())
    bad_a = a.clone()
    bad_a[0] = -0.1
    cases = [
        ((bad_a, b, M), ValueError, "a has negative"),
        ((a * 2, b, M), ValueError, "equal totals"),
        ((a, b[:4], M), ValueError, "b.shape"),
        ((a, b, M.T), ValueError, "M.shape"),
        ((a, b, M[0]), ValueError, "M must be 2-D"),
        ((a, b, torch.where(M > 0.5, float("nan"), M)), ValueError, "M contains NaN"),
        ((a, b, torch.empty(4, 0, dtype=torch.float64)), ValueError, "b.shape|empty"),
        ((a[:0], b[:0], torch.empty(0, 0, dtype=torch.float64)), ValueError, "empty"),
        ((torch.zeros(4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), M), ValueError, "positive total"),
        ((a, b, M.int()), TypeError, "M must have dtype"),
        ((a, b, M.tolist()), TypeError, "M must be"),
    ]
    for args, exc, text in cases:
        with pytest.raises(exc, match=text):
            got.emd(*args)
    with pytest.raises(ValueError, match="max_iter"):
        got.emd(a, b, M, max_iter=-1)
    for x, y in zip((a, b, M), before):
        assert torch.equal(x, y)


def test_reference_backend_runs_the_python_network_simplex(rng, reference_backend):
    a, b = weights(rng, 6), weights(rng, 4)
    M = torch.rand(6, 4, generator=rng, dtype=torch.float64)
    assert gencore.ot.ops._emd.EMD.backend((a, b, M, 100)) == "reference"
    result = got.emd(a, b, M)
    assert abs(float(result.cost) - pot_cost(a, b, M)) <= 1e-12
    assert_optimal(result, a, b, M)


def test_cuda_entry_runs_the_cpu_kernel_on_host_copies(rng):
    """The CUDA implementation's glue, on CPU tensors (it copies to the host and back)."""
    from gencore.ot.ops._emd import EMD
    a, b = weights(rng, 7), weights(rng, 8)
    M = torch.rand(7, 8, generator=rng, dtype=torch.float64)
    outputs = EMD.implementation("native-cuda")(a, b, M, 1000)
    assert abs(float(outputs[0]) - pot_cost(a, b, M)) <= 1e-12
    with pytest.raises(ValueError, match="negative"):
        EMD.implementation("native-cuda")(-a, b, M, 1000)


@pytest.mark.parametrize("n", [64, 200])
def test_larger_random_problems_against_pot(rng, n):
    x = torch.rand(n, 3, generator=rng, dtype=torch.float64)
    y = torch.rand(n + 7, 3, generator=rng, dtype=torch.float64)
    M = torch.cdist(x, y).square()
    a, b = weights(rng, n), weights(rng, n + 7)
    result = got.emd(a, b, M)
    assert abs(float(result.cost) - pot_cost(a, b, M)) <= 1e-12
    assert_optimal(result, a, b, M)
    assert np.isfinite(result.duals[0].numpy()).all()


def test_half_precision_cost_is_widened(rng):
    a, b = weights(rng, 10), weights(rng, 12)
    M = torch.rand(10, 12, generator=rng).to(torch.bfloat16)
    result = got.emd(a, b, M)
    assert abs(float(result.cost) - pot_cost(a, b, M.float())) <= 1e-12
    assert_optimal(result, a, b, M.float())
