"""Score-matching losses: the fused DSM loss and its backward, EDM / VP / VE
preconditioning and sampling, a network trained with the EDM loss reaching
the exact denoiser's loss, sliced score matching, the DMD gradient."""
from __future__ import annotations

import math

import pytest
import torch

from gencore.score import (EDMPrecond, VEPrecond, VPPrecond, dmd_gradient, dmd_loss, dsm_loss, dsm_target, edm_loss,
                           edm_precond, gmm_denoiser, sliced_score_matching_loss, ve_loss, ve_precond, vp_loss,
                           vp_precond)
from gencore.score import reference

from tests.conftest import cuda_only, on_a_busy_side_stream


def randn(rng, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=rng, dtype=torch.float64).to(dtype)


def direct_dsm(raw, x, target, c_skip, c_out, weight):
    b = raw.shape[0]
    pred = c_skip.view(b, *[1] * (raw.dim() - 1)) * x + c_out.view(b, *[1] * (raw.dim() - 1)) * raw
    return weight * ((pred - target) ** 2).reshape(b, -1).mean(1)


# ---------------------------------------------------------------- the fused loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (16, 3, 8, 8), (5, 1001), (3, 2, 1, 17)], ids=str)
def test_dsm_loss_matches_direct_formula(rng, shape, dtype):
    raw, x, target = (randn(rng, *shape) for _ in range(3))
    c = [0.1 + torch.rand(shape[0], generator=rng, dtype=torch.float64) for _ in range(3)]
    got = dsm_loss(raw.to(dtype), x.to(dtype), target.to(dtype), *(t.to(dtype) for t in c), reduction="none")
    want = direct_dsm(raw, x, target, *c)
    assert got.dtype == dtype and got.shape == (shape[0],)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    assert torch.allclose(dsm_loss(raw, x, target, *c), want.mean(), rtol=1e-12)
    assert torch.allclose(dsm_loss(raw, x, target, *c, reduction="sum"), want.sum(), rtol=1e-12)


def test_dsm_loss_defaults_are_a_plain_mse(rng):
    raw, target = randn(rng, 6, 5), randn(rng, 6, 5)
    torch.testing.assert_close(dsm_loss(raw, torch.zeros_like(raw), target), ((raw - target) ** 2).mean())


def test_dsm_gradients(rng):
    raw, x, target = (randn(rng, 4, 3, 2).requires_grad_() for _ in range(3))
    c = [0.1 + torch.rand(4, generator=rng, dtype=torch.float64) for _ in range(3)]
    torch.autograd.gradcheck(lambda r, x, t: dsm_loss(r, x, t, *c, reduction="none"), (raw, x, target))
    # the native backward equals autograd of the direct formula
    a = raw.detach().clone().requires_grad_()
    dsm_loss(a, x.detach(), target.detach(), *c).backward()
    b = raw.detach().clone().requires_grad_()
    direct_dsm(b, x.detach(), target.detach(), *c).mean().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dsm_gradient_written_by_the_forward(rng, reduction, dtype):
    # An eager mean/sum loss needing only raw's gradient gets it from the forward pass:
    # the same gradient as the two-pass path and the direct formula, handed to raw.grad
    # without a copy, for any upstream gradient, twice under retain_graph.
    from gencore.score.ops import _losses as ops
    b, shape = 6, (6, 3, 5, 7)
    raw, x, target = (randn(rng, *shape) for _ in range(3))
    c = [0.1 + torch.rand(b, generator=rng, dtype=torch.float64) for _ in range(3)]
    cast = [t.to(dtype) for t in (raw, x, target, *c)]
    fused = cast[0].clone().requires_grad_()
    loss = dsm_loss(fused, *cast[1:], reduction=reduction)
    assert type(loss.grad_fn).__name__.startswith("_GradientFromForward")
    loss.backward(retain_graph=True)
    two_pass = cast[0].clone().requires_grad_()
    per_sample = dsm_loss(two_pass, *cast[1:], reduction="none")
    (per_sample.mean() if reduction == "mean" else per_sample.sum()).backward()
    assert fused.grad.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(fused.grad.double(), two_pass.grad.double(), rtol=tol, atol=tol * 1e-2)
    want = direct_dsm(*(t.double() for t in cast)).mean() if reduction == "mean" else None
    if want is not None:
        torch.testing.assert_close(loss.double(), want, rtol=tol, atol=0)
    first = fused.grad.clone()
    fused.grad = None
    (loss * 3.0).backward()  # the retained graph, an upstream gradient of 3
    torch.testing.assert_close(fused.grad, 3.0 * first, rtol=tol, atol=tol * 1e-2)

    handed = []
    real_op = ops.DSM_LOSS_AND_GRAD.trusted
    def spy(*args):
        out = real_op(*args)
        handed.append(out[1].data_ptr())  # not the tensor: a second reference would make autograd copy it
        return out
    fresh = cast[0].clone().requires_grad_()
    try:
        ops.DSM_LOSS_AND_GRAD.trusted = spy
        dsm_loss(fresh, *cast[1:], reduction=reduction).backward()
    finally:
        ops.DSM_LOSS_AND_GRAD.trusted = real_op
    if dtype != torch.bfloat16:  # bfloat16 is computed in float32, then cast: a new tensor
        assert fresh.grad.data_ptr() == handed[0]


