"""Time grids for the samplers: decreasing EDM noise levels s_0 > s_1 > ... > s_n,
float64, with the final 0 appended where a grid denoises to the data (as
k-diffusion's get_sigmas_* do), so every solver takes every grid.

The final-step policy, shared by all solvers (gencore.ode.solvers): a step to
s = 0 is a pure denoising step (x_next = D(x, s_i)), never a log(0); steps of
zero length are refused when the grid is checked; multistep solvers drop to a
lower order on the final step.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _checks
from .schedules import Schedule

__all__ = ["karras_sigmas", "loglinear_sigmas", "exponential_sigmas", "logsnr_uniform", "time_uniform",
           "flow_times", "check_sigmas"]


def _append_zero(s: torch.Tensor, final_zero: bool) -> torch.Tensor:
    """k-diffusion's convention: n noise levels and a final 0 (a pure denoising step)."""
    return torch.cat([s, s.new_zeros(1)]) if final_zero else s


def _range(n, sigma_min, sigma_max):
    n = _checks.integer(n, "n", low=1)
    sigma_min = _checks.real(sigma_min, "sigma_min", positive=True)
    sigma_max = _checks.real(sigma_max, "sigma_max", positive=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} and {sigma_max}")
    return n, sigma_min, sigma_max


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *,
                  final_zero: bool = True) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: n noise levels (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, i = 0..n-1, then 0 (as k-diffusion's get_sigmas_karras). [n + 1]."""
    n, sigma_min, sigma_max = _range(n, sigma_min, sigma_max)
    rho = _checks.real(rho, "rho", positive=True)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho, final_zero)


def loglinear_sigmas(n: int, sigma_min: float, sigma_max: float, *, final_zero: bool = True) -> torch.Tensor:
    """n noise levels uniform in log sigma (k-diffusion's get_sigmas_exponential), then 0. [n + 1]."""
    n, sigma_min, sigma_max = _range(n, sigma_min, sigma_max)
    return _append_zero(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n,
                                                 dtype=torch.float64)), final_zero)


exponential_sigmas = loglinear_sigmas


def logsnr_uniform(n: int, schedule: Schedule, t_min: Optional[float] = None, t_max: Optional[float] = None, *,
                   final_zero: bool = True) -> torch.Tensor:
    """n noise levels uniform in lambda = log(alpha / sigma) between the schedule's
    t_max and t_min (DPM-Solver's recommended "logSNR" grid), then 0. [n + 1]."""
    n = _checks.integer(n, "n", low=1)
    t_lo = schedule.t_min + 1e-3 if t_min is None else _checks.real(t_min, "t_min")
    t_hi = schedule.t_max if t_max is None else _checks.real(t_max, "t_max")
    lam = torch.linspace(float(schedule.lambda_(t_hi)), float(schedule.lambda_(t_lo)), n, dtype=torch.float64)
    return _append_zero(torch.exp(-lam), final_zero)


def time_uniform(n: int, schedule: Schedule, t_min: Optional[float] = None, t_max: Optional[float] = None, *,
                 final_zero: bool = True) -> torch.Tensor:
    """n noise levels at times uniform in [t_min, t_max] of the schedule (DDPM / DDIM spacing), then 0."""
    n = _checks.integer(n, "n", low=1)
    t_lo = schedule.t_min + 1e-3 if t_min is None else _checks.real(t_min, "t_min")
    t_hi = schedule.t_max if t_max is None else _checks.real(t_max, "t_max")
    return _append_zero(schedule.edm_sigma(torch.linspace(t_hi, t_lo, n, dtype=torch.float64)), final_zero)


def flow_times(n: int, shift: float = 1.0, t_max: float = 0.999) -> torch.Tensor:
    """EDM noise levels s = t / (1 - t) of a rectified-flow grid: n + 1 times uniform
    from t_max down to 0, shifted as in Stable Diffusion 3 (Esser et al. 2024),
    t' = shift t / (1 + (shift - 1) t). [n + 1], ending in 0.

    t = 1 (pure noise) is s = inf, so the grid starts at t_max < 1 (s = 999 by
    default), where x / alpha is the noise times s up to a 0.1% part of the data,
    as every EDM sampler starts from sigma_max * randn. Euler on this grid is
    exactly Euler on the flow ODE dx/dt = u (the step is invariant under the
    change of variables).
    """
    n = _checks.integer(n, "n", low=1)
    shift = _checks.real(shift, "shift", positive=True)
    t_max = _checks.real(t_max, "t_max", positive=True)
    if t_max >= 1:
        raise ValueError(f"t_max must be below 1 (t = 1 is s = inf), got {t_max}")
    t = torch.linspace(t_max, 0.0, n + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return t / (1 - t)


def check_sigmas(sigmas: torch.Tensor, name: str = "sigmas") -> torch.Tensor:
    """A decreasing grid of noise levels: [n + 1] (shared) or [B, n + 1] (per sample),
    finite, > 0 except a final 0, strictly decreasing (no zero-length steps). As float64."""
    _checks.tensor(sigmas, name)
    if sigmas.dim() not in (1, 2) or sigmas.shape[-1] < 2:
        raise ValueError(f"{name} must be [n + 1] or [B, n + 1] with n >= 1 steps, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to(torch.float64, copy=False)
    if not torch.compiler.is_compiling():
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{name} must be finite")
        body = s[..., :-1]
        if not bool((body > 0).all()) or not bool((s[..., -1] >= 0).all()):
            raise ValueError(f"{name} must be > 0 (only the last may be 0), got a minimum of {float(s.min())}")
        if s.dim() == 2 and bool((s[:, -1] == 0).any()) and not bool((s[:, -1] == 0).all()):
            raise ValueError(f"per-sample {name} must all end in 0 or none of them")
        steps = s[..., 1:] - s[..., :-1]
        if not bool((steps < 0).all()):
            i = int(torch.nonzero(steps.reshape(-1, steps.shape[-1]) >= 0)[0, 1])
            raise ValueError(f"{name} must be strictly decreasing (no zero-length steps); step {i} goes from "
                             f"{float(s.reshape(-1, s.shape[-1])[0, i])} to {float(s.reshape(-1, s.shape[-1])[0, i + 1])}")
    return s
