"""The learned-coefficient solver: the table plug-in runs exactly the multistep step
it is given, learn_coefficients fits tables that beat the hand-derived solver on
held-out noise, the ridge keeps the fit stable where the model's outputs become
collinear, and bad tables are refused by name."""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore import ode
from gencore.ode import coefficients as coef
from gencore.ode.learned import learn_coefficients

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    var = 0.05 + torch.rand(d, generator=g, dtype=F64) * 2

    def exact(x):  # the probability-flow ODE from SIGMA_MAX to 0, per coordinate
        return mu + (x - mu) * torch.sqrt(var / (var + SIGMA_MAX ** 2))
    return (lambda x, s: gencore.score.gmm_denoiser(x, mu[None], torch.ones(1, dtype=F64), var[None], s)), exact


def noise(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * SIGMA_MAX


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


@pytest.mark.parametrize("solver,table", [("unipc", coef.unipc), ("dpmpp_2m", coef.dpmpp_2m),
                                          ("dpmpp_3m", coef.dpmpp_3m), ("euler", coef.euler)])
@pytest.mark.parametrize("n", [1, 4, 9])
def test_plug_in_runs_the_given_step(solver, table, n):
    """A hand-derived solver's own table through "learned" is that solver."""
    denoiser, _ = gaussian()
    s = ode.karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)
    x = noise(7, 6, seed=n)
    torch.testing.assert_close(ode.sample(denoiser, x, s, "learned", coefficients=table(s)),
                               ode.sample(denoiser, x, s, solver), rtol=1e-12, atol=1e-12)


def test_per_sample_tables():
    """An [n, B, 6] table: each sample takes its own row, as if sampled alone."""
    denoiser, _ = gaussian()
    s = ode.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    x = noise(3, 6, seed=3)
    tables = [coef.euler(s), coef.dpmpp_2m(s), coef.unipc(s)]
    got = ode.sample(denoiser, x, s, "learned", coefficients=torch.stack(tables, 1))
    for b, t in enumerate(tables):
        torch.testing.assert_close(got[b:b + 1], ode.sample(denoiser, x[b:b + 1], s, "learned", coefficients=t),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nfe", [4, 6, 10])
def test_learned_beats_unipc_on_held_out_noise(nfe):
    """Fitted on calibration noise, sampled on other noise: at least 3x below UniPC's
    error against the closed-form solution (the fit has UniPC in its search space)."""
    denoiser, exact = gaussian()
    s = ode.karras_sigmas(nfe, SIGMA_MIN, SIGMA_MAX)
    table = learn_coefficients(denoiser, s, noise(128, 6, seed=99), substeps=32)
    x = noise(256, 6, seed=1)
    learned = rmse(ode.sample(denoiser, x, s, "learned", coefficients=table), exact(x))
    unipc = rmse(ode.sample(denoiser, x, s, "unipc"), exact(x))
    assert learned < unipc / 3, (learned, unipc)


def test_ridge_keeps_collinear_fits_stable():
    """A finite data set's denoiser makes D_i and D_{i-1} nearly equal late in the
    trajectory; the ridge keeps the learned solver near UniPC there, and with
    ridge=0 the table takes large cancelling weights that the ridge avoids."""
    g = torch.Generator().manual_seed(5)
    data = torch.randn(64, 4, generator=g, dtype=F64)

    def denoiser(x, s):
        return gencore.score.dataset_denoiser(x, data, s)
    s = ode.karras_sigmas(20, SIGMA_MIN, SIGMA_MAX)
    calibration = noise(128, 4, seed=99)
    x = noise(256, 4, seed=2)
    reference = ode.sample(denoiser, x, ode.karras_sigmas(512, SIGMA_MIN, SIGMA_MAX), "unipc",
                           lower_order_final=False)
    table = learn_coefficients(denoiser, s, calibration, substeps=16)
    plain = learn_coefficients(denoiser, s, calibration, substeps=16, ridge=0.0)
    unipc = rmse(ode.sample(denoiser, x, s, "unipc"), reference)
    learned = rmse(ode.sample(denoiser, x, s, "learned", coefficients=table), reference)
    assert learned < 1.5 * unipc, (learned, unipc)
    assert table[:, :5].abs().max() < plain[:, :5].abs().max()


def test_history_limits_the_table():
    denoiser, _ = gaussian()
    s = ode.karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)
    table = learn_coefficients(denoiser, s, noise(32, 6, seed=4), history=1, substeps=8)
    assert table.shape == (5, 6) and table.dtype == F64
    assert bool((table[:, coef.H2:] == 0).all())


def test_bad_input():
    denoiser, _ = gaussian()
    s = ode.karras_sigmas(4, SIGMA_MIN, SIGMA_MAX)
    x = noise(2, 6, seed=0)
    with pytest.raises(ValueError, match="coefficients"):
        ode.sample(denoiser, x, s, "learned")
    with pytest.raises(ValueError, match="coefficients"):
        ode.sample(denoiser, x, s, "learned", coefficients=torch.zeros(3, 6, dtype=F64))
    with pytest.raises(ValueError, match="coefficients"):
        ode.sample(denoiser, x, s, "learned", coefficients=torch.full((4, 6), float("nan"), dtype=F64))
    with pytest.raises(TypeError, match="coefficients"):
        ode.sample(denoiser, x, s, "learned", coefficients=torch.zeros(4, 6, dtype=torch.int64))
    calibration = noise(8, 6, seed=1)
    with pytest.raises(ValueError, match="ridge"):
        learn_coefficients(denoiser, s, calibration, ridge=-1.0)
    with pytest.raises(ValueError, match="history"):
        learn_coefficients(denoiser, s, calibration, history=4)
    with pytest.raises(ValueError, match="substeps"):
        learn_coefficients(denoiser, s, calibration, substeps=1)
    with pytest.raises(ValueError, match="sigmas"):
        learn_coefficients(denoiser, torch.tensor([1.0, 2.0, 0.0], dtype=F64), calibration)