def test_dsm_two_pass_path_where_the_forward_cannot_know_the_gradient(rng):
    # gradients to x or target, per-sample losses, create_graph, tracing: the registered ops
    raw, x, target = (randn(rng, 4, 9).requires_grad_() for _ in range(3))
    c = [0.1 + torch.rand(4, generator=rng, dtype=torch.float64) for _ in range(3)]
    for loss in (dsm_loss(raw, x, target, *c), dsm_loss(raw, x.detach(), target, *c),
                 dsm_loss(raw, x.detach(), target.detach(), *c, reduction="none").sum()):
        assert not type(loss.grad_fn).__name__.startswith("_GradientFromForward")
    (g,) = torch.autograd.grad(dsm_loss(raw, x.detach(), target.detach(), *c), raw, create_graph=True)
    b = raw.detach().clone().requires_grad_()
    direct_dsm(b, x.detach(), target.detach(), *c).mean().backward()
    torch.testing.assert_close(g, b.grad, rtol=1e-12, atol=1e-14)
    empty = torch.zeros(0, 9, dtype=torch.float64, requires_grad=True)  # an empty batch: torch's mean (NaN), no crash
    none = torch.zeros(0, dtype=torch.float64)
    loss = dsm_loss(empty, empty.detach(), empty.detach(), none, none, none)
    assert loss.isnan() and not type(loss.grad_fn).__name__.startswith("_GradientFromForward")
    loss.backward()
    assert empty.grad.shape == (0, 9)
    compiled = torch.compile(lambda r: dsm_loss(r, x.detach(), target.detach(), *c), fullgraph=True)
    a = raw.detach().clone().requires_grad_()
    compiled(a).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_dsm_bad_input(rng):
    raw = randn(rng, 4, 3)
    ones = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="target"):
        dsm_loss(raw, raw, raw[:, :2])
    with pytest.raises(ValueError, match="c_skip"):
        dsm_loss(raw, raw, raw, ones[:3])
    with pytest.raises(ValueError, match="reduction"):
        dsm_loss(raw, raw, raw, reduction="avg")
    bad = raw.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(ValueError, match="raw"):
        dsm_loss(bad, raw, raw, ones, ones, ones)
    with pytest.raises(NotImplementedError, match="c_out"):
        dsm_loss(raw.requires_grad_(), raw, raw, ones, ones.clone().requires_grad_(), ones).backward()
    from gencore.score.ops._losses import DSM_LOSS_AND_GRAD
    for bad_scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="grad_scale"):
            DSM_LOSS_AND_GRAD(raw.detach(), raw.detach(), raw.detach(), ones, ones, ones, bad_scale)


@pytest.mark.parametrize("kind", ["x0", "epsilon", "v", "flow"])
def test_targets(rng, kind):
    y, n = randn(rng, 5, 4), randn(rng, 5, 4)
    t = torch.rand(5, generator=rng, dtype=torch.float64)
    alpha, sigma = torch.cos(t), torch.sin(t)
    target = dsm_target(kind, y, n, sigma, alpha)
    want = {"x0": y, "epsilon": n, "v": alpha[:, None] * n - sigma[:, None] * y, "flow": n - y}[kind]
    torch.testing.assert_close(target, want)
    with pytest.raises(ValueError, match="parameterization"):
        dsm_target("score", y, n, sigma)


