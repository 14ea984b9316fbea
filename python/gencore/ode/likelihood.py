"""Inversion (data -> noise with the same solvers) and exact log-likelihood through
the probability-flow ODE.

Both run the ODE dx/ds = (x - D(x, s)) / s upward, from a small noise level to a
large one. Inversion uses the samplers' own coefficients on an increasing grid
(the same exponential integrators, with negative steps in lambda = -log s),
so ``sample`` and ``invert`` on the same reversed grid are inverse maps up to
the solver's error.

Log-likelihood (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", appendix D.2; Chen et al. 2018): along the ODE, d log p / du = -div f
with u = log s and f = dx/du = x - D(x, e^u), div f = d - tr(dD/dx). So

    log p_{s_min}(x) = log N(x(s_max); 0, s_max^2 I) + integral_{u_min}^{u_max} (d - tr dD/dx) du

integrated with the per-sample adaptive RK45 on the augmented state (x, the
integral); the trace is exact (d vector-Jacobian products, for small d) or the
Hutchinson estimate v^T (dD/dx) v with fixed Rademacher probes.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _checks
from . import coefficients as coef
from .rk45 import dormand_prince
from .solvers import SampleInfo, _multistep, _heun, _Stepper

__all__ = ["invert", "log_likelihood"]


def _check_increasing(sigmas: torch.Tensor) -> torch.Tensor:
    _checks.tensor(sigmas, "sigmas")
    s = sigmas.detach().to(torch.float64).cpu()
    if s.dim() not in (1, 2) or s.shape[-1] < 2:
        raise ValueError(f"sigmas must be [n + 1] or [B, n + 1], got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("sigmas of an inversion must be finite and > 0 (start at a small noise level, not 0)")
    if not bool((s[..., 1:] > s[..., :-1]).all()):
        raise ValueError("sigmas of an inversion must be strictly increasing")
    return s


def invert(denoiser: Callable, x0: torch.Tensor, sigmas: torch.Tensor, solver: str = "dpmpp_2m", *,
           return_info: bool = False):
    """Maps data x0 (at noise level sigmas[0] > 0) up to sigmas[-1] along the probability-flow
    ODE with an ODE solver: "euler" (DDIM inversion), "heun", "dpmpp_2m", "dpmpp_3m" or "unipc".

    sigmas: increasing, > 0, [n + 1] or [B, n + 1] (e.g. ``karras_sigmas(...)[:-1].flip(0)``).
    Returns x at sigmas[-1] (and a SampleInfo when asked).
    """
    _checks.tensor(x0, "x0")
    _checks.choice(solver, "solver", ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"))
    s = _check_increasing(sigmas)
    info = SampleInfo(sigmas=s)
    stepper = _Stepper(denoiser, x0, s, None, None, math.inf, info)
    if solver == "heun":
        out = _heun(stepper, x0, s, None)
    else:
        builder = {"euler": coef.euler, "dpmpp_2m": coef.dpmpp_2m, "dpmpp_3m": coef.dpmpp_3m,
                   "unipc": lambda g: coef.unipc(g, corrector=False)}[solver]
        out = _multistep(stepper, x0, lambda: builder(s), None, None)
    out = out.to(x0.dtype)
    return (out, info) if return_info else out


def log_likelihood(denoiser: Callable, x: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, *,
                   exact_trace: Optional[bool] = None, probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   generator: Optional[torch.Generator] = None, max_steps: int = 10000, return_info: bool = False):
    """log p_{sigma_min}(x) [B] in nats, through the probability-flow ODE (module docstring).

    Args:
        denoiser: D(x, sigma [B]), differentiable with respect to x.
        x: [B, ...] data (at noise level sigma_min).
        sigma_min, sigma_max: the integration range; the prior at sigma_max is N(0, sigma_max^2 I).
        exact_trace: exact tr(dD/dx) with d vector-Jacobian products (default when d <= 64),
            else Hutchinson with ``probes`` fixed Rademacher vectors (unbiased).
        rtol, atol, max_steps: of the adaptive RK45 (per sample).
        return_info: also return {"nfe", "latent": x at sigma_max, "finished"}.

    Bits per dimension: -log_likelihood / (d log 2) (plus the dequantisation terms of the data).
    """
    _checks.tensor(x, "x")
    sigma_min = _checks.real(sigma_min, "sigma_min", positive=True)
    sigma_max = _checks.real(sigma_max, "sigma_max", positive=True)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min} and {sigma_max}")
    b = x.shape[0]
    shape = x.shape
    d = math.prod(shape[1:])
    exact = d <= 64 if exact_trace is None else bool(exact_trace)
    probes = _checks.integer(probes, "probes", low=1)
    vs = None
    if not exact:
        vs = [(torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1).to(x.device)
              for _ in range(probes)]

    def f(u, state):
        y = state[:, :d].reshape(shape).detach()
        sigma = torch.exp(u).to(x.dtype)
        with torch.enable_grad():
            y.requires_grad_(True)
            den = denoiser(y, sigma)
            if exact:
                trace = torch.zeros(b, dtype=den.dtype, device=den.device)
                flat = den.reshape(b, d)
                for j in range(d):
                    (g,) = torch.autograd.grad(flat[:, j].sum(), y, retain_graph=j < d - 1)
                    trace = trace + g.reshape(b, d)[:, j]
            else:
                trace = 0
                for k, v in enumerate(vs):
                    (g,) = torch.autograd.grad((den * v).sum(), y, retain_graph=k < len(vs) - 1)
                    trace = trace + (g * v).reshape(b, d).sum(1)
                trace = trace / len(vs)
        dx = (y - den).detach().reshape(b, d)
        return torch.cat([dx, (d - trace.detach()).reshape(b, 1).to(dx.dtype)], 1)

    state = torch.cat([x.reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], 1)
    u0 = torch.full((b,), math.log(sigma_min), dtype=torch.float64)
    u1 = torch.full((b,), math.log(sigma_max), dtype=torch.float64)
    end, counts = dormand_prince(f, state, u0, u1, rtol=rtol, atol=atol, max_steps=max_steps)
    latent, integral = end[:, :d], end[:, d]
    prior = -0.5 * (latent.double() ** 2).sum(1) / sigma_max ** 2 - d * (math.log(sigma_max) + 0.5 * math.log(2 * math.pi))
    log_p = (prior + integral.double()).to(x.dtype if x.dtype == torch.float64 else torch.float32)
    if return_info:
        return log_p, {"nfe": counts["nfe"], "latent": latent.reshape(shape), "finished": counts["finished"]}
    return log_p
