"""gencore.ot.sinkhorn / sinkhorn_divergence / sinkhorn_cost_matrix and the softmin op.

Oracles: ``reference.sinkhorn_softmin_dense`` (float64, direct distances, a
dense logsumexp: no arithmetic shared with the streamed kernels) for the op;
POT (``ot.bregman.sinkhorn_log``, ``ot.unbalanced.sinkhorn_unbalanced``) on the
same cost matrix with reg = eps for the solvers (plans compared, since POT's
potentials are defined up to its own conventions); GeomLoss's ``SamplesLoss``
for the values, run to convergence (scaling close to 1); gradcheck for the
gradients. Tolerances follow from the stopping tolerance each side is run to.
"""
from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch

import gencore
from gencore import ot as got
from gencore.ot import reference
from gencore.ot.ops._sinkhorn import SINKHORN_SOFTMIN

pot = pytest.importorskip("ot", reason="POT is the oracle of the solver tests")


def rand(rng, *shape, dtype=torch.float64, scale=1.0):
    return (torch.rand(*shape, generator=rng, dtype=torch.float64) * scale).to(dtype)


def simplex(rng, n, dtype=torch.float64):
    w = 0.2 + torch.rand(n, generator=rng, dtype=torch.float64)
    return (w / w.sum()).to(dtype)


def dense_plan(x, y, a, b, f, g, eps, p=2):
    cost = reference.ground_cost(x.double(), y.double(), p)
    return a.double()[:, None] * b.double()[None, :] * torch.exp((f.double()[:, None] + g.double()[None, :] - cost) / eps)


def sq_cost(x, y):
    return (0.5 * ((x.double()[:, None, :] - y.double()[None, :, :]) ** 2).sum(-1)).numpy()


def pot_cost(x, y, p):
    """The cost matrix as POT users build it: ot.dist's squared Euclidean / 2, or its Euclidean."""
    if p == 2:
        return 0.5 * pot.dist(x.numpy(), y.numpy(), metric="sqeuclidean")
    return pot.dist(x.numpy(), y.numpy(), metric="euclidean")


# ---------------------------------------------------------------- the softmin op against the dense oracle

SHAPES = [(1, 1, 1), (7, 40, 3), (300, 5, 2), (33, 257, 17), (3, 3000, 6), (260, 1025, 64)]


def softmin_tolerances(p, dtype, d, eps):
    """(atol of f, atol of df/dx) of the float32 / float64 kernels against the dense oracle."""
    if dtype == torch.float64:
        return 1e-10, 1e-9
    if p == 2:   # logits carry ~ 1e-7 (|x'|^2 + |y'|^2) / eps of error, f that times eps
        return 2e-6 * d, 2e-4 * d
    # p = 1: r = sqrt of the expansion's r^2 (error ~ 1e-7 d): |dr| <= 1e-7 d / (2 r), so a near
    # neighbour moves f by up to ~ sqrt(1e-7 d) and its unit vector (x - y) / r by |dr| / r.
    return 2e-5 * math.sqrt(d), 2e-3 * math.sqrt(d)


def assert_matches_dense(f, grad, x, y, h, eps, p):
    """(f, df/dx) of a kernel against the dense float64 oracle, within softmin_tolerances."""
    want_f, want_grad = reference.sinkhorn_softmin_dense(x, y, h, eps, p)
    atol_f, atol_grad = softmin_tolerances(p, f.dtype, x.shape[1], eps)
    torch.testing.assert_close(f.double(), want_f, rtol=0, atol=atol_f)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=atol_grad)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmin_op_matches_the_dense_oracle(rng, simd_level, n, m, d, dtype, p):
    x, y = rand(rng, n, d, dtype=dtype), rand(rng, m, d, dtype=dtype)
    h = torch.randn(m, generator=rng, dtype=torch.float64).to(dtype)
    h[: m // 3] = -math.inf   # points without mass
    if m // 3 == m:
        h[0] = 0.0
    eps = 0.05
    want_f, want_grad = reference.sinkhorn_softmin_dense(x, y, h, eps, p)
    atol_f, atol_grad = softmin_tolerances(p, dtype, d, eps)
    for gradient in (False, True):
        f, grad = SINKHORN_SOFTMIN(x, y, h, eps, p, gradient)
        assert f.dtype == dtype and f.shape == (n,)
        torch.testing.assert_close(f.double(), want_f, rtol=0, atol=atol_f)
        if gradient:
            torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=atol_grad)
        else:
            assert grad.shape == (n, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euclidean_softmin_gives_a_zero_subgradient_from_coincident_points(rng, simd_level, dtype):
    # x_0 is y_3 and x_1 is y_5; x_2 sits on the only point of y with mass. The reference's
    # direct distances are exactly 0 there; the kernel's expansion leaves a rounding residue
    # (~ sqrt(ulp) |x'|), which its coincidence threshold turns into 0.
    y = rand(rng, 40, 3, dtype=dtype)
    x = torch.cat([y[3:4], y[5:6], y[7:8], rand(rng, 4, 3, dtype=dtype)])
    h = torch.randn(40, generator=rng, dtype=torch.float64).to(dtype)
    f, grad = SINKHORN_SOFTMIN(x, y, h, 0.05, 1, True)
    assert_matches_dense(f, grad, x, y, h, 0.05, 1)
    atol_f, _ = softmin_tolerances(1, dtype, 3, 0.05)
    only = torch.full((40,), -math.inf, dtype=dtype)
    only[7] = 0.0
    f, grad = SINKHORN_SOFTMIN(x[2:3], y, only, 0.05, 1, True)
    assert torch.isfinite(f).all() and abs(float(f)) <= atol_f
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=0)


