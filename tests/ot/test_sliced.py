"""gencore.ot.sliced_wasserstein and the 1-D Wasserstein op: POT's
sliced_wasserstein_distance on the same projections, closed forms, gradients."""
from __future__ import annotations

import pytest
import torch

from gencore import ot as got
from gencore.ot import reference
from gencore.ot.ops._sliced import SLICED_1D, SLICED_1D_GRAD

pot = pytest.importorskip("ot")


def unit_directions(rng, d, count, dtype=torch.float64):
    theta = torch.randn(d, count, generator=rng, dtype=torch.float64)
    return (theta / theta.norm(dim=0, keepdim=True)).to(dtype)


@pytest.mark.parametrize("p", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("n,m,d,weighted", [(50, 50, 3, False), (37, 81, 5, True), (1, 9, 2, True),
                                            (200, 120, 16, False)])
def test_matches_pot_on_the_same_projections(rng, n, m, d, weighted, p):
    x = torch.randn(n, d, generator=rng, dtype=torch.float64)
    y = torch.randn(m, d, generator=rng, dtype=torch.float64) * 1.5 + 0.3
    a = torch.rand(n, generator=rng, dtype=torch.float64) + 0.1 if weighted else None
    b = torch.rand(m, generator=rng, dtype=torch.float64) + 0.1 if weighted else None
    theta = unit_directions(rng, d, 30)
    ours = got.sliced_wasserstein(x, y, a, b, p=p, projections=theta)
    want = pot.sliced_wasserstein_distance(x.numpy(), y.numpy(), None if a is None else (a / a.sum()).numpy(),
                                           None if b is None else (b / b.sum()).numpy(), p=p,
                                           projections=theta.numpy())
    assert ours.dtype == torch.float64
    assert abs(float(ours) - float(want)) <= 1e-10 * max(1.0, float(want))
    ones = dict(dtype=torch.float64)
    ref = reference.sliced_wasserstein(x, y, torch.ones(n, **ones) if a is None else a,
                                       torch.ones(m, **ones) if b is None else b,
                                       theta, p)
    assert abs(float(ours) - float(ref)) <= 1e-10 * max(1.0, float(want))


def test_one_dimension_is_the_sorted_matching(rng):
    x = torch.randn(64, 1, generator=rng, dtype=torch.float64)
    y = torch.randn(64, 1, generator=rng, dtype=torch.float64) + 2
    closed = (x.flatten().sort().values - y.flatten().sort().values).square().mean().sqrt()
    ones = torch.ones(1, 1, dtype=torch.float64)
    assert abs(float(got.sliced_wasserstein(x, y, projections=ones)) - float(closed)) <= 1e-12


def test_float32_and_seeded_random_projections(rng):
    x = torch.randn(300, 8, generator=rng)
    y = torch.randn(250, 8, generator=rng) + 0.5
    s1 = got.sliced_wasserstein(x, y, n_projections=64, seed=3)
    s2 = got.sliced_wasserstein(x, y, n_projections=64, seed=3)
    s3 = got.sliced_wasserstein(x, y, n_projections=64, seed=4)
    assert s1.dtype == torch.float32 and torch.equal(s1, s2) and not torch.equal(s1, s3)
    theta = got.exact._random_projections(8, 64, 3, torch.float64, "cpu")
    torch.testing.assert_close(theta.norm(dim=0), torch.ones(64, dtype=torch.float64))
    want = pot.sliced_wasserstein_distance(x.double().numpy(), y.double().numpy(), projections=theta.numpy())
    assert abs(float(s1) - float(want)) <= 1e-4 * float(want)


def test_gradients_match_the_reference_and_gradcheck(rng):
    n, m, d = 12, 9, 3
    x = torch.randn(n, d, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(m, d, generator=rng, dtype=torch.float64, requires_grad=True)
    b = torch.rand(m, generator=rng, dtype=torch.float64) + 0.2
    theta = unit_directions(rng, d, 7)
    for p in (2.0, 1.5):
        ours = got.sliced_wasserstein(x, y, None, b, p=p, projections=theta)
        gx, gy = torch.autograd.grad(ours, (x, y))
        ref = reference.sliced_wasserstein(x, y, torch.ones(n, dtype=torch.float64), b, theta, p)
        rx, ry = torch.autograd.grad(ref, (x, y))
        torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gy, ry, rtol=1e-9, atol=1e-12)
        assert float(gx.abs().sum()) > 0
    assert torch.autograd.gradcheck(lambda u, w: got.sliced_wasserstein(u, w, None, b, projections=theta), (x, y))


def test_1d_op_and_gradient_op_match_the_reference(rng):
    xp = torch.randn(5, 13, generator=rng, dtype=torch.float64)
    yp = torch.randn(5, 6, generator=rng, dtype=torch.float64)
    wx = torch.rand(13, generator=rng, dtype=torch.float64) + 0.1
    wx = wx / wx.sum()
    wy = torch.full((6,), 1 / 6, dtype=torch.float64)
    gx, gy = SLICED_1D_GRAD(xp, yp, wx, wy, 2.0)
    rx, ry = SLICED_1D_GRAD.implementation("reference")(xp, yp, wx, wy, 2.0)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gy, ry, rtol=1e-10, atol=1e-13)
    values = SLICED_1D(xp, yp, wx, wy, 2.0)
    torch.testing.assert_close(values, SLICED_1D.implementation("reference")(xp, yp, wx, wy, 2.0), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_sort_handles_signs_ties_and_extremes(dtype):
    """Negative, zero, -0.0, tied and huge values: the kernel's order is the numeric order."""
    row = torch.tensor([3.0, -1.0, 0.0, -0.0, 1e30, -1e30, 2.5, -1.0, 7e-30, -7e-30, 3.0], dtype=dtype)
    other = torch.linspace(-2, 2, 11, dtype=dtype)
    w = torch.full((11,), 1 / 11, dtype=torch.float64)
    value = SLICED_1D(row[None], other[None], w, w, 1.0)
    want = (row.double().sort().values - other.double()).abs().mean()
    assert abs(float(value) - float(want)) <= 1e-6 * float(want)


def test_numpy_inputs_come_back_as_numpy(rng):
    x = torch.randn(20, 2, generator=rng, dtype=torch.float64)
    y = torch.randn(30, 2, generator=rng, dtype=torch.float64)
    out = got.sliced_wasserstein(x.numpy(), y.numpy(), seed=0)
    assert float(out) == float(got.sliced_wasserstein(x, y, seed=0))


def test_bad_input_names_the_argument(rng):
    x = torch.randn(10, 3, generator=rng, dtype=torch.float64)
    y = torch.randn(8, 3, generator=rng, dtype=torch.float64)
    x_nan = x.clone()
    x_nan[2, 1] = float("nan")
    cases = [
        (dict(x=x, y=y[:, :2]), ValueError, "feature dimension"),
        (dict(x=x[:0], y=y), ValueError, "non-empty"),
        (dict(x=x_nan, y=y), ValueError, "x contains NaN"),
        (dict(x=x, y=y, a=-torch.ones(10)), ValueError, "a has negative"),
        (dict(x=x, y=y, b=torch.ones(7)), ValueError, "b must have 8"),
        (dict(x=x, y=y, p=0), ValueError, "p must be > 0"),
        (dict(x=x, y=y, n_projections=0), ValueError, "n_projections"),
        (dict(x=x, y=y, projections=torch.ones(2, 4, dtype=torch.float64)), ValueError, "projections"),
        (dict(x=x, y=y.float()), TypeError, "y must have the dtype"),
    ]
    for kwargs, exc, text in cases:
        with pytest.raises(exc, match=text):
            got.sliced_wasserstein(**kwargs)


def test_thread_counts_give_identical_results(rng, num_threads):
    x = torch.randn(400, 6, generator=rng, dtype=torch.float64, requires_grad=True)
    y = torch.randn(300, 6, generator=rng, dtype=torch.float64)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        value = got.sliced_wasserstein(x, y, n_projections=40, seed=1)
        results.append((value.detach(), torch.autograd.grad(value, x)[0]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ---------------------------------------------------------------- the CUDA path

def _weights(rng, n, uniform):
    if uniform:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.rand(n, generator=rng, dtype=torch.float64) + 0.05
    return w / w.sum()


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("P,n,m,uniform", [(1, 1, 1, True), (3, 7, 7, True), (4, 13, 6, False), (2, 1, 9, False),
                                           (5, 300, 257, False)], ids=str)
def test_cuda_glue_over_the_fake(rng, monkeypatch, p, P, n, m, uniform):
    # The glue sorts, accumulates and scatters back; the fake integrates by the header's
    # formula over host memory. Against the reference: values and gradients in the rows'
    # own order, for fp32 points (fp16 in float32), ties included.
    from gencore import _native, _native_call

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    xp = torch.randn(P, n, generator=rng)
    yp = torch.randn(P, m, generator=rng)
    if n > 2:
        xp[:, 1] = xp[:, 0]  # a tie: the stable order decides which one is matched first
    wx, wy = _weights(rng, n, uniform), _weights(rng, m, uniform)
    values = SLICED_1D.implementation("native-cuda")(xp, yp, wx, wy, p)
    gx, gy = SLICED_1D_GRAD.implementation("native-cuda")(xp, yp, wx, wy, p)
    want = SLICED_1D.implementation("reference")(xp.double(), yp.double(), wx, wy, p)
    rx, ry = SLICED_1D_GRAD.implementation("reference")(xp.double(), yp.double(), wx, wy, p)
    assert values.dtype == gx.dtype == gy.dtype == torch.float32
    torch.testing.assert_close(values.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gx.double(), rx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy.double(), ry, rtol=1e-4, atol=1e-6)
    assert fake.calls["sliced_1d"] == 2
    half = SLICED_1D.implementation("native-cuda")(xp.half(), yp.half(), wx, wy, p)
    torch.testing.assert_close(half.double(), SLICED_1D.implementation("reference")(
        xp.half().double(), yp.half().double(), wx, wy, p), rtol=1e-5, atol=1e-7)


def test_cuda_kernel_refuses_bad_sizes_over_the_fake():
    from tests.cuda_fake import FakeCuda
    fake = FakeCuda()
    with pytest.raises(ValueError, match="p must be"):
        fake.sliced_1d(0, 0, 0, 0, 1, 1, 1, 0.0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="both or neither"):
        fake.sliced_1d(0, 0, 0, 0, 1, 1, 1, 2.0, 0, 8, 0, 0, 0)
    with pytest.raises(ValueError, match="at least one point"):
        fake.sliced_1d(0, 0, 0, 0, 1, 0, 1, 2.0, 0, 0, 0, 0, 0)
    fake.sliced_1d(0, 0, 0, 0, 0, 0, 0, 2.0, 0, 0, 0, 0, 0)  # no projections: nothing to do


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and the gencore._cuda module")
@pytest.mark.parametrize("n,m,weighted", [(500, 500, False), (301, 77, True)], ids=str)
def test_cuda_matches_the_cpu_kernel(rng, n, m, weighted):
    x = torch.randn(n, 8, generator=rng)
    y = torch.randn(m, 8, generator=rng) + 0.5
    a = _weights(rng, n, not weighted).float()
    theta = unit_directions(rng, 8, 64, torch.float32)
    cpu_x, cuda_x = x.clone().requires_grad_(), x.cuda().requires_grad_()
    want = got.sliced_wasserstein(cpu_x, y, a, projections=theta)
    value = got.sliced_wasserstein(cuda_x, y.cuda(), a.cuda(), projections=theta.cuda())
    torch.testing.assert_close(value.cpu(), want, rtol=1e-5, atol=1e-6)
    want.backward()
    value.backward()
    torch.testing.assert_close(cuda_x.grad.cpu(), cpu_x.grad, rtol=1e-4, atol=1e-6)