# ---------------------------------------------------------------- preconditioning (EDM Table 1)

def test_edm_coefficients_by_hand():
    sd = 0.5
    c_skip, c_out, c_in, c_noise, weight = edm_precond(torch.tensor([sd]), sd)
    assert math.isclose(float(c_skip), 0.5) and math.isclose(float(c_out), sd / math.sqrt(2))
    assert math.isclose(float(c_in), 1 / (sd * math.sqrt(2))) and math.isclose(float(c_noise), math.log(sd) / 4)
    assert math.isclose(float(weight), 1 / float(c_out) ** 2)
    s = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, _, _ = edm_precond(s, sd)
    # unit variance of the network's input and target (EDM appendix B.6)
    torch.testing.assert_close(c_in * torch.sqrt(s * s + sd * sd), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(c_skip + c_out ** 2 / sd ** 2 * 0 + (s * s) / (s * s + sd * sd),
                               torch.ones(3, dtype=torch.float64))


def test_vp_and_ve_coefficients():
    s = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise, weight = vp_precond(s)
    torch.testing.assert_close(c_out, -s)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(s * s + 1))
    t = c_noise / 999
    torch.testing.assert_close(torch.sqrt(torch.expm1(0.5 * 19.9 * t * t + 0.1 * t)), s)  # t inverts sigma(t)
    c_skip, c_out, c_in, c_noise, weight = ve_precond(s)
    torch.testing.assert_close(c_out, s)
    torch.testing.assert_close(c_noise, torch.log(s / 2))
    torch.testing.assert_close(weight, 1 / (s * s))


class _Linear(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = torch.nn.Linear(d + 1, d, dtype=torch.float64)

    def forward(self, x, c_noise):
        return self.lin(torch.cat([x, c_noise[:, None].to(x.dtype)], 1))


@pytest.mark.parametrize("precond,loss", [(EDMPrecond, edm_loss), (VPPrecond, vp_loss), (VEPrecond, ve_loss)])
def test_fused_loss_equals_the_loss_of_the_denoiser(rng, precond, loss):
    torch.manual_seed(0)
    net = precond(_Linear(3))
    y, n = randn(rng, 8, 3), randn(rng, 8, 3)
    sigma = 0.1 + 3 * torch.rand(8, generator=rng, dtype=torch.float64)
    fused = loss(net, y, sigma=sigma, noise=n, reduction="none")
    x = y + sigma[:, None] * n
    weight = net.coefficients(sigma)[4] if precond is not EDMPrecond else edm_precond(sigma)[4]
    plain = weight * ((net(x, sigma) - y) ** 2).mean(1)
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)
    # the generic path (any callable denoiser) gives the same
    torch.testing.assert_close(loss(lambda x, s: net(x, s), y, sigma=sigma, noise=n, reduction="none"), plain,
                               rtol=1e-10, atol=1e-12)
    fused.sum().backward()
    assert net.net.lin.weight.grad is not None and torch.isfinite(net.net.lin.weight.grad).all()


def test_sigma_sampling_distributions():
    g = torch.Generator().manual_seed(3)
    y = torch.zeros(20000, 1, dtype=torch.float64)
    captured = {}

    def spy(x, sigma):
        captured["sigma"] = sigma
        return x
    edm_loss(spy, y, generator=g)
    log_s = torch.log(captured["sigma"])
    assert abs(float(log_s.mean()) + 1.2) < 0.05 and abs(float(log_s.std()) - 1.2) < 0.05
    ve_loss(spy, y, generator=g)
    log_s = torch.log(captured["sigma"])
    assert float(log_s.min()) >= math.log(0.02) - 1e-12 and float(log_s.max()) <= math.log(100.0) + 1e-12
    assert abs(float(log_s.mean()) - 0.5 * (math.log(0.02) + math.log(100))) < 0.05
    vp_loss(spy, y, generator=g)
    s = captured["sigma"]
    t_max = 1.0
    assert float(s.max()) <= math.sqrt(math.expm1(0.5 * 19.9 * t_max ** 2 + 0.1 * t_max)) + 1e-9


