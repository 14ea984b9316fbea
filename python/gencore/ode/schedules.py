"""Noise schedules in (alpha_t, sigma_t), model parameterisations, and the PFGM++ prior.

A schedule maps time t to the signal and noise scales of x_t = alpha_t y + sigma_t n.
Every solver of gencore.ode works on the EDM / VE form of the same process,
x / alpha with noise level s = sigma / alpha (Karras et al. 2022, section 3:
every such schedule is the VE process in disguise), so a schedule is what
turns a model trained on any of them into the denoiser D(x, s) the solvers
call (``as_denoiser``), and what turns a time grid into a sigma grid.
All coefficient math is float64; differences of exponentials use expm1/log1p.

Schedules (t in [0, 1] unless stated):

    VPLinear(beta_min, beta_max)  alpha = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2) / 2),
                                  sigma = sqrt(1 - alpha^2)               (DDPM / score SDE)
    VPCosine(s)                   alpha = cos((t + s) / (1 + s) pi / 2) / cos(s / (1 + s) pi / 2)
                                  (Nichol & Dhariwal 2021), sigma = sqrt(1 - alpha^2)
    VE(sigma_min, sigma_max)      alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t
    EDM()                         alpha = 1, sigma = t (t is the noise level itself, t in (0, inf))
    RectifiedFlow()               alpha = 1 - t, sigma = t   (flow matching / rectified flow)
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _checks

__all__ = ["Schedule", "VPLinear", "VPCosine", "VE", "EDM", "RectifiedFlow", "PARAMETERIZATIONS",
           "to_denoised", "as_denoiser", "pfgmpp_prior"]

PARAMETERIZATIONS = ("x0", "epsilon", "v", "score", "flow")


def _t(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule:
    """alpha(t), sigma(t), the EDM noise level s(t) = sigma / alpha, lambda(t) =
    log(alpha / sigma) (half the log-SNR) and their inverses; float64 tensors in and out."""

    t_min: float = 0.0
    t_max: float = 1.0

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def edm_sigma(self, t) -> torch.Tensor:
        """s(t) = sigma_t / alpha_t: the noise level of x_t / alpha_t."""
        t = _t(t)
        return self.sigma(t) / self.alpha(t)

    def lambda_(self, t) -> torch.Tensor:
        """log(alpha_t / sigma_t) = -log s(t)."""
        return -torch.log(self.edm_sigma(t))

    def t_of_edm_sigma(self, s) -> torch.Tensor:
        """The time whose EDM noise level is s (bisection on the monotone s(t); subclasses
        with a closed form override it)."""
        s = _t(s)
        lo = torch.full_like(s, self.t_min + 1e-12)
        hi = torch.full_like(s, self.t_max)
        for _ in range(200):  # float64: 200 halvings exhaust the interval
            mid = 0.5 * (lo + hi)
            below = self.edm_sigma(mid) < s
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def t_of_lambda(self, lam) -> torch.Tensor:
        return self.t_of_edm_sigma(torch.exp(-_t(lam)))


def _vp_sigma(alpha: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(-torch.expm1(2 * torch.log(alpha)))  # sqrt(1 - alpha^2) without cancellation


class VPLinear(Schedule):
    """Variance preserving, linear beta (Ho et al. 2020; Song et al. 2021): beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _checks.real(beta_min, "beta_min", positive=True)
        self.beta_max = _checks.real(beta_max, "beta_max", positive=True)

    def _log_alpha(self, t):
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def alpha(self, t):
        return torch.exp(self._log_alpha(_t(t)))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(_t(t))))

    def edm_sigma(self, t):
        # s^2 = 1 / alpha^2 - 1 = expm1(-2 log alpha)
        return torch.sqrt(torch.expm1(-2 * self._log_alpha(_t(t))))

    def t_of_edm_sigma(self, s):
        # -2 log alpha = log(1 + s^2) = beta_min t + (beta_max - beta_min) t^2 / 2: a quadratic in t
        c = torch.log1p(_t(s) ** 2)
        d = self.beta_max - self.beta_min
        if d == 0:
            return c / self.beta_min
        return (torch.sqrt(self.beta_min ** 2 + 2 * d * c) - self.beta_min) / d


