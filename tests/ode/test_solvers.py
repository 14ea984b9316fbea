"""gencore.ode samplers: agreement with k-diffusion's implementations of the same
algorithms, observed orders of convergence on a Gaussian (closed-form ODE
solution), per-sample grids, guidance and thresholding inside the step, RK45
with per-sample steps, inversion, likelihood, bad input.

The models are the score family's exact denoisers (gencore.score), so every
error measured here is the solver's."""
from __future__ import annotations

import math

import pytest
import torch

import gencore
from gencore import ode
from gencore.ode.accuracy import load_k_diffusion_sampling
from gencore.ode.likelihood import invert, log_likelihood

F64 = torch.float64


def gaussian(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    var = 0.05 + torch.rand(d, generator=g, dtype=F64) * 2
    denoiser = lambda x, s: gencore.score.gmm_denoiser(x, mu[None], torch.ones(1, dtype=F64), var[None], s)  # noqa: E731
    return mu, var, denoiser


def exact_flow(x0, s0, s1, mu, var):
    """The probability-flow ODE of N(mu, diag(var)) from s0 to s1 (per coordinate)."""
    return mu + (x0 - mu) * torch.sqrt((var + s1 ** 2) / (var + s0 ** 2))


def mixture(k=6, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=F64) * 2
    weights = torch.rand(k, generator=g, dtype=F64) + 0.2
    var = torch.full((k,), 0.1, dtype=F64)
    return lambda x, s: gencore.score.gmm_denoiser(x, means, weights, var, s)  # noqa: E731


def k_diffusion_sampling():
    module = load_k_diffusion_sampling()
    if module is None:
        pytest.skip("k-diffusion (pip install --no-deps k-diffusion) and torchsde are not installed")
    return module


# ---------------------------------------------------------------- k-diffusion

@pytest.mark.parametrize("solver,kd_name,kwargs", [
    ("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpmpp_2m", "sample_dpmpp_2m", {}),
    ("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 0.0}),
])
@pytest.mark.parametrize("n", [2, 5, 17])
def test_agrees_with_k_diffusion(solver, kd_name, kwargs, n):
    kd = k_diffusion_sampling()
    denoiser = mixture()
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(n), dtype=F64) * 80
    sigmas = ode.karras_sigmas(n, 0.002, 80.0)
    ours = ode.sample(denoiser, x, sigmas, solver)
    theirs = getattr(kd, kd_name)(denoiser, x, sigmas, disable=True, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"])
def test_one_step_to_zero_is_the_denoiser(solver):
    # (k-diffusion's 3M fails on this grid: its loop reads h before the first assignment)
    denoiser = mixture()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(11), dtype=F64) * 5
    got = ode.sample(denoiser, x, torch.tensor([5.0, 0.0], dtype=F64), solver)
    torch.testing.assert_close(got, denoiser(x, torch.full((4,), 5.0, dtype=F64)), rtol=0, atol=0)


def test_sde_agrees_with_k_diffusion_given_the_same_noise():
    kd = k_diffusion_sampling()
    denoiser = mixture()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 80
    sigmas = ode.karras_sigmas(12, 0.002, 80.0)
    noises = [torch.randn(5, 3, generator=torch.Generator().manual_seed(100 + i), dtype=F64) for i in range(12)]
    calls = iter(noises)
    for solver_type in ("midpoint", "heun"):
        calls = iter(noises)
        theirs = kd.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, eta=0.7, solver_type=solver_type,
                                        noise_sampler=lambda s, s_next: next(calls))
        ours = ode.sample(denoiser, x, sigmas, "dpmpp_2m_sde", eta=0.7, sde_solver=solver_type,
                          noise_sampler=lambda i: noises[i])
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- orders of convergence

# Theory of a multistep method started by lower-order steps: global order min(p, q + 1)
# for starting steps of order q. DPM-Solver++(3M) starts with orders 1 and 2 (as in
# k-diffusion), so it converges at order 2; UniPC-p is order p + 1 with its corrector,
# also through its starting steps (the corrector lifts them), but its usual lower-order
# final steps cap that at 2, so the order test turns them off.
@pytest.mark.parametrize("solver,order,options", [
    ("euler", 1, {}), ("heun", 2, {}), ("dpmpp_2m", 2, {}), ("dpmpp_3m", 2, {}),
    ("unipc", 3, {"order": 2, "lower_order_final": False}), ("unipc", 4, {"order": 3, "lower_order_final": False}),
    ("unipc", 4, {"order": 3, "lower_order_final": False, "unipc_variant": "bh1"}),
])
def test_observed_order_on_a_gaussian(solver, order, options):
    mu, var, denoiser = gaussian()
    x0 = mu + torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 10
    errors = []
    ns = (24, 48, 96)
    for n in ns:
        sigmas = ode.karras_sigmas(n, 0.05, 10.0, final_zero=False)
        got = ode.sample(denoiser, x0, sigmas, solver, **options)
        errors.append(float((got - exact_flow(x0, 10.0, 0.05, mu, var)).abs().max()))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(len(ns) - 1)]
    assert min(slopes) > order - 0.35, (solver, options, errors, slopes)