def test_trained_network_approaches_the_exact_denoisers_loss():
    """A small network trained with the EDM loss on a 2-D mixture for a few
    hundred steps gets close to the loss of the exact denoiser, which is the
    minimum of the expected loss: the loss is right, and its gradient is."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    means = torch.tensor([[-1.0, -0.5], [1.0, 0.8], [0.2, -1.2]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    variances = torch.tensor([0.05, 0.08, 0.03], dtype=torch.float64)

    def sample(n):
        k = torch.multinomial(weights, n, replacement=True, generator=g)
        return means[k] + torch.randn(n, 2, generator=g, dtype=torch.float64) * variances[k, None].sqrt()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                           torch.nn.SiLU(), torch.nn.Linear(64, 2)).double()

        def forward(self, x, c_noise):
            return self.mlp(torch.cat([x, c_noise[:, None]], 1))

    model = EDMPrecond(Net(), sigma_data=0.9)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = edm_loss(model, sample(512), sigma_data=0.9, P_mean=-1.0, P_std=1.0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = sample(8192)
    sigma = torch.exp(-1.0 + torch.randn(8192, generator=g, dtype=torch.float64))
    n = torch.randn(8192, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        trained = edm_loss(model, y, sigma=sigma, noise=n, sigma_data=0.9)
    exact = edm_loss(lambda x, s: gmm_denoiser(x, means, weights, variances, s), y, sigma=sigma, noise=n,
                     sigma_data=0.9)
    untrained = edm_loss(EDMPrecond(Net(), sigma_data=0.9), y, sigma=sigma, noise=n, sigma_data=0.9).detach()
    assert float(exact) < float(untrained)
    assert float(exact) * 0.97 < float(trained) < float(exact) * 1.25, (float(trained), float(exact))


# ---------------------------------------------------------------- sliced score matching

@pytest.mark.parametrize("variance_reduced", [False, True])
def test_ssm_of_a_linear_score_is_exact_with_rademacher_probes(rng, variance_reduced):
    diag = randn(rng, 4)
    x = randn(rng, 6, 4)
    loss = sliced_score_matching_loss(lambda x: x * diag, x, probes=3, variance_reduced=variance_reduced,
                                      generator=torch.Generator().manual_seed(0), reduction="none")
    # v^T A v = tr(A) for diagonal A and v in {-1, 1}^d
    if variance_reduced:
        torch.testing.assert_close(loss, diag.sum() + 0.5 * ((x * diag) ** 2).sum(1))
    else:
        assert torch.all(loss >= diag.sum() - 1e-12)


def test_ssm_gaussian_probes_estimate_the_trace(rng):
    a = randn(rng, 3, 3)
    x = randn(rng, 2, 3)
    loss = sliced_score_matching_loss(lambda x: x @ a.T, x, probes=20000, probe="gaussian", variance_reduced=True,
                                      generator=torch.Generator().manual_seed(0), reduction="none")
    want = torch.trace(a) + 0.5 * ((x @ a.T) ** 2).sum(1)
    torch.testing.assert_close(loss, want, rtol=0, atol=0.1)


def test_ssm_backpropagates_into_the_network(rng):
    net = torch.nn.Linear(3, 3, dtype=torch.float64)
    sliced_score_matching_loss(net, randn(rng, 5, 3)).backward()
    assert net.weight.grad is not None and float(net.weight.grad.abs().sum()) > 0


# ---------------------------------------------------------------- DMD

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (4, 3, 8, 8), (9, 31), (2, 5000)], ids=str)
def test_dmd_gradient_matches_formula(rng, shape, dtype):
    x0, real, fake = (randn(rng, *shape) for _ in range(3))
    got = dmd_gradient(x0.to(dtype), real.to(dtype), fake.to(dtype))
    b = shape[0]
    want = (fake - real) / (x0 - real).abs().reshape(b, -1).mean(1).view(b, *[1] * (len(shape) - 1))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * float(want.abs().max()))


def test_dmd_zero_normaliser_gives_zero(rng):
    x0 = randn(rng, 3, 4)
    real = x0.clone()
    real[1] += 1.0  # only sample 1 has a non-zero normaliser
    got = dmd_gradient(x0, real, randn(rng, 3, 4))
    assert torch.equal(got[0], torch.zeros(4, dtype=torch.float64)) and torch.equal(got[2], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(got).all() and got[1].abs().sum() > 0


def test_dmd_loss_gradient_is_the_dmd_gradient(rng):
    x0, real, fake = (randn(rng, 3, 5) for _ in range(3))
    x = x0.clone().requires_grad_()
    dmd_loss(x, real, fake, reduction="sum").backward()
    torch.testing.assert_close(x.grad, dmd_gradient(x0, real, fake) / 5)


@cuda_only
def test_cuda_dsm_and_dmd(rng):
    raw, x, target = (randn(rng, 16, 3, 8, 8, dtype=torch.float32) for _ in range(3))
    c = [0.1 + torch.rand(16, generator=rng) for _ in range(3)]
    got = dsm_loss(*(t.cuda() for t in (raw, x, target)), *(t.cuda() for t in c), reduction="none")
    torch.testing.assert_close(got.cpu(), dsm_loss(raw, x, target, *c, reduction="none"), rtol=1e-5, atol=1e-6)
    r = raw.cuda().requires_grad_()
    dsm_loss(r, x.cuda(), target.cuda(), *(t.cuda() for t in c)).backward()
    a = raw.clone().requires_grad_()
    dsm_loss(a, x, target, *c).backward()
    torch.testing.assert_close(r.grad.cpu(), a.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dmd_gradient(raw.cuda(), x.cuda(), target.cuda()).cpu(), dmd_gradient(raw, x, target),
                               rtol=1e-5, atol=1e-5)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in contiguous memory that starts 4 bytes past a 16-byte boundary (no float4 loads)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


ROW_LENGTHS = [1, 3, 4096, 4097, 20000, 3 * 2 ** 16]  # one segment of 4096 (fused) and several (partials)


@cuda_only
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_cuda_row_lengths_and_alignment(rng, m, aligned):
    b = 6
    raw, x, target = (randn(rng, b, m, dtype=torch.float32) for _ in range(3))
    c = [0.1 + torch.rand(b, generator=rng) for _ in range(3)]
    real = target.clone()
    real[2] = raw[2]  # a zero DMD normaliser: row 2 is 0
    move = (lambda t: t.cuda()) if aligned else (lambda t: misaligned(t.cuda()))
    got = dsm_loss(*(move(t) for t in (raw, x, target)), *(t.cuda() for t in c), reduction="none")
    want = direct_dsm(*(t.double() for t in (raw, x, target, *c)))
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-7)
    r = move(raw).requires_grad_()
    dsm_loss(r, move(x), move(target), *(t.cuda() for t in c), reduction="sum").backward()
    a = raw.double().requires_grad_()
    direct_dsm(a, *(t.double() for t in (x, target, *c))).sum().backward()
    torch.testing.assert_close(r.grad.cpu().double(), a.grad, rtol=1e-5, atol=1e-9)
    grad = dmd_gradient(move(raw), move(real), move(x))
    want = reference.dmd_gradient(raw.double(), real.double(), x.double())
    torch.testing.assert_close(grad.cpu().double(), want, rtol=1e-5, atol=1e-5)
    assert (grad[2] == 0).all()


@cuda_only
def test_cuda_empty_rows():
    raw = torch.zeros(3, 0, device="cuda")
    c = [torch.rand(3, device="cuda") for _ in range(3)]
    assert torch.equal(dsm_loss(raw, raw, raw, *c, reduction="none").cpu(), torch.zeros(3))
    assert dmd_gradient(raw, raw, raw).shape == (3, 0)


@cuda_only
def test_cuda_runs_on_the_callers_stream(rng):
    # Deterministic kernels (no atomics): the results are bit-identical.
    raw, x, target = (randn(rng, 8, 3 * 64 * 64, dtype=torch.float32).cuda() for _ in range(3))
    c = [(0.1 + torch.rand(8, generator=rng)).cuda() for _ in range(3)]
    def both(r):
        return dsm_loss(r, x, target, *c, reduction="none"), dmd_gradient(r, x, target)
    expected = both(raw)
    got = on_a_busy_side_stream(raw, both)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ---------------------------------------------------------------- the CUDA glue over tests/cuda_fake.py

def test_cuda_glue_of_long_rows_over_the_fake(rng, monkeypatch):
    from gencore import _native, _native_call
    from gencore.score.ops import _losses as ops

    from tests.cuda_fake import SCORE_SEGMENT, FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    b, shape = 3, (3, 2, 41, 50)  # 4100 elements a sample: two segments, so partials in the workspace
    raw, x, target = (randn(rng, *shape, dtype=torch.float32) for _ in range(3))
    c = [0.1 + torch.rand(b, generator=rng) for _ in range(3)]
    g = torch.randn(b, generator=rng)
    loss = ops.DSM_LOSS.implementation("native-cuda")(raw, x, target, *c)
    grad = ops.DSM_LOSS_BACKWARD.implementation("native-cuda")(raw, x, target, *c, g)
    fused_loss, fused_grad = ops.DSM_LOSS_AND_GRAD.implementation("native-cuda")(raw, x, target, *c, 0.75)
    torch.testing.assert_close(fused_loss, loss, rtol=0, atol=0)
    uniform = torch.full((b,), 0.75)
    torch.testing.assert_close(fused_grad.double(),
                               ops._dsm_grads_reference(*(t.double() for t in (raw, x, target, *c, uniform))),
                               rtol=1e-5, atol=1e-8)
    dmd = ops.DMD_GRADIENT.implementation("native-cuda")(raw, x, target)
    assert grad.shape == shape and dmd.shape == shape
    want = direct_dsm(*(t.double() for t in (raw, x, target, *c)))
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), ops._dsm_grads_reference(*(t.double() for t in (raw, x, target, *c, g))),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(dmd.double(), reference.dmd_gradient(raw.double(), x.double(), target.double()),
                               rtol=1e-5, atol=1e-6)
    partials = 8 * b * 2
    assert 4100 > SCORE_SEGMENT and fake.workspaces == [("dsm_loss", partials), ("dsm_loss_and_grad", partials),
                                                        ("dmd_gradient", partials)]
    assert fake.calls["dsm_loss"] == fake.calls["dsm_loss_backward"] == fake.calls["dmd_gradient"] == 1
    assert fake.calls["dsm_loss_and_grad"] == 1


# ---------------------------------------------------------------- native kernel paths

def dsm_ops(raw, x, target, c, grad_loss):
    """(loss [B], grad_raw [B, ...]) through the two ops (native CPU by default); checks on
    the way that the fused forward (DSM_LOSS_AND_GRAD) writes the same bits as both."""
    from gencore.score.ops._losses import DSM_LOSS, DSM_LOSS_AND_GRAD, DSM_LOSS_BACKWARD
    loss, grad = DSM_LOSS(raw, x, target, *c), DSM_LOSS_BACKWARD(raw, x, target, *c, grad_loss)
    fused_loss, fused_grad = DSM_LOSS_AND_GRAD(raw, x, target, *c, 0.75)
    assert torch.equal(fused_loss, loss)
    assert torch.equal(fused_grad, DSM_LOSS_BACKWARD(raw, x, target, *c, torch.full_like(grad_loss, 0.75)))
    return loss, grad


def direct_dsm_grad(raw, x, target, c_skip, c_out, weight, grad_loss):
    b, m = raw.shape[0], raw[0].numel()
    pred = c_skip[:, None] * x.reshape(b, -1) + c_out[:, None] * raw.reshape(b, -1)
    return (2 * grad_loss * weight * c_out / m)[:, None] * (pred - target.reshape(b, -1))


def direct_dmd(x0, real, fake):
    b = x0.shape[0]
    norm = (x0 - real).abs().reshape(b, -1).mean(1)
    out = (fake - real).reshape(b, -1) / norm[:, None]
    return torch.where(norm[:, None] > 0, out, torch.zeros_like(out))


# row lengths around the vector widths (8, 16, 32 per step) and a long row
ROW_LENGTHS = [1, 7, 8, 15, 16, 17, 31, 33, 1000]


@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_native_every_simd_level_and_row_tail(rng, simd_level, m):
    b = 5
    raw, x, target, real, fake = (randn(rng, b, m) for _ in range(5))
    c = [0.1 + torch.rand(b, generator=rng, dtype=torch.float64) for _ in range(3)]
    g = randn(rng, b)
    for dtype in (torch.float32, torch.float64):
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        cast = [t.to(dtype) for t in c]
        loss, grad = dsm_ops(raw.to(dtype), x.to(dtype), target.to(dtype), cast, g.to(dtype))
        torch.testing.assert_close(loss.double(), direct_dsm(raw, x, target, *c), rtol=tol, atol=tol)
        want = direct_dsm_grad(raw, x, target, *c, g)
        torch.testing.assert_close(grad.double(), want, rtol=tol, atol=tol * float(want.abs().max()))
        want = direct_dmd(x, real, fake)
        got = dmd_gradient(x.to(dtype), real.to(dtype), fake.to(dtype))
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("b,m", [(1, 3 * 2 ** 20 + 5), (2, 2 ** 21 + 3), (4000, 3), (300, 3001)], ids=str)
def test_native_row_groups_and_segments_over_threads(rng, num_threads, b, m, threads):
    # tiny rows grouped into items; fewer rows than threads: rows cut into segments
    num_threads(threads)
    raw, x, target = (torch.randn(b, m, generator=rng) for _ in range(3))
    c = [0.1 + torch.rand(b, generator=rng) for _ in range(3)]
    g = torch.randn(b, generator=rng)
    loss, grad = dsm_ops(raw, x, target, c, g)
    c64 = [t.double() for t in c]
    torch.testing.assert_close(loss.double(), direct_dsm(raw.double(), x.double(), target.double(), *c64),
                               rtol=2e-5, atol=0)
    torch.testing.assert_close(grad, direct_dsm_grad(raw, x, target, *c, g), rtol=1e-5, atol=1e-6)
    got = dmd_gradient(raw, x, target)
    torch.testing.assert_close(got.double(), direct_dmd(raw.double(), x.double(), target.double()),
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["raw", "x", "target", "c_skip", "c_out", "weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_native_dsm_refuses_non_finite_naming_the_argument_and_row(rng, num_threads, where, value):
    num_threads(2)
    b, m = 6, 37
    named = {n: randn(rng, b, m) for n in ("raw", "x", "target")}
    named.update({n: 0.1 + torch.rand(b, generator=rng, dtype=torch.float64) for n in ("c_skip", "c_out", "weight")})
    if named[where].dim() == 2:
        named[where][4, 36] = value  # in the row's tail
    else:
        named[where][4] = value
    args = [named[n] for n in ("raw", "x", "target")]
    c = [named[n] for n in ("c_skip", "c_out", "weight")]
    from gencore.score.ops._losses import DSM_LOSS, DSM_LOSS_BACKWARD
    for call in (lambda: DSM_LOSS(*args, *c), lambda: DSM_LOSS_BACKWARD(*args, *c, torch.ones(b, dtype=torch.float64))):
        with pytest.raises(ValueError, match=rf"{where} contains NaN or inf \((row|sample) 4\)"):
            call()


@pytest.mark.parametrize("where", ["x0", "denoised_real", "denoised_fake"])
def test_native_dmd_refuses_non_finite_even_where_the_normaliser_is_zero(rng, where):
    x0, fake = randn(rng, 4, 21), randn(rng, 4, 21)
    real = x0.clone()
    real[1] += 1.0                      # rows 0, 2, 3 have a zero normaliser
    named = {"x0": x0, "denoised_real": real, "denoised_fake": fake}
    named[where][2, 20] = float("nan")
    with pytest.raises(ValueError, match=rf"{where} contains NaN or inf \(row 2\)"):
        dmd_gradient(named["x0"], named["denoised_real"], named["denoised_fake"])


def test_native_dmd_zero_normaliser_is_positive_zero(rng):
    x0 = randn(rng, 3, 40)
    fake = -randn(rng, 3, 40).abs()
    got = dmd_gradient(x0, x0.clone(), fake)
    assert torch.equal(got, torch.zeros_like(got)) and not torch.signbit(got).any()


def test_native_finite_inputs_that_overflow_float32_are_not_refused():
    # c_out raw overflows float32 while every input is finite: the loss is inf
    raw = torch.full((2, 9), 3e38)
    x = torch.zeros(2, 9)
    ones = torch.ones(2)
    loss = dsm_loss(raw, x, x, ones, 10 * ones, ones, reduction="none")
    assert torch.isinf(loss).all()
