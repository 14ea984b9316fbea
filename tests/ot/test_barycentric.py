"""gencore.ot.barycentric_projection and its op, gencore::ot_barycentric_projection.

Oracle: the dense plan pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) of a solved
problem (float64, direct distances), T = pi y / pi 1; POT's plan from its own
``sinkhorn_log`` where installed. The op's generic contract (shapes, fake kernel,
CUDA glue over the fake module, non-contiguous inputs, NaN) is in test_op_contract.py.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from gencore import ot as got
from gencore.ot import reference
from gencore.ot.ops._sinkhorn import BARYCENTRIC_PROJECTION, SINKHORN_SOFTMIN


def rand(rng, *shape, dtype=torch.float64):
    return torch.rand(*shape, generator=rng, dtype=torch.float64).to(dtype)


def simplex(rng, n, dtype=torch.float64):
    w = 0.2 + torch.rand(n, generator=rng, dtype=torch.float64)
    return (w / w.sum()).to(dtype)


def dense_map(x, y, b, g, eps, p=2, whitening=None):
    """sum_j softmax_j(log b_j + (g_j - C_ij) / eps) y_j from the dense float64 cost."""
    x, y = x.double(), y.double()
    diff = x[:, None, :] - y[None, :, :]
    sq = (diff ** 2).sum(-1) if whitening is None else torch.einsum("nmd,de,nme->nm", diff, whitening.double(), diff)
    cost = 0.5 * sq if p == 2 else sq.sqrt()
    return torch.softmax(torch.log(b.double()) + (g.double() - cost) / eps, 1) @ y


def solve(x, y, a, b, blur, p=2, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # an unconverged solve would not test the map
        return got.sinkhorn(x, y, a, b, blur=blur, p=p, tol=1e-7, max_iter=5000, **kw)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 40, 3), (13, 29, 5), (200, 3, 2), (65, 300, 17)])
def test_in_sample_map_is_the_plans_conditional_mean(rng, p, n, m, d):
    x, y, a, b = rand(rng, n, d), rand(rng, m, d), simplex(rng, n), simplex(rng, m)
    r = solve(x, y, a, b, blur=0.3, p=p)
    cost = reference.ground_cost(x, y, p)
    plan = a[:, None] * b[None, :] * torch.exp((r.f[:, None] + r.g[None, :] - cost) / r.eps)
    want = plan @ y / plan.sum(1, keepdim=True)
    got_map = got.barycentric_projection(x, y, r.g, b, blur=0.3, p=p)
    assert got_map.dtype == torch.float64 and got_map.shape == (n, d)
    torch.testing.assert_close(got_map, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", [1, 2])
def test_float32_and_out_of_sample_points_against_the_dense_form(rng, p):
    y, b = rand(rng, 700, 6, dtype=torch.float32), simplex(rng, 700, torch.float32)
    g = torch.randn(700, generator=rng) * 0.01
    x = rand(rng, 333, 6, dtype=torch.float32) * 1.5 - 0.25   # partly outside y's box
    blur = 0.1
    eps = blur ** p
    out = got.barycentric_projection(x, y, g, b, blur=blur, p=p)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), dense_map(x, y, b, g, eps, p), rtol=0, atol=2e-5)


def test_p2_map_is_x_minus_the_softmins_gradient(rng):
    # For p = 2 the envelope gradient of the softmin is x - T(x): two outputs of one kernel agree.
    x, y = rand(rng, 50, 4, dtype=torch.float32), rand(rng, 90, 4, dtype=torch.float32)
    h = torch.randn(90, generator=rng)
    _, grad = SINKHORN_SOFTMIN(x, y, h, 0.05, 2, True)
    torch.testing.assert_close(BARYCENTRIC_PROJECTION(x, y, h, 0.05, 2), x - grad, rtol=0, atol=1e-5)


def test_whitened_cost_maps_in_the_original_coordinates(rng):
    d = 4
    x, y, a, b = rand(rng, 30, d), rand(rng, 45, d), simplex(rng, 30), simplex(rng, 45)
    root = torch.randn(d, d, generator=rng, dtype=torch.float64)
    w = root @ root.T + d * torch.eye(d, dtype=torch.float64)
    r = solve(x, y, a, b, blur=0.5, cost="whitened", whitening=w)
    out = got.barycentric_projection(x, y, r.g, b, blur=0.5, cost="whitened", whitening=w)
    torch.testing.assert_close(out, dense_map(x, y, b, r.g, r.eps, 2, whitening=w), rtol=1e-9, atol=1e-9)


def test_unbalanced_plan_keeps_the_same_conditional(rng):
    x, y = rand(rng, 20, 3), rand(rng, 25, 3)
    a, b = simplex(rng, 20), 2 * simplex(rng, 25)   # unequal masses: only meaningful unbalanced
    r = solve(x, y, a, b, blur=0.3, reach=0.5)
    cost = reference.ground_cost(x, y, 2)
    plan = a[:, None] * b[None, :] * torch.exp((r.f[:, None] + r.g[None, :] - cost) / r.eps)
    torch.testing.assert_close(got.barycentric_projection(x, y, r.g, b, blur=0.3),
                               plan @ y / plan.sum(1, keepdim=True), rtol=1e-9, atol=1e-9)


def test_against_pots_plan(rng):
    pot = pytest.importorskip("ot", reason="POT's sinkhorn_log plan is the peer oracle")
    x, y, a, b = rand(rng, 40, 3), rand(rng, 55, 3), simplex(rng, 40), simplex(rng, 55)
    eps = 0.05
    cost = 0.5 * pot.dist(x.numpy(), y.numpy(), metric="sqeuclidean")
    plan = pot.bregman.sinkhorn_log(a.numpy(), b.numpy(), cost, eps, numItermax=100_000, stopThr=1e-12)
    want = plan @ y.numpy() / plan.sum(1, keepdims=True)
    r = solve(x, y, a, b, blur=math.sqrt(eps))
    out = got.barycentric_projection(x, y, r.g, b, blur=math.sqrt(eps))
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-6)


def test_shapes_layouts_arrays_and_untouched_inputs(rng):
    y, g = rand(rng, 17, 3, dtype=torch.float32), torch.randn(17, generator=rng)
    empty = got.barycentric_projection(torch.zeros(0, 3), y, g)
    assert empty.shape == (0, 3) and empty.dtype == torch.float32
    x = rand(rng, 3, 11, dtype=torch.float32)
    copies = [t.clone() for t in (x, y, g)]
    strided = got.barycentric_projection(x.T, y.T.contiguous().T, g[::1], blur=0.2)   # x.T: [11, 3], a view
    torch.testing.assert_close(strided, got.barycentric_projection(x.T.contiguous(), y, g, blur=0.2))
    assert all(torch.equal(t, c) for t, c in zip((x, y, g), copies))
    as_numpy = got.barycentric_projection(x.T.numpy(), y.numpy(), g.numpy(), blur=0.2)
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, strided.numpy(), rtol=0, atol=1e-6)
    half = got.barycentric_projection(x.T.half(), y.half(), g, blur=0.2)
    assert half.dtype == torch.float32


def test_bad_input_names_the_argument(rng):
    x, y, g = rand(rng, 5, 3, dtype=torch.float32), rand(rng, 7, 3, dtype=torch.float32), torch.zeros(7)
    bp = got.barycentric_projection
    with pytest.raises(ValueError, match="g must hold one potential"):
        bp(x, y, torch.zeros(6))
    with pytest.raises(ValueError, match="g"):
        bp(x, y, torch.full((7,), math.nan))
    with pytest.raises(ValueError, match="y is empty"):
        bp(x, y[:0], g[:0])
    with pytest.raises(ValueError, match="feature dimension"):
        bp(x[:, :2], y, g)
    with pytest.raises(ValueError, match="x"):
        bp(x.reshape(-1), y, g)
    with pytest.raises(ValueError, match="x"):
        bp(torch.full((2, 3), math.inf), y, g)
    with pytest.raises(ValueError, match="blur"):
        bp(x, y, g, blur=0.0)
    with pytest.raises(ValueError, match="p must be"):
        bp(x, y, g, p=3)
    with pytest.raises(ValueError, match="b must be >= 0"):
        bp(x, y, g, -torch.ones(7))
    with pytest.raises(ValueError, match="b are all zero"):
        bp(x, y, g, torch.zeros(7))
    with pytest.raises(ValueError, match="whitening"):
        bp(x, y, g, cost="whitened", whitening=-torch.eye(3))
    with pytest.raises(TypeError, match="dtype"):
        bp(x, y.double(), g)
    with pytest.raises(NotImplementedError, match="not differentiable"):
        bp(x.requires_grad_(), y, g)


@pytest.mark.parametrize("p", [1, 2])
def test_cuda_glue_streams_the_map_over_the_fake(rng, fake_cuda_tiles, p):
    fake = fake_cuda_tiles
    x, y = rand(rng, 9, 4, dtype=torch.float32), rand(rng, 45, 4, dtype=torch.float32)
    b = simplex(rng, 45, torch.float32)
    b[:14] = 0   # the first two tiles have no mass
    g = torch.randn(45, generator=rng) * 0.01
    h = torch.log(b) + g / 0.05 ** p
    out = BARYCENTRIC_PROJECTION.implementation("native-cuda")(x, y, h, 0.05 ** p, p)
    assert fake.calls["dataset_denoise_tile"] == 7   # ceil(45 / 7) tiles, one pass
    torch.testing.assert_close(out.double(), dense_map(x, y, b, g, 0.05 ** p, p), rtol=0, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the glue is tested over the fake above)")
@pytest.mark.parametrize("p", [1, 2])
def test_cuda_matches_the_cpu_kernel(rng, p):
    x, y = rand(rng, 300, 16, dtype=torch.float32), rand(rng, 5000, 16, dtype=torch.float32)
    g, b = torch.randn(5000, generator=rng) * 0.01, simplex(rng, 5000, torch.float32)
    cpu = got.barycentric_projection(x, y, g, b, blur=0.1, p=p)
    gpu = got.barycentric_projection(x.cuda(), y.cuda(), g.cuda(), b.cuda(), blur=0.1, p=p)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=5e-5)
