"""Adaptive Dormand-Prince RK5(4) with a step size per sample.

Two users share this integrator: ``sample(..., solver="rk45")`` integrates the
probability-flow ODE in u = log sigma, dx/du = x - D(x, e^u) (smooth across the
whole range of noise levels), and ``odeint`` integrates any dy/dt = f(t, y).
Each sample keeps its own time, step size and error history: a sample that
needs small steps does not slow the others' accepted steps (torchdiffeq shares
one step size across the batch, so the worst sample sets it for all).

Per iteration every unfinished sample tries one step h_b: six new stages (the
seventh is the first of the next step, FSAL), a 5th-order solution and the
embedded 4th-order error, its mixed RMS norm per sample (gencore::ode_error_norm),
acceptance where the norm is <= 1, and a PI step-size controller
(Gustafsson; Hairer & Wanner, section IV.2):

    h_new = h * clamp(safety * norm^(-alpha) * prev_norm^beta, 0.2, 10),
    alpha = 0.7 / 5, beta = 0.4 / 5.

Every linear combination is one gencore::ode_step call with per-sample
coefficients. The loop ends when every sample reached its end time or at
max_steps iterations (partial results, with ``finished`` saying which).
Deciding to continue reads one boolean from the device per iteration: the
only host synchronisation, as in any adaptive solver.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _checks
from .ops._error_norm import ERROR_NORM
from .ops._step import N_COEFFS, STEP

__all__ = ["dormand_prince", "sample_rk45"]

# Butcher tableau of Dormand & Prince (1980), RK5(4)7FM.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B_ERR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)  # b5 - b4
_SAFETY, _ALPHA, _BETA = 0.9, 0.7 / 5, 0.4 / 5
_MIN_FACTOR, _MAX_FACTOR = 0.2, 10.0


def linear(terms: list) -> torch.Tensor:
    """sum_j c_j T_j over at most six (tensor, coefficient) pairs, coefficients floats or [B]
    tensors, in one fused gencore::ode_step call (its six slots X, D, H1, H2, H3, Z)."""
    if not 1 <= len(terms) <= N_COEFFS:
        raise AssertionError(f"a fused combination takes 1 to {N_COEFFS} terms, got {len(terms)}")
    first = terms[0][0]
    coeffs = torch.zeros(first.shape[0], N_COEFFS, dtype=torch.float64, device=first.device)
    slots = [None] * N_COEFFS
    for slot, (tensor, c) in enumerate(terms):
        coeffs[:, slot] = c
        slots[slot] = tensor
    d = slots[1] if slots[1] is not None else first     # d_cond is required: a zero-weight copy of x
    return STEP(slots[0], d, None, slots[2], slots[3], slots[4], slots[5], coeffs, None, 0.0, 0.0, 1.0)[0]


def _stage(y, stages, h, weights):
    """y + h sum_j w_j k_j (zero weights left out)."""
    return linear([(y, 1.0)] + [(k, h * w) for w, k in zip(weights, stages) if w != 0])


def dormand_prince(f: Callable, y0: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, *, rtol: float, atol: float,
                   h0: Optional[torch.Tensor] = None, max_steps: int = 10000, on_accept: Optional[Callable] = None):
    """Integrates dy/dt = f(t [B], y [B, ...]) from t0 [B] to t1 [B] (either direction) per sample.

    Returns (y [B, ...], info dict: nfe, steps, accepted [B], rejected [B], finished [B], t [B]).
    on_accept(t_old, t_new, y_old, y_new, k1, k7, accepted_mask) is called after each iteration
    (odeint uses it to interpolate its output times).
    """
    rtol, atol = _checks.real(rtol, "rtol"), _checks.real(atol, "atol")
    max_steps = _checks.integer(max_steps, "max_steps", low=1)
    b = y0.shape[0]
    dev = y0.device
    t = t0.to(torch.float64).to(dev).clone()
    t1 = t1.to(torch.float64).to(dev)
    direction = torch.sign(t1 - t)
    span = (t1 - t).abs()
    y = y0
    k1 = f(t, y)
    nfe = 1
    if h0 is None:  # a cautious start: a hundredth of the span, grown by the controller
        h = direction * span * 0.01
    else:
        h = direction * h0.to(torch.float64).to(dev).abs()
    prev_norm = torch.ones(b, dtype=torch.float64, device=dev)
    accepted = torch.zeros(b, dtype=torch.int64, device=dev)
    rejected = torch.zeros(b, dtype=torch.int64, device=dev)
    finished = span == 0
    steps = 0
    while steps < max_steps and not bool(finished.all()):
        steps += 1
        remaining = t1 - t
        h = torch.where(finished, torch.zeros_like(h), torch.where(h.abs() > remaining.abs(), remaining, h))
        stages = [k1]
        for j in range(1, 7):
            y_j = _stage(y, stages, h, _A[j])
            k_j = f(t + _C[j] * h, y_j)
            nfe += 1
            stages.append(k_j)
            if j == 6:
                y_new = y_j                       # row 7 of the tableau is the 5th-order solution (FSAL)
        err = linear([(k, h * w) for w, k in zip(_B_ERR, stages) if w != 0])
        norm = ERROR_NORM(err, y, y_new, atol, rtol).to(torch.float64)
        ok = (norm <= 1) & ~finished
        factor = _SAFETY * norm.clamp_min(1e-10) ** -_ALPHA * prev_norm.clamp_min(1e-10) ** _BETA
        factor = factor.clamp(_MIN_FACTOR, _MAX_FACTOR)
        factor = torch.where(ok, factor, torch.minimum(factor, torch.ones_like(factor)))
        mask = ok.reshape((b,) + (1,) * (y.dim() - 1))
        t_new = torch.where(ok, t + h, t)
        if on_accept is not None:
            on_accept(t, t_new, y, y_new, stages[0], stages[6], ok)
        y = torch.where(mask, y_new, y)
        k1 = torch.where(mask, stages[6], k1)
        prev_norm = torch.where(ok, norm, prev_norm)
        accepted += ok.to(torch.int64)
        rejected += (~ok & ~finished).to(torch.int64)
        t = t_new
        finished = finished | ((t1 - t).abs() <= 1e-12 * span.clamp_min(1.0))
        h = h * factor
    return y, {"nfe": nfe, "steps": steps, "accepted": accepted, "rejected": rejected, "finished": finished, "t": t}


def sample_rk45(denoiser: Callable, x: torch.Tensor, s: torch.Tensor, *, info, rtol: float = 1e-4,
                atol: float = 1e-4, max_steps: int = 1000, generator=None, callback=None):
    """The probability-flow ODE from s[..., 0] to the last positive noise level in
    u = log sigma (per sample), then a final denoising step when the grid ends in 0.
    Only the grid's first and last levels matter: the steps are adaptive."""
    b = x.shape[0]
    per_sample = s if s.dim() == 2 else s.expand(b, -1)
    final_zero = bool((per_sample[:, -1] == 0).all())
    end = per_sample[:, -2] if final_zero else per_sample[:, -1]
    u0, u1 = torch.log(per_sample[:, 0]), torch.log(end)

    def f(u, y):
        sigma = torch.exp(u).to(y.dtype)
        return linear([(y, 1.0), (denoiser(y, sigma), -1.0)])     # dx/du = x - D(x, e^u)

    y, counts = dormand_prince(f, x, u0, u1, rtol=rtol, atol=atol, max_steps=max_steps)
    info.nfe = counts["nfe"]
    info.steps = counts["steps"]
    info.accepted, info.rejected, info.finished = counts["accepted"], counts["rejected"], counts["finished"]
    if final_zero:
        y = denoiser(y, torch.exp(counts["t"]).to(y.dtype))
        info.nfe += 1
    if callback is not None:
        callback({"i": info.steps, "x": y, "denoised": y, "sigma": torch.exp(counts["t"])})
    return y, info