def test_rk45_meets_its_tolerance_per_sample():
    mu, var, denoiser = gaussian()
    x0 = mu + torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=F64) * 10
    x0[3] *= 50  # one sample far out: it needs other steps, the others do not wait for it
    sigmas = torch.tensor([10.0, 0.05], dtype=F64)
    for tol in (1e-4, 1e-7):
        got, info = ode.sample(denoiser, x0, sigmas, "rk45", rtol=tol, atol=tol, return_info=True)
        want = exact_flow(x0, 10.0, 0.05, mu, var)
        rel = ((got - want).abs() / (want.abs() + 1)).max()
        assert float(rel) < 50 * tol
        assert bool(info.finished.all()) and info.nfe > 0
        assert info.accepted.shape == (16,) and int(info.rejected.sum()) >= 0
    # a cap on the iterations returns the partial result and says so
    got, info = ode.sample(denoiser, x0, sigmas, "rk45", rtol=1e-10, atol=1e-10, max_steps=3, return_info=True)
    assert not bool(info.finished.all()) and torch.isfinite(got).all()


# ---------------------------------------------------------------- grids, per-sample sigmas

def test_karras_matches_k_diffusion():
    kd = k_diffusion_sampling()
    for n in (1, 2, 10, 40):
        # k-diffusion builds its grids in float32
        torch.testing.assert_close(ode.karras_sigmas(n, 0.002, 80.0), kd.get_sigmas_karras(n, 0.002, 80.0).double(),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(ode.loglinear_sigmas(n, 0.002, 80.0), kd.get_sigmas_exponential(n, 0.002, 80.0).double(),
                                   rtol=1e-6, atol=0)


def test_grids_are_decreasing_and_end_in_zero():
    schedule = ode.schedules.VPLinear()
    for grid in (ode.karras_sigmas(7, 0.01, 50.0), ode.loglinear_sigmas(7, 0.01, 50.0),
                 ode.logsnr_uniform(7, schedule), ode.time_uniform(7, schedule), ode.flow_times(7, shift=3.0)):
        assert grid.dtype == F64 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all()) and grid.shape == (8,)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_per_sample_grids_equal_one_call_per_sample(solver):
    denoiser = mixture()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=F64) * 20
    grids = torch.stack([ode.karras_sigmas(9, 0.002 * (i + 1), 20.0 + 5 * i) for i in range(4)])
    batched = ode.sample(denoiser, x, grids, solver)
    for i in range(4):
        one = ode.sample(denoiser, x[i:i + 1], grids[i], solver)
        torch.testing.assert_close(batched[i:i + 1], one, rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------- guidance and thresholding

def test_guidance_is_the_guided_denoiser():
    cond, uncond = mixture(seed=5), mixture(seed=6)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=F64) * 20
    sigmas = ode.karras_sigmas(8, 0.002, 20.0)
    w = 3.0
    guided = lambda x, s: uncond(x, s) + w * (cond(x, s) - uncond(x, s))  # noqa: E731
    want = ode.sample(guided, x, sigmas, "dpmpp_2m")
    got, info = ode.sample(cond, x, sigmas, "dpmpp_2m", guidance=ode.Guidance(uncond, w), return_info=True)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    assert info.nfe == 16
    # an interval: guidance only at sigma in [1, 10]; D_u is not evaluated elsewhere
    lo, hi = 1.0, 10.0
    inside = lambda s: (float(s[0]) >= lo) & (float(s[0]) <= hi)  # noqa: E731
    mixed = lambda x, s: guided(x, s) if inside(s) else cond(x, s)  # noqa: E731
    got, info = ode.sample(cond, x, sigmas, "dpmpp_2m", guidance=ode.Guidance(uncond, w, interval=(lo, hi)),
                           return_info=True)
    torch.testing.assert_close(got, ode.sample(mixed, x, sigmas, "dpmpp_2m"), rtol=1e-11, atol=1e-11)
    assert info.nfe == 8 + int(((sigmas[:-1] >= lo) & (sigmas[:-1] <= hi)).sum())


