"""Learned-coefficient solvers: a multistep step whose coefficients are given, and a
way to fit them to a model.

``sample(denoiser, x, sigmas, "learned", coefficients=table)`` runs the multistep
step x_{i+1} = c_x x_i + c_d D_i + c_1 D_{i-1} + c_2 D_{i-2} + c_3 D_{i-3} with
the user's table [n, 6] (or [n, B, 6]), one fused call a step. It is the
plug-in form of the learned-coefficient solvers: DPM-Solver-v3 (Zheng et al.
2023) computes its step coefficients from "empirical model statistics" of the
model, DC-Solver (Zhao et al. 2024) corrects a multistep predictor with
per-step compensation ratios fitted on a few trajectories; once those
statistics or ratios are turned into step weights, they are such a table.

``learn_coefficients`` fits a table directly (in the spirit of "learning to
discretize", Tong et al. 2024): on calibration noise (not the samples to be
drawn), a fine reference solve gives the true states at the grid's noise
levels; then step by step, on the states the learned solver itself reaches
(so its own errors are corrected, not only the reference's), a least-squares
fit of the next reference state on (x_i, D_i, D_{i-1}, D_{i-2}, D_{i-3}).
The fit is a ridge regression towards UniPC's coefficients for the same grid:
near the end of a data-set model's trajectory D_i and D_{i-1} become almost
equal, an unregularized fit then gives huge opposite weights that cancel on
the calibration draws and amplify the difference on new ones (NFE-20 RMSE
4.7 vs UniPC's 0.17 on the harness's data-set problem; 0.12 with the ridge).
The fit costs one fine solve of the calibration batch; sampling with the table
costs exactly the grid's NFE.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import _checks
from . import coefficients as coef
from .grids import check_sigmas, loglinear_sigmas

__all__ = ["learn_coefficients", "check_table"]


def check_table(table: torch.Tensor, sigmas: torch.Tensor, b: int) -> torch.Tensor:
    """A coefficient table for ``sigmas``: [n, 6] or [n, B, 6], finite, float64."""
    _checks.tensor(table, "coefficients", dtypes=(torch.float32, torch.float64))
    n = sigmas.shape[-1] - 1
    if not (table.dim() == 2 and table.shape == (n, coef.N_COEFFS)) and not (
            table.dim() == 3 and table.shape == (n, b, coef.N_COEFFS)):
        raise ValueError(f"coefficients must be [n, 6] = [{n}, 6] (or [n, B, 6]) for a grid of {n} steps, "
                         f"got {tuple(table.shape)}")
    t = table.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("coefficients must be finite")
    return t


def learn_coefficients(denoiser: Callable, sigmas: torch.Tensor, calibration: torch.Tensor, *,
                       history: int = 3, substeps: int = 64, ridge: float = 1e-4) -> torch.Tensor:
    """Fits a step-coefficient table [n, 6] for ``sigmas`` to ``denoiser`` (module docstring).

    Args:
        denoiser: D(x, sigma [B]) (float64 calibration recommended).
        sigmas: the decreasing grid the table is for, [n + 1] (shared), may end in 0.
        calibration: [C, ...] starting noise, sigmas[0] * standard normal, independent
            of the samples to be drawn (C of a few hundred fits 4 numbers per step well).
        history: earlier denoised outputs each step may use (0 to 3).
        substeps: log-uniform UniPC-3 steps of the reference solve between two grid points.
        ridge: the penalty on the departure from UniPC's coefficients, relative to
            the columns' norms (0 is plain least squares).

    Returns:
        float64 [n, 6]: (c_x, c_d, c_1, c_2, c_3, c_z) per step, c_z = 0.
    """
    from .solvers import sample

    s = check_sigmas(sigmas).cpu()
    if s.dim() != 1:
        raise ValueError("learn_coefficients fits one table for a shared grid [n + 1]")
    history = _checks.integer(history, "history", low=0, high=3)
    substeps = _checks.integer(substeps, "substeps", low=2)
    ridge = _checks.real(ridge, "ridge")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    _checks.tensor(calibration, "calibration")
    n, c = s.shape[0] - 1, calibration.shape[0]
    x_hat, ref = calibration, calibration
    table = torch.zeros(n, coef.N_COEFFS, dtype=torch.float64)
    prior = coef.unipc(s, order=min(history + 1, 3))
    past: list = []
    for i in range(n):
        lo = float(s[i + 1]) if s[i + 1] > 0 else float(s[i]) * 1e-4
        ref = sample(denoiser, ref, loglinear_sigmas(substeps, lo, float(s[i]), final_zero=s[i + 1] == 0),
                     "unipc", lower_order_final=False)
        d = denoiser(x_hat, s[i].to(x_hat.dtype).expand(c))
        columns = [x_hat, d] + past[:history]
        a = torch.stack([col.reshape(-1).to(torch.float64) for col in columns], 1)
        fit = _ridge_fit(a, ref.reshape(-1).to(torch.float64), prior[i, :len(columns)], ridge)
        table[i, :len(columns)] = fit
        x_hat = sum(w.to(x_hat.dtype) * col for w, col in zip(fit, columns))
        past = [d] + past[:2]
    return table


def _ridge_fit(a: torch.Tensor, target: torch.Tensor, prior: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_w |a w - target|^2 + ridge |diag(|a_j|) (w - prior)|^2, by least squares on
    the column-normalized system stacked over the penalty rows (no normal equations,
    so equal columns need no special case)."""
    norms = a.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
    k = a.shape[1]
    stacked = torch.cat([a / norms, ridge ** 0.5 * torch.eye(k, dtype=torch.float64)])
    residual = torch.cat([target - a @ prior, torch.zeros(k, dtype=torch.float64)])
    return prior + torch.linalg.lstsq(stacked, residual[:, None]).solution[:, 0] / norms
