"""Samplers of the probability-flow ODE (and its SDE), k-diffusion's convention:

    x = sample(denoiser, x, sigmas, solver="dpmpp_2m", ...)

``denoiser(x, sigma)`` returns the x0 estimate at noise level sigma ([B]) of
x = y + sigma n (the EDM / VE form; ``gencore.ode.schedules.as_denoiser``
wraps VP, flow and epsilon / v / score models); ``x`` starts as sigmas[0] *
noise; ``sigmas`` is decreasing, shared [n + 1] or per sample [B, n + 1], and
may end in 0 (a final denoising step).

Every linear step is one call of the fused native op gencore::ode_step
(guidance, rescale and thresholding of the denoised folded in), with
coefficients computed once per grid in float64 (gencore.ode.coefficients): the
loop does no coefficient math, and nothing in a step waits for the device, so
a fixed-step loop can be captured in a CUDA graph or compiled.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import _checks
from . import coefficients as coef
from .grids import check_sigmas
from .ops._step import STEP, _positive_or_inf

__all__ = ["SOLVERS", "sample", "Guidance", "SampleInfo"]

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "rk45", "learned")
_MULTISTEP = {"euler", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"}


@dataclass
class Guidance:
    """Classifier-free guidance (Ho & Salimans 2022) inside the step.

    uncond: the unconditional denoiser D_u(x, sigma) (the conditional one is the
        sampler's ``denoiser``); d = D_u + scale (D_c - D_u).
    scale: w (1 = no guidance); a float or a [B] tensor.
    interval: (sigma_lo, sigma_hi): guidance only where sigma_lo <= sigma <= sigma_hi
        (Kynkaanniemi et al. 2024); elsewhere w = 1 and D_u is not evaluated.
    rescale: phi in [0, 1] (Lin et al. 2024): d = phi d std(D_c)/std(d) + (1 - phi) d.
    """

    uncond: Callable
    scale: object = 1.0
    interval: Optional[tuple] = None
    rescale: float = 0.0


@dataclass
class SampleInfo:
    """What a sampling run did: model evaluations (NFE), steps, and for rk45 the
    accepted / rejected steps per sample and whether every sample reached the end."""

    nfe: int = 0
    steps: int = 0
    accepted: Optional[torch.Tensor] = None
    rejected: Optional[torch.Tensor] = None
    finished: Optional[torch.Tensor] = None
    sigmas: Optional[torch.Tensor] = field(default=None, repr=False)


# ---------------------------------------------------------------- the step

class _Stepper:
    """Evaluates the (guided) denoiser and calls the fused step; owns the per-step tables."""

    def __init__(self, denoiser, x, s, guidance: Optional[Guidance], threshold, threshold_max, info,
                 sigma_inputs: Optional[torch.Tensor] = None):
        self.denoiser, self.info = denoiser, info
        self.b = x.shape[0]
        self.device = x.device
        self.threshold = 0.0 if threshold is None else _checks.real(threshold, "dynamic_threshold")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"dynamic_threshold must be a quantile in (0, 1), got {threshold}")
        self.threshold_max = _positive_or_inf(threshold_max, "threshold_max")
        self.s = s                                                # [n + 1] or [B, n + 1], float64, CPU
        # after one checked step, later ones call the op's implementation (see step) when nothing
        # traces the loop and no gradient is being recorded (sample runs under no_grad)
        self._direct = False
        self._layout = None if torch.compiler.is_compiling() or torch.is_grad_enabled() else (
            x.shape, x.dtype, x.device)
        per_sample = s if s.dim() == 2 else s.expand(self.b, -1)
        self.sigma_inputs = _sigma_inputs(s, x) if sigma_inputs is None else sigma_inputs   # [n + 1, B]
        self.guidance = guidance
        self.scales = self.uses_uncond = None
        if guidance is not None:
            scale = torch.as_tensor(guidance.scale, dtype=torch.float64).expand(self.b)
            rescale = _checks.real(guidance.rescale, "rescale")
            self.rescale = rescale
            lo, hi = guidance.interval if guidance.interval is not None else (0.0, math.inf)
            inside = (per_sample >= lo) & (per_sample <= hi)       # [B, n + 1]
            scales = torch.where(inside, scale[:, None], torch.ones_like(per_sample))
            self.uses_uncond = [bool((scales[:, i] != 1).any()) or rescale > 0 and bool(inside[:, i].any())
                                for i in range(per_sample.shape[1])]
            self.scales = scales.T.contiguous().to(x.device)       # [n + 1, B]
        else:
            self.rescale = 0.0

    def _same_layout(self, t) -> bool:
        return type(t) is torch.Tensor and (t.shape, t.dtype, t.device) == self._layout and not t.requires_grad

    def denoise(self, x, i, sigma_row=None):
        """(d_cond, d_uncond or None, guidance [B] or None) at grid point i (or at given sigmas)."""
        sigma = self.sigma_inputs[i] if sigma_row is None else sigma_row
        d_cond = self.denoiser(x, sigma)
        self.info.nfe += 1
        if self.guidance is None or (sigma_row is None and not self.uses_uncond[i]):
            return d_cond, None, None
        d_uncond = self.guidance.uncond(x, sigma)
        self.info.nfe += 1
        return d_cond, d_uncond, self.scales[i]

    def step(self, i, coeffs, x, d, h1=None, h2=None, h3=None, noise=None):
        d_cond, d_uncond, scales = d
        args = (x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, scales, self.rescale if scales is not None else 0.0,
                self.threshold, self.threshold_max)
        try:
            if self._direct and self._same_layout(d_cond) and (d_uncond is None or self._same_layout(d_uncond)):
                # Every argument but the model's outputs is the loop's own, checked by the first
                # call; the outputs match x: the op's implementation directly (its dispatch
                # and checks are what a step of a small model costs most).
                return STEP.run(args)
            out = STEP(*args)
            self._direct = self._layout is not None
            return out
        except ValueError as exc:
            if "d_cond" in str(exc) or "d_uncond" in str(exc):
                sigma = self.s[..., i].reshape(-1)[0].item()
                raise ValueError(f"the denoiser returned NaN or inf at step {i} (sigma = {sigma:.6g}): "
                                 f"{exc}") from None
            raise


def _used_slots(table: torch.Tensor, stochastic: bool) -> list[tuple[bool, ...]]:
    """Per step, which of the 6 coefficient columns are non-zero anywhere (decided on the
    host, once: absent tensors are passed as None and never read). While torch.compile
    traces, values cannot steer Python: every slot whose tensor exists is passed (its
    coefficient is 0 where it is unused), and the noise slot only for a stochastic solver."""
    if torch.compiler.is_compiling():
        return [(True,) * coef.Z + (stochastic,)] * table.shape[0]
    flat = table.reshape(table.shape[0], -1, coef.N_COEFFS)
    return [tuple(bool(v) for v in (flat[i] != 0).any(0)) for i in range(table.shape[0])]


def _as_rows(table: torch.Tensor, b: int, device) -> torch.Tensor:
    """[n, 6] or [n, B, 6] -> [n, B, 6] contiguous float64 on the device (one copy per run)."""
    if table.dim() == 2:
        table = table[:, None, :].expand(-1, b, -1)
    return table.contiguous().to(device)


_PLAN_CACHE_SIZE = 64
_plans: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()


def _cached(key: Optional[tuple], build: Callable):
    """build(), remembered under key (None: not cached). A sampling loop with the same grid,
    batch size, device and options reuses its coefficient tables and slot plans: what is
    left per call is the steps themselves."""
    if key is None:
        return build()
    if key in _plans:
        _plans.move_to_end(key)
        return _plans[key]
    value = build()
    _plans[key] = value
    if len(_plans) > _PLAN_CACHE_SIZE:
        _plans.popitem(last=False)
    return value


def _plan_key(name: str, s: torch.Tensor, x: torch.Tensor, *options) -> Optional[tuple]:
    """The cache key of a plan for grid s and x's batch, device and dtype (None while tracing)."""
    if torch.compiler.is_compiling():
        return None
    return (name, tuple(s.shape), s.numpy().tobytes(), x.shape[0], str(x.device), x.dtype, options)


def _sigma_inputs(s: torch.Tensor, x: torch.Tensor) -> tuple:
    """n + 1 tensors [B]: the sigma each model call gets, on x's device and in its dtype."""
    per_sample = s if s.dim() == 2 else s.expand(x.shape[0], -1)
    return per_sample.T.to(device=x.device, dtype=x.dtype).contiguous().unbind(0)


# ---------------------------------------------------------------- the solvers

def _multistep(stepper: _Stepper, x, table: Callable, noise_fn, callback, key=None):
    """The multistep loop; table() builds the [n, (B,) 6] coefficients (once per key)."""
    def build():
        t = table()
        return _as_rows(t, stepper.b, stepper.device).unbind(0), _used_slots(t, noise_fn is not None)
    rows, used = _cached(key, build)
    history = [None, None, None]
    for i in range(len(rows)):
        d = stepper.denoise(x, i)
        u = used[i]
        hist = [h if u[coef.H1 + j] else None for j, h in enumerate(history)]
        noise = noise_fn(i) if u[coef.Z] else None
        x, denoised = stepper.step(i, rows[i], x, d, hist[0], hist[1], hist[2], noise)
        history = [denoised, history[0], history[1]]
        stepper.info.steps += 1
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": stepper.sigma_inputs[i]})
    return x


def _heun(stepper: _Stepper, x, s, callback, key=None):
    def build():
        predictor, corrector = coef.heun(s)
        final = (s[..., 1:] == 0).reshape(-1, s.shape[-1] - 1).all(0).tolist()
        return (_as_rows(predictor, stepper.b, stepper.device).unbind(0),
                _as_rows(corrector, stepper.b, stepper.device).unbind(0), final)
    pred_rows, corr_rows, final = _cached(key, build)
    for i in range(len(pred_rows)):
        d1 = stepper.denoise(x, i)
        x2, denoised = stepper.step(i, pred_rows[i], x, d1)
        if final[i]:
            x = x2
        else:
            d2 = stepper.denoise(x2, i + 1)
            x, _ = stepper.step(i + 1, corr_rows[i], x, d2, denoised, x2)
        stepper.info.steps += 1
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": stepper.sigma_inputs[i]})
    return x


def sample(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, solver: str = "dpmpp_2m", *,
           guidance: Optional[Guidance] = None, dynamic_threshold: Optional[float] = None,
           threshold_max: float = math.inf, eta: float = 1.0, s_noise: float = 1.0,
           sde_solver: str = "midpoint", order: int = 3, unipc_variant: str = "bh2", corrector: bool = True,
           lower_order_final: bool = True, coefficients: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None,
           noise_sampler: Optional[Callable] = None, callback: Optional[Callable] = None,
           return_info: bool = False, **rk45_options):
    """Integrates from sigmas[0] to sigmas[-1]: the sample (or its partial result).

    Args:
        denoiser: D(x [B, ...], sigma [B]) -> x0 estimate [B, ...].
        x: [B, ...] the starting point, sigmas[0] * standard noise (float32 fast
            path; float64 natively on the CPU; fp16/bf16 computed in float32).
        sigmas: decreasing noise levels, [n + 1] shared or [B, n + 1] per sample,
            > 0 except a final 0 (``karras_sigmas`` and friends).
        solver: "euler" (= DDIM), "heun" (EDM's 2nd order, 2 NFE a step),
            "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde" (stochastic), "unipc"
            (predictor-corrector, ``order`` <= 3, ``unipc_variant`` bh1/bh2), "rk45"
            (adaptive Dormand-Prince, per-sample steps; see ``rk45``), "learned"
            (the multistep step with the ``coefficients`` table; see ``learn_coefficients``).
        guidance: classifier-free guidance inside the step (``Guidance``).
        dynamic_threshold: quantile q of |x0| per sample (Imagen, e.g. 0.995):
            x0 is clamped to [-t, t] and divided by t, t = max(1, quantile) (at
            most ``threshold_max``). None: off.
        eta, s_noise, sde_solver: noise amount, its scale, and "midpoint" / "heun" for dpmpp_2m_sde.
        coefficients: "learned": [n, 6] (or [n, B, 6]) step coefficients
            (c_x, c_d, c_1, c_2, c_3, c_z) over (x, D_i, D_{i-1}, D_{i-2}, D_{i-3}, 0).
        generator / noise_sampler: the SDE's noise (noise_sampler(i) -> [B, ...] standard normal).
        callback: called after each step with {"i", "x", "denoised", "sigma"}.
        return_info: also return a ``SampleInfo`` (NFE, steps, rk45 counts).

    Returns:
        x [B, ...] in x's dtype (and the SampleInfo when asked).

    NaN/inf from the denoiser raise ValueError naming the step and sigma (on the
    CPU; on CUDA steps are not checked unless gencore.set_check_finite("always")).
    """
    with torch.no_grad():  # sampling records no graph (as k-diffusion's samplers)
        return _sample(denoiser, x, sigmas, solver, guidance, dynamic_threshold, threshold_max, eta, s_noise,
                       sde_solver, order, unipc_variant, corrector, lower_order_final, coefficients, generator,
                       noise_sampler, callback, return_info, rk45_options)


def _sample(denoiser, x, sigmas, solver, guidance, dynamic_threshold, threshold_max, eta, s_noise, sde_solver, order,
            unipc_variant, corrector, lower_order_final, coefficients, generator, noise_sampler, callback,
            return_info, rk45_options):
    _checks.tensor(x, "x")
    _checks.choice(solver, "solver", SOLVERS)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be [B, ...] with B >= 1, got shape {tuple(x.shape)}")
    s = check_sigmas(sigmas)
    if s.dim() == 2 and s.shape[0] != x.shape[0]:
        raise ValueError(f"per-sample sigmas must be [B, n + 1] with B = {x.shape[0]}, got {tuple(s.shape)}")
    s = s.cpu()
    info = SampleInfo(sigmas=s)
    if solver == "rk45":
        from .rk45 import sample_rk45
        out, info = sample_rk45(denoiser, x, s, info=info, generator=generator, callback=callback, **rk45_options)
        return (out, info) if return_info else out
    if rk45_options:
        raise TypeError(f"unexpected options for solver {solver!r}: {sorted(rk45_options)}")
    sigma_inputs = _cached(_plan_key("sigmas", s, x), lambda: _sigma_inputs(s, x))
    stepper = _Stepper(denoiser, x, s, guidance, dynamic_threshold, threshold_max, info, sigma_inputs)
    if solver == "heun":
        out = _heun(stepper, x, s, callback, _plan_key("heun", s, x))
    else:
        if solver == "learned":
            if coefficients is None:
                raise ValueError('solver "learned" needs coefficients= (a table from learn_coefficients)')
            from .learned import check_table
            learned = check_table(coefficients, s, x.shape[0])
            table, key = (lambda: learned), None
        else:
            options = {"dpmpp_2m_sde": (_checks.real(eta, "eta"), _checks.real(s_noise, "s_noise"), sde_solver),
                       "unipc": (_checks.integer(order, "order", low=1, high=3), unipc_variant, bool(corrector),
                                 bool(lower_order_final))}.get(solver, ())
            builder = {"euler": coef.euler, "dpmpp_2m": coef.dpmpp_2m, "dpmpp_3m": coef.dpmpp_3m,
                       "dpmpp_2m_sde": coef.dpmpp_2m_sde, "unipc": coef.unipc}[solver]
            table, key = (lambda: builder(s, *options)), _plan_key(solver, s, x, *options)
        if solver != "dpmpp_2m_sde":
            noise_sampler = None
        elif noise_sampler is None:
            def noise_sampler(i):
                return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        out = _multistep(stepper, x, table, noise_sampler, callback, key)
    out = out.to(x.dtype)
    return (out, info) if return_info else out