@pytest.mark.parametrize("p", [1, 2])
def test_softmin_op_takes_non_contiguous_inputs_and_leaves_them_alone(rng, p):
    base_x, base_y = rand(rng, 40, 6), rand(rng, 70, 6)
    x, y = base_x[:, ::2], base_y[::2, ::2].T.contiguous().T   # strided and column-major views
    h = torch.randn(70, generator=rng, dtype=torch.float64)[::2]
    copies = [t.clone() for t in (x, y, h)]
    f, grad = SINKHORN_SOFTMIN(x, y, h, 0.1, p, True)
    want_f, want_grad = reference.sinkhorn_softmin_dense(x, y, h, 0.1, p)
    torch.testing.assert_close(f, want_f, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-9)
    for before, after in zip(copies, (x, y, h)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("p", [1, 2])
def test_log_z_only_mode_gives_the_same_potential_on_every_kernel_plan(rng, num_threads, p):
    # Few queries against many points (the kernel's data split) and many queries (query split).
    num_threads(2)
    for n, m in ((3, 9000), (700, 600)):
        x, y = rand(rng, n, 5, dtype=torch.float32), rand(rng, m, 5, dtype=torch.float32)
        h = torch.randn(m, generator=rng)
        f_only, _ = SINKHORN_SOFTMIN(x, y, h, 0.02, p, False)
        f_full, grad = SINKHORN_SOFTMIN(x, y, h, 0.02, p, True)
        torch.testing.assert_close(f_only, f_full, rtol=0, atol=0)
        assert_matches_dense(f_full, grad, x, y, h, 0.02, p)


@pytest.mark.parametrize("p", [1, 2])
def test_cuda_glue_streams_the_softmin_over_the_fake(rng, fake_cuda_tiles, p):
    fake = fake_cuda_tiles
    x, y = rand(rng, 9, 4, dtype=torch.float32), rand(rng, 45, 4, dtype=torch.float32)
    x[0] = y[20]   # a coincident pair: zero subgradient
    h = torch.randn(45, generator=rng)
    h[:14] = -math.inf   # the first two tiles have no mass
    f, grad = SINKHORN_SOFTMIN.implementation("native-cuda")(x, y, h, 0.05, p, True)
    assert fake.calls["dataset_denoise_tile"] == 7 * (2 if p == 1 else 1)   # ceil(45 / 7) tiles a pass
    assert_matches_dense(f, grad, x, y, h, 0.05, p)


@pytest.mark.parametrize("p", [1, 2])
def test_reference_backend_of_the_solver_agrees_with_the_native_one(rng, monkeypatch, p):
    x, y = rand(rng, 50, 3), rand(rng, 61, 3)
    native = got.sinkhorn(x, y, blur=0.2, p=p, tol=1e-10)
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    ref = got.sinkhorn(x, y, blur=0.2, p=p, tol=1e-10)
    torch.testing.assert_close(ref.cost, native.cost, rtol=1e-9, atol=0)
    torch.testing.assert_close(ref.f, native.f, rtol=0, atol=1e-8)


# ---------------------------------------------------------------- solvers against POT

@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m,d,blur", [(1, 1, 2, 0.3), (37, 50, 3, 0.1), (80, 41, 7, 0.3), (5, 123, 1, 0.05)])
def test_sinkhorn_plan_matches_pot_sinkhorn_log(rng, n, m, d, blur, p):
    x, y = rand(rng, n, d), rand(rng, m, d)
    a, b = simplex(rng, n), simplex(rng, m)
    res = got.sinkhorn(x, y, a, b, blur=blur, p=p, tol=1e-11)
    assert res.converged and res.status == "converged" and res.marginal_error <= 1e-11
    eps = blur ** p
    assert res.eps == pytest.approx(eps, rel=1e-15)
    cost = pot_cost(x, y, p)
    want = pot.bregman.sinkhorn_log(a.numpy(), b.numpy(), cost, eps, stopThr=1e-13, numItermax=100000)
    plan = dense_plan(x, y, a, b, res.f, res.g, eps, p).numpy()
    np.testing.assert_allclose(plan, want, rtol=0, atol=1e-9 * want.max())
    # The dual value <a, f> + <b, g> is the primal <P, C> + eps KL(P | a b) of POT's plan.
    kl = (want * np.log(want / np.outer(a.numpy(), b.numpy()))).sum()
    np.testing.assert_allclose(float(res.cost), (want * cost).sum() + eps * kl, rtol=1e-8)


def test_euclidean_sinkhorn_in_float32_matches_pot_on_non_contiguous_points(rng):
    base_x, base_y = rand(rng, 301, 8, dtype=torch.float32), rand(rng, 257, 4, dtype=torch.float32) + 0.2
    x, y = base_x[::3, ::2], base_y[:, :]   # strided rows and columns; 101 x 4 against 257 x 4
    res = got.sinkhorn(x, y, blur=0.1, p=1, tol=1e-5)
    assert res.converged and res.f.dtype == torch.float32 and res.f.shape == (101,)
    a, b = np.full(101, 1 / 101), np.full(257, 1 / 257)
    want = pot.bregman.sinkhorn_log(a, b, pot_cost(x.double(), y.double(), 1), 0.1, stopThr=1e-12,
                                    numItermax=100000)
    plan = dense_plan(x, y, torch.from_numpy(a), torch.from_numpy(b), res.f, res.g, 0.1, 1).numpy()
    # float32 potentials carry ~1e-6 of rounding (over eps = 0.1: 1e-5 relative in the plan) and tol 1e-5
    np.testing.assert_allclose(plan, want, rtol=0, atol=1e-4 * want.max())


@pytest.mark.parametrize("p", [1, 2])
def test_unbalanced_sinkhorn_plan_matches_pot(rng, p):
    x, y = rand(rng, 30, 2), rand(rng, 45, 2, scale=1.5)
    a, b = simplex(rng, 30), 1.3 * simplex(rng, 45)   # unequal masses: allowed when unbalanced
    blur, reach = 0.3, 0.7
    eps, rho = blur ** p, reach ** p
    res = got.sinkhorn(x, y, a, b, blur=blur, p=p, reach=reach, tol=1e-11)
    assert res.converged
    want = pot.unbalanced.sinkhorn_unbalanced(a.numpy(), b.numpy(), pot_cost(x, y, p), eps, rho, reg_type="kl",
                                              stopThr=1e-13, numItermax=100000)
    plan = dense_plan(x, y, a, b, res.f, res.g, eps, p).numpy()
    np.testing.assert_allclose(plan, want, rtol=0, atol=1e-8 * want.max())


@pytest.mark.parametrize("batch", [None, 3])
def test_cost_matrix_solver_matches_pot(rng, batch):
    n, m, reg = 23, 17, 0.05
    shape = (n, m) if batch is None else (batch, n, m)
    cost = rand(rng, *shape)
    a = simplex(rng, n) if batch is None else torch.stack([simplex(rng, n) for _ in range(batch)])
    b = simplex(rng, m)
    res = got.sinkhorn_cost_matrix(cost, a, b, reg=reg, tol=1e-12)
    assert res.converged and res.plan.shape == shape
    plans = res.plan if batch is not None else res.plan[None]
    costs = cost if batch is not None else cost[None]
    rows = a if batch is not None else a[None]
    for k in range(plans.shape[0]):
        want = pot.bregman.sinkhorn_log(rows[k].numpy(), b.numpy(), costs[k].numpy(), reg, stopThr=1e-14,
                                        numItermax=100000)
        np.testing.assert_allclose(plans[k].numpy(), want, rtol=0, atol=1e-10)


def test_unbalanced_cost_matrix_solver_matches_pot(rng):
    cost = rand(rng, 12, 19)
    a, b = simplex(rng, 12), 0.6 * simplex(rng, 19)
    res = got.sinkhorn_cost_matrix(cost, a, b, reg=0.1, reach=0.5, tol=1e-12)
    want = pot.unbalanced.sinkhorn_unbalanced(a.numpy(), b.numpy(), cost.numpy(), 0.1, 0.5, reg_type="kl",
                                              stopThr=1e-14, numItermax=100000)
    np.testing.assert_allclose(res.plan.numpy(), want, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- against GeomLoss

def geomloss_value(x, y, a, b, blur, debias, reach=None, p=2):
    geomloss = pytest.importorskip("geomloss", reason="GeomLoss is the second oracle of the values")
    # scaling close to 1: enough iterations of GeomLoss's fixed schedule to converge
    # (its damped unbalanced updates need more of them: 0.97 leaves 3e-4 relative there).
    loss = geomloss.SamplesLoss("sinkhorn", p=p, blur=blur, scaling=0.97 if reach is None else 0.995, debias=debias,
                                reach=reach, backend="tensorized")
    return float(loss(a, x, b, y))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reach", [None, 0.8])
@pytest.mark.parametrize("debias", [False, True])
def test_values_match_geomloss(rng, debias, reach, p):
    x, y = rand(rng, 60, 3), rand(rng, 70, 3) + 0.3
    a, b = simplex(rng, 60), simplex(rng, 70)
    blur = 0.3
    if debias:
        mine = float(got.sinkhorn_divergence(x, y, a, b, blur=blur, p=p, reach=reach, tol=1e-11))
    else:
        mine = float(got.sinkhorn(x, y, a, b, blur=blur, p=p, reach=reach, tol=1e-11).cost)
    assert mine == pytest.approx(geomloss_value(x, y, a, b, blur, debias, reach, p), rel=2e-4)


def test_epsilon_schedule_is_geomloss_s_for_both_costs():
    legacy = pytest.importorskip("geomloss._legacy.sinkhorn_divergence", reason="GeomLoss's schedule is the oracle")
    from gencore.ot.sinkhorn import epsilon_schedule

    for p in (1, 2):
        for diameter, blur, scaling in ((1.7, 0.05, 0.5), (3.0, 0.01, 0.9), (0.2, 0.05, 0.5)):
            want = [float(e) for e in legacy.epsilon_schedule(p, diameter, blur, scaling)]
            assert epsilon_schedule(p, diameter, blur, scaling) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- properties

def test_divergence_of_a_measure_with_itself_is_zero_and_positive_otherwise(rng):
    x = rand(rng, 40, 2, dtype=torch.float32)
    # Zero up to the stopping tolerance (1e-3 of the mass) times the cost scale (~0.05 here).
    assert abs(float(got.sinkhorn_divergence(x, x, blur=0.1))) < 1e-5
    assert float(got.sinkhorn_divergence(x, x + 0.2, blur=0.1)) > 0.01
    # p = 1: the cost scale is ~0.5; every pair (x_i, x_i) is coincident in all three problems.
    x.requires_grad_()
    same = got.sinkhorn_divergence(x, x.detach(), blur=0.1, p=1)
    (grad,) = torch.autograd.grad(same, x)
    assert abs(float(same.detach())) < 1e-4 and torch.isfinite(grad).all() and float(grad.abs().max()) < 1e-3
    assert float(got.sinkhorn_divergence(x.detach(), x.detach() + 0.2, blur=0.1, p=1)) > 0.1


@pytest.mark.parametrize("p", [1, 2])
def test_whitened_cost_equals_the_plain_cost_of_transformed_points(rng, p):
    x, y = rand(rng, 25, 3), rand(rng, 30, 3)
    root = torch.randn(3, 3, generator=rng, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    w = root @ root.T
    got_w = got.sinkhorn(x, y, blur=0.2, p=p, cost="whitened", whitening=w, tol=1e-11)
    vals, vecs = torch.linalg.eigh(w)
    sqrt_w = vecs @ torch.diag(vals.sqrt()) @ vecs.T   # another factor of W: the cost must not care which
    plain = got.sinkhorn(x @ sqrt_w, y @ sqrt_w, blur=0.2, p=p, tol=1e-11)
    torch.testing.assert_close(got_w.cost, plain.cost, rtol=1e-9, atol=0)
    if p == 1:   # the cost is ((x - y)^T W (x - y))^(1/2): POT on that matrix
        diff = x[:, None, :] - y[None, :, :]
        cost = torch.einsum("nmi,ij,nmj->nm", diff, w, diff).sqrt().numpy()
        n, m = len(x), len(y)
        want = pot.bregman.sinkhorn_log(np.full(n, 1 / n), np.full(m, 1 / m), cost, 0.2, stopThr=1e-13,
                                        numItermax=100000)
        plan = (torch.exp((got_w.f[:, None] + got_w.g[None, :] - torch.from_numpy(cost)) / 0.2) / (n * m)).numpy()
        np.testing.assert_allclose(plan, want, rtol=0, atol=1e-9 * want.max())


def test_small_blur_in_float32_gives_no_nan(rng):
    x, y = rand(rng, 200, 3, dtype=torch.float32), rand(rng, 180, 3, dtype=torch.float32)
    blur = 1e-3 * math.sqrt(3)   # 1e-3 of the diameter of the unit cube
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # float32 may plateau above tol here: reported, allowed
        res = got.sinkhorn(x, y, blur=blur, max_iter=300)
        div = got.sinkhorn_divergence(x, y, blur=blur, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        euclidean = got.sinkhorn(x, y, blur=blur, p=1, max_iter=300)
    for t in (res.cost, res.f, res.g, div, euclidean.cost, euclidean.f, euclidean.g):
        assert torch.isfinite(t).all()
    assert res.status in ("converged", "plateau", "max_iter") and res.converged == (res.status == "converged")
    # At this blur OT_eps is close to the unregularised OT cost: within [0, max cost].
    assert 0 < float(res.cost) < 1.5


def test_a_stalled_error_is_detected_and_reported(rng, monkeypatch):
    # A rounding floor, made deterministic: every softmin is off by +-1e-4 eps, alternating
    # between calls, so the marginal error cannot go below ~1e-4; tol=1e-9 is out of reach.
    module = importlib.import_module("gencore.ot.sinkhorn")   # the attribute is the function

    exact = module._softmin
    calls = [0]

    def noisy(points, other, log_w, eps, p, gradient=False):
        f, t = exact(points, other, log_w, eps, p, gradient)
        calls[0] += 1
        return f + (1e-4 if calls[0] % 2 else -1e-4) * eps, t

    x, y = rand(rng, 60, 3), rand(rng, 50, 3)
    clean = got.sinkhorn(x, y, blur=0.2, tol=1e-9)
    assert clean.converged
    monkeypatch.setattr(module, "_softmin", noisy)
    with pytest.warns(RuntimeWarning, match="stopped decreasing at"):
        res = got.sinkhorn(x, y, blur=0.2, tol=1e-9, max_iter=100000)
    assert res.status == "plateau" and not res.converged
    assert res.n_iter < clean.n_iter + 2 * module.PLATEAU_ITERATIONS + 200
    assert 1e-5 < res.marginal_error < 1e-2


def test_warm_start_needs_fewer_iterations(rng):
    x, y = rand(rng, 150, 3), rand(rng, 140, 3)
    first = got.sinkhorn(x, y, blur=0.05, tol=1e-6)
    again = got.sinkhorn(x, y, blur=0.05, tol=1e-6, f0=first.f, g0=first.g)
    assert again.converged and again.n_iter <= 2      # from its own solution: done at once
    moved = x + 2e-4 * torch.randn(x.shape, generator=rng, dtype=torch.float64)
    cold = got.sinkhorn(moved, y, blur=0.05, tol=1e-6)
    warm = got.sinkhorn(moved, y, blur=0.05, tol=1e-6, f0=first.f, g0=first.g)
    assert cold.converged and warm.converged
    assert warm.n_iter < 0.75 * cold.n_iter
    torch.testing.assert_close(warm.cost, cold.cost, rtol=1e-5, atol=0)


def test_iteration_cap_sets_the_field_and_warns_with_the_error(rng):
    x, y = rand(rng, 50, 2), rand(rng, 60, 2)
    with pytest.warns(RuntimeWarning, match=r"max_iter=12 .*marginal error \d"):
        res = got.sinkhorn(x, y, blur=0.01, max_iter=12, tol=1e-9)
    assert not res.converged and res.status == "max_iter" and res.n_iter == 12
    assert math.isfinite(res.marginal_error) and res.marginal_error > 1e-9
    assert torch.isfinite(res.cost)
    with pytest.warns(RuntimeWarning, match="not converged"):
        got.sinkhorn_cost_matrix(torch.rand(5, 6, dtype=torch.float64), reg=1e-3, max_iter=3)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("p", [1, 2])
def test_divergence_gradcheck_points_and_weights(rng, p):
    x, y = rand(rng, 6, 2).requires_grad_(), rand(rng, 7, 2).requires_grad_()
    a, b = simplex(rng, 6).requires_grad_(), simplex(rng, 7).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: got.sinkhorn_divergence(x, y, blur=0.3, p=p, tol=1e-13), (x, y))
    # Balanced weights live on the simplex: perturb through the normalisation.
    assert torch.autograd.gradcheck(
        lambda a, b: got.sinkhorn_divergence(x.detach(), y.detach(), a / a.sum(), b / b.sum(), blur=0.3, p=p,
                                             tol=1e-13),
        (a, b))


@pytest.mark.parametrize("p", [1, 2])
def test_sinkhorn_cost_gradcheck_balanced_unbalanced_whitened(rng, p):
    x, y = rand(rng, 5, 2).requires_grad_(), rand(rng, 6, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: got.sinkhorn(x, y, blur=0.3, p=p, tol=1e-13).cost, (x, y))
    assert torch.autograd.gradcheck(lambda x, y: got.sinkhorn(x, y, blur=0.3, p=p, reach=0.5, tol=1e-13).cost,
                                    (x, y))
    assert torch.autograd.gradcheck(lambda x, y: got.sinkhorn_divergence(x, y, blur=0.3, p=p, reach=0.5, tol=1e-13),
                                    (x, y))
    root = (torch.eye(2, dtype=torch.float64) + 0.2 * rand(rng, 2, 2)).requires_grad_()
    assert torch.autograd.gradcheck(   # W = R R^T: symmetric perturbations only
        lambda x, root: got.sinkhorn(x, y.detach(), blur=0.3, p=p, tol=1e-13, cost="whitened",
                                     whitening=root @ root.T).cost, (x, root))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reach", [None, 0.6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_gradients_equal_autograd_of_the_reference_cost_under_the_plan(rng, p, reach, dtype):
    # Envelope theorem: dOT/dx = <pi, dC/dx> at the optimal plan pi. The oracle differentiates the
    # reference's dense cost (direct distances) by autograd, pi fixed from the float64 potentials.
    x, y = rand(rng, 150, 3, dtype=dtype), rand(rng, 97, 3, dtype=dtype) + 0.1
    x[4] = y[9]   # a coincident pair: its subgradient is 0
    blur = 0.1
    xg = x.clone().requires_grad_()
    res = got.sinkhorn(xg, y, blur=blur, p=p, reach=reach, tol=1e-12 if dtype == torch.float64 else 1e-5)
    (grad,) = torch.autograd.grad(res.cost, xg)
    exact = got.sinkhorn(x.double(), y.double(), blur=blur, p=p, reach=reach, tol=1e-12)
    a, b = torch.full((150,), 1 / 150, dtype=torch.float64), torch.full((97,), 1 / 97, dtype=torch.float64)
    plan = dense_plan(x, y, a, b, exact.f, exact.g, blur ** p, p)
    x64 = x.double().requires_grad_()
    (want,) = torch.autograd.grad((plan * reference.ground_cost(x64, y.double(), p)).sum(), x64)
    # Measured: 3e-13 (float64) and 2e-6 (float32, tol 1e-5) of the largest entry.
    rel = 1e-11 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(grad.double(), want, rtol=0, atol=rel * float(want.abs().max()))


def test_unbalanced_weights_refuse_gradients():
    a = torch.full((4,), 0.25, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="weights a"):
        got.sinkhorn_divergence(torch.rand(4, 2, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64),
                                a, reach=1.0)


# ---------------------------------------------------------------- arrays in, arrays out; bad input

def test_numpy_inputs_give_numpy_outputs_and_stay_untouched():
    x = np.random.default_rng(0).random((20, 3), dtype=np.float32)
    y = np.random.default_rng(1).random((25, 3), dtype=np.float32)
    x_copy = x.copy()
    res = got.sinkhorn(x, y, blur=0.2)
    assert isinstance(res.f, np.ndarray) and res.f.shape == (20,) and isinstance(res.cost, np.ndarray)
    assert isinstance(got.sinkhorn_divergence(x, y, blur=0.2), np.ndarray)
    assert np.array_equal(x, x_copy)


def test_torch_inputs_are_never_modified(rng):
    x, y = rand(rng, 20, 3), rand(rng, 22, 3)
    a, b = simplex(rng, 20), simplex(rng, 22)
    copies = [t.clone() for t in (x, y, a, b)]
    got.sinkhorn(x, y, a, b, blur=0.2)
    got.sinkhorn_divergence(x, y, a, b, blur=0.2, reach=1.0)
    for before, after in zip(copies, (x, y, a, b)):
        assert torch.equal(before, after)


def _bad_calls():
    x, y = torch.rand(5, 3), torch.rand(6, 3)
    nan_x = x.clone()
    nan_x[2, 1] = float("nan")
    neg = torch.full((5,), 0.2)
    neg[0] = -0.2
    return [
        (lambda: got.sinkhorn(x, y, a=neg), ValueError, "a must be >= 0"),
        (lambda: got.sinkhorn(x, y, a=torch.full((5,), 0.3)), ValueError, r"a\.sum\(\) == b\.sum\(\)"),
        (lambda: got.sinkhorn(x, y, a=torch.full((4,), 0.25)), ValueError, "a must have one weight per point"),
        (lambda: got.sinkhorn(x, torch.rand(6, 2)), ValueError, "feature dimension"),
        (lambda: got.sinkhorn(nan_x, y), ValueError, "x contains NaN"),
        (lambda: got.sinkhorn(x, y, blur=0.0), ValueError, "blur"),
        (lambda: got.sinkhorn(x, y, blur=-1.0), ValueError, "blur"),
        (lambda: got.sinkhorn_divergence(x, y, reach=0.0), ValueError, "reach"),
        (lambda: got.sinkhorn(torch.rand(0, 3), y), ValueError, "x is empty"),
        (lambda: got.sinkhorn_divergence(x, torch.rand(0, 3)), ValueError, "y is empty"),
        (lambda: got.sinkhorn(x, y, p=3), ValueError, r"p must be 1 \(cost \|x - y\|\) or 2 .*got 3"),
        (lambda: got.sinkhorn_divergence(x, y, p=0.5), ValueError, "p must be 1"),
        (lambda: got.sinkhorn(x, y, p=True), ValueError, "p must be 1"),
        (lambda: got.sinkhorn(x, y, scaling=1.5), ValueError, "scaling"),
        (lambda: got.sinkhorn(x, y, max_iter=0), ValueError, "max_iter"),
        (lambda: got.sinkhorn(x, y, f0=torch.zeros(5)), ValueError, "f0 and g0"),
        (lambda: got.sinkhorn(x, y, f0=torch.zeros(4), g0=torch.zeros(6)), ValueError, "f0 must have shape"),
        (lambda: got.sinkhorn(x, y, cost="whitened"), ValueError, "whitening"),
        (lambda: got.sinkhorn(x, y, cost="whitened", whitening=-torch.eye(3)), ValueError, "positive definite"),
        (lambda: got.sinkhorn(x, y, cost="whitened", whitening=torch.eye(2)), ValueError, r"whitening must be \[d, d\]"),
        (lambda: got.sinkhorn(x.double(), y), TypeError, "y must have the dtype of x"),
        (lambda: got.sinkhorn([[0.0]], y), TypeError, "x must be a torch.Tensor"),
        (lambda: got.sinkhorn_cost_matrix(torch.rand(4), reg=0.1), ValueError, "M must be"),
        (lambda: got.sinkhorn_cost_matrix(torch.rand(4, 5), torch.full((5,), 0.2), reg=0.1), ValueError,
         r"a must have shape \[4\]"),
        (lambda: got.sinkhorn_cost_matrix(torch.rand(4, 5), reg=0.0), ValueError, "reg"),
        (lambda: got.sinkhorn_cost_matrix(torch.rand(0, 5), reg=0.1), ValueError, "M is empty"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_names_the_argument(index):
    call, exc, text = _bad_calls()[index]
    with pytest.raises(exc, match=text):
        call()


def test_public_names():
    for name in ("sinkhorn", "sinkhorn_divergence", "sinkhorn_cost_matrix", "SinkhornResult"):
        assert name in got.__all__ and getattr(gencore.ot, name) is not None
