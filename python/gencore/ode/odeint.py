"""``odeint(func, y0, t, method="dopri5", rtol, atol)``: torchdiffeq's convention for generic flows.

func(t, y) -> dy/dt; y0 [B, ...]; t [T] increasing or decreasing output times;
returns [T, B, ...] with result[0] = y0. Methods: "dopri5" (adaptive
Dormand-Prince, gencore.ode.rk45), "euler", "midpoint", "rk4" (fixed steps
between consecutive output times, ``step_size`` subdividing them).

``per_sample=True`` gives every batch element its own adaptive step size:
func then receives t as a [B] tensor (each sample's own time). The default
(False) shares one step size and passes a 0-d t, exactly torchdiffeq's
interface, with the error norm taken over the whole tensor as torchdiffeq does.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _checks
from .rk45 import dormand_prince, linear

__all__ = ["odeint", "METHODS"]

METHODS = ("dopri5", "euler", "midpoint", "rk4")


def _fixed_step(method, f, t0, t1, y, step_size):
    """Fixed steps from t0 to t1 (0-d tensors); f(t, y) with t 0-d."""
    span = float(t1 - t0)
    n = 1 if step_size is None else max(1, math.ceil(abs(span) / step_size - 1e-12))
    h = span / n
    t = float(t0)
    for _ in range(n):
        tt = torch.tensor(t, dtype=torch.float64)
        k1 = f(tt, y)
        if method == "euler":
            y = linear([(y, 1.0), (k1, h)])
        elif method == "midpoint":
            k2 = f(tt + h / 2, linear([(y, 1.0), (k1, h / 2)]))
            y = linear([(y, 1.0), (k2, h)])
        else:
            k2 = f(tt + h / 2, linear([(y, 1.0), (k1, h / 2)]))
            k3 = f(tt + h / 2, linear([(y, 1.0), (k2, h / 2)]))
            k4 = f(tt + h, linear([(y, 1.0), (k3, h)]))
            y = linear([(y, 1.0), (k1, h / 6), (k2, h / 3), (k3, h / 3), (k4, h / 6)])
        t += h
    return y


def odeint(func: Callable, y0: torch.Tensor, t: torch.Tensor, method: str = "dopri5", rtol: float = 1e-7,
           atol: float = 1e-9, *, per_sample: bool = False, step_size: Optional[float] = None,
           max_steps: int = 100000, return_info: bool = False):
    """Solves dy/dt = func(t, y) and returns y at every time of ``t``: [len(t), *y0.shape].

    Args:
        func: f(t, y) -> dy/dt, same shape as y.
        y0: [B, ...] initial values (float32 / float64).
        t: [T] strictly monotone times, t[0] the time of y0.
        method: "dopri5" (default, adaptive) or fixed-step "euler" / "midpoint" / "rk4".
        rtol, atol: tolerances of dopri5 (torchdiffeq's defaults).
        per_sample: one step size per batch element (func gets a [B] time); see the module docstring.
        step_size: fixed-step methods: the largest step (default: one step per output interval).
        max_steps: dopri5: iterations per output interval before partial results are returned.
        return_info: also return {"nfe", "accepted", "rejected", "finished"} (dopri5).
    """
    _checks.tensor(y0, "y0")
    _checks.tensor(t, "t", ndim=1)
    _checks.choice(method, "method", METHODS)
    if t.shape[0] < 1:
        raise ValueError("t must hold at least one time")
    times = t.detach().to(torch.float64).cpu()
    if times.shape[0] > 1:
        steps = times[1:] - times[:-1]
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise ValueError("t must be strictly increasing or strictly decreasing")
    if y0.dim() == 0:
        raise ValueError("y0 must be [B, ...]; wrap a single state as y0[None]")
    out = [y0]
    info = {"nfe": 0, "accepted": None, "rejected": None, "finished": None}
    y = y0
    b = y0.shape[0]
    for i in range(times.shape[0] - 1):
        t0, t1 = times[i], times[i + 1]
        if method != "dopri5":
            y = _fixed_step(method, func, t0, t1, y, step_size)
            out.append(y)
            continue
        if per_sample:
            y, counts = dormand_prince(func, y, t0.expand(b), t1.expand(b), rtol=rtol, atol=atol,
                                       max_steps=max_steps)
        else:  # the whole batch as one sample: a shared step and a 0-d time, like torchdiffeq
            shape = y.shape

            def shared(tt, flat):
                return func(tt[0], flat.reshape(shape)).reshape(1, -1)
            flat, counts = dormand_prince(shared, y.reshape(1, -1), t0.reshape(1), t1.reshape(1), rtol=rtol,
                                          atol=atol, max_steps=max_steps)
            y = flat.reshape(shape)
        info["nfe"] += counts["nfe"]
        for key in ("accepted", "rejected"):
            info[key] = counts[key] if info[key] is None else info[key] + counts[key]
        info["finished"] = counts["finished"] if info["finished"] is None else info["finished"] & counts["finished"]
        out.append(y)
    result = torch.stack(out)
    return (result, info) if return_info else result