class VPCosine(Schedule):
    """Variance preserving, cosine (Nichol & Dhariwal 2021)."""

    t_max = 0.9999  # alpha(1) = 0

    def __init__(self, s: float = 0.008):
        self.s = _checks.real(s, "s", positive=True)

    def _angle(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def alpha(self, t):
        return torch.cos(self._angle(_t(t))) / math.cos(self.s / (1 + self.s) * math.pi / 2)

    def sigma(self, t):
        return _vp_sigma(self.alpha(t))


class VE(Schedule):
    """Variance exploding (Song et al. 2021): sigma = sigma_min (sigma_max / sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = _checks.real(sigma_min, "sigma_min", positive=True)
        self.sigma_max = _checks.real(sigma_max, "sigma_max", positive=True)

    def alpha(self, t):
        return torch.ones_like(_t(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _t(t)

    def t_of_edm_sigma(self, s):
        return torch.log(_t(s) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class EDM(Schedule):
    """Karras et al. 2022: alpha = 1, sigma = t (time is the noise level)."""

    t_min, t_max = 0.0, math.inf

    def alpha(self, t):
        return torch.ones_like(_t(t))

    def sigma(self, t):
        return _t(t)

    def t_of_edm_sigma(self, s):
        return _t(s)


class RectifiedFlow(Schedule):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): alpha = 1 - t, sigma = t."""

    def alpha(self, t):
        return 1 - _t(t)

    def sigma(self, t):
        return _t(t)

    def t_of_edm_sigma(self, s):
        s = _t(s)
        return s / (1 + s)  # s = t / (1 - t)


# ---------------------------------------------------------------- parameterisations

def to_denoised(parameterization: str, output: torch.Tensor, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The x0 (data) prediction from a model's output at x = alpha y + sigma n:

        "x0": output;  "epsilon": (x - sigma eps) / alpha;  "v": alpha x - sigma v
        (v = alpha eps - sigma y, alpha^2 + sigma^2 = 1);  "score": (x + sigma^2 s) / alpha;
        "flow": x - sigma u with u = eps - y the velocity of x = (1 - t) y + t eps (alpha = 1 - sigma).

    alpha, sigma: floats or [B] tensors (broadcast over each sample).
    """
    _checks.choice(parameterization, "parameterization", PARAMETERIZATIONS)
    if parameterization == "x0":
        return output
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    a, s = (v.reshape(shape) if v.dim() else v for v in (a, s))
    if parameterization == "epsilon":
        return (x - s * output) / a
    if parameterization == "v":
        return a * x - s * output
    if parameterization == "score":
        return (x + s * s * output) / a
    return x - s * output


def as_denoiser(model: Callable, schedule: Schedule, parameterization: str = "epsilon",
                time_input: str = "t") -> Callable:
    """D(x_edm, s): the denoiser the solvers call, around a model trained on ``schedule``.

    The solvers integrate x_edm = x_t / alpha_t at EDM noise level s = sigma_t / alpha_t;
    the wrapper finds t(s), scales x_t = alpha_t x_edm, calls model(x_t, t) (or
    model(x_t, sigma_t) with time_input="sigma"), and converts its output with
    ``to_denoised``.
    """
    _checks.choice(parameterization, "parameterization", PARAMETERIZATIONS)
    _checks.choice(time_input, "time_input", ("t", "sigma"))

    def denoiser(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s64 = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
        t = schedule.t_of_edm_sigma(s64)
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        a = alpha.to(x.dtype).to(x.device).expand(x.shape[0]).reshape(shape)
        x_t = a * x
        out = model(x_t, (t if time_input == "t" else sigma).to(x.dtype).to(x.device).expand(x.shape[0]))
        return to_denoised(parameterization, out, x_t, alpha.to(x.device).expand(x.shape[0]),
                           sigma.to(x.device).expand(x.shape[0]))
    return denoiser


# ---------------------------------------------------------------- PFGM++ prior

def pfgmpp_prior(shape, sigma_max: float, augmented_dim: int, *, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Samples of the PFGM++ prior (Xu et al. 2023) at the largest noise level.

    For data of N = prod(shape[1:]) dimensions and D augmented dimensions, with
    r_max = sigma_max sqrt(D) (the alignment r = sigma sqrt(D) of PFGM++ with
    diffusion), the prior's radius is R = r_max sqrt(B / (1 - B)), B ~ Beta(N/2, D/2),
    and the direction is uniform on the sphere. D -> inf recovers the Gaussian
    N(0, sigma_max^2 I) of diffusion models.

    Returns [B, ...] of ``shape``, to start any EDM-space solver at sigma_max.
    """
    augmented_dim = _checks.integer(augmented_dim, "augmented_dim", low=1)
    sigma_max = _checks.real(sigma_max, "sigma_max", positive=True)
    b, n = shape[0], math.prod(shape[1:])
    beta = torch.distributions.Beta(torch.tensor(n / 2, dtype=torch.float64),
                                    torch.tensor(augmented_dim / 2, dtype=torch.float64))
    # torch's Beta sampler takes no generator: it runs on the global RNG, seeded from
    # the generator inside fork_rng, so the caller's global RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        u = beta.sample((b,))
    radius = sigma_max * math.sqrt(augmented_dim) * torch.sqrt(u / (1 - u))
    direction = torch.randn((b, n), generator=generator, dtype=torch.float64)
    direction = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True)
    return (direction * radius[:, None]).reshape(shape).to(dtype=dtype, device=device)