def test_dynamic_thresholding_bounds_the_denoised():
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(8), dtype=F64) * 10
    big = lambda x, s: 3 * x / (1 + s[:, None])  # noqa: E731 - denoised far outside [-1, 1]
    seen = []
    ode.sample(big, x, ode.karras_sigmas(6, 0.01, 10.0), "dpmpp_2m", dynamic_threshold=0.9,
               callback=lambda info: seen.append(info["denoised"]))
    assert all(float(d.abs().max()) <= 1 + 1e-12 for d in seen)


# ---------------------------------------------------------------- inversion and likelihood

def test_inversion_round_trip():
    _, _, denoiser = gaussian()
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    grid = ode.karras_sigmas(200, 0.01, 20.0, final_zero=False)
    z = invert(denoiser, x0, grid.flip(0), "dpmpp_2m")
    back = ode.sample(denoiser, z, grid, "dpmpp_2m")
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


def test_likelihood_of_a_gaussian():
    mu, var, denoiser = gaussian()
    x = mu + torch.randn(6, 4, generator=torch.Generator().manual_seed(10), dtype=F64) * var.sqrt()
    got = log_likelihood(denoiser, x, 0.002, 1000.0, rtol=1e-8, atol=1e-8)
    want = torch.distributions.Normal(mu, (var + 0.002 ** 2).sqrt()).log_prob(x).sum(1)
    # the prior N(0, 1000^2 I) ignores the data's mean: an O(||mu|| / sigma_max) error
    torch.testing.assert_close(got, want, rtol=0, atol=0.02)
    hutchinson = log_likelihood(denoiser, x, 0.002, 1000.0, exact_trace=False, probes=8, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(hutchinson, want, rtol=0, atol=0.05)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("sigmas,match", [
    (torch.tensor([1.0, 2.0, 0.0], dtype=F64), "decreasing"),
    (torch.tensor([2.0, 2.0, 0.0], dtype=F64), "decreasing"),
    (torch.tensor([2.0, 0.0, 0.0], dtype=F64), "> 0"),
    (torch.tensor([2.0, -1.0], dtype=F64), "> 0"),
    (torch.tensor([float("nan"), 1.0], dtype=F64), "finite"),
    (torch.tensor([1.0], dtype=F64), "n >= 1"),
])
def test_bad_grids_are_refused(sigmas, match):
    with pytest.raises(ValueError, match=match):
        ode.sample(mixture(), torch.zeros(2, 3, dtype=F64), sigmas)


def test_unknown_solver_and_bad_shapes():
    with pytest.raises(ValueError, match="solver"):
        ode.sample(mixture(), torch.zeros(2, 3, dtype=F64), ode.karras_sigmas(3, 0.1, 1.0), "ddpm")
    with pytest.raises(ValueError, match=r"\[B, n \+ 1\]"):
        ode.sample(mixture(), torch.zeros(2, 3, dtype=F64), torch.stack([ode.karras_sigmas(3, 0.1, 1.0)] * 3))
    bad_shape = lambda x, s: x[:, :2]  # noqa: E731
    with pytest.raises(ValueError, match="d_cond"):
        ode.sample(bad_shape, torch.zeros(2, 3, dtype=F64), ode.karras_sigmas(3, 0.1, 1.0))


def test_nan_from_the_model_names_the_step_and_sigma():
    calls = []

    def flaky(x, s):
        calls.append(1)
        out = x * 0.5
        if len(calls) == 3:
            out[0, 1] = float("nan")
        return out
    with pytest.raises(ValueError, match=r"step 2 \(sigma = "):
        ode.sample(flaky, torch.ones(2, 3, dtype=F64), ode.karras_sigmas(5, 0.1, 10.0))


def test_fixed_step_loop_compiles_fullgraph():
    denoiser = lambda x, s: x / (1 + s[:, None] ** 2)  # noqa: E731
    x = torch.randn(3, 5)
    sigmas = ode.karras_sigmas(6, 0.01, 10.0)
    eager = ode.sample(denoiser, x, sigmas, "dpmpp_2m")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ode.sample(denoiser, x, sigmas, "dpmpp_2m"), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager, rtol=1e-6, atol=1e-6)
