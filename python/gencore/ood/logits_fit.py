"""Fitting the statistics that KL matching and ViM score against.

Pure functions of in-distribution data (no state, any device): a detector
calls them once at fit time and keeps the results. They run in float64 torch
ops; the scores themselves are the ops in ``ops.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _arrays, _checks
from . import reference

_F64 = torch.float64
_ROWS_PER_CHUNK = 8192  # bounds the float64 softmax buffer of kl_matching_templates


@_arrays.accepts_arrays
def kl_matching_templates(logits: torch.Tensor, unseen: str = "drop") -> torch.Tensor:
    """Class templates for ``kl_matching`` (Hendrycks et al. 2022).

    d_c = mean of softmax(logits_i) over the rows i predicted as class c
    (argmax_j logits_ij = c, first index on ties); no labels are needed.

    Args:
        logits: [N, C] float tensor of in-distribution (validation) logits, C >= 1.
        unseen: what a class that no row predicts gets: "drop" (default: no
            template; the result has one row per predicted class, [K, C], for
            ``kl_matching(..., rule="min")``, as pytorch-ood 0.4.0 fits only
            predicted classes) or "uniform" (the distribution 1/C, so the
            result is [C, C], as ``rule="predicted"`` needs).

    Returns:
        templates [K, C] ("drop", classes in increasing order) or [C, C]
        ("uniform"), in compute dtype (float64 for float64 logits, else
        float32), on the logits' device.

    Averages are accumulated in float64, in chunks of 8192 rows (peak extra
    memory 8192 x C float64 plus the [C, C] sums). NaN/inf raise ValueError.
    """
    _checks.tensor(logits, "logits", ndim=2)
    _checks.choice(unseen, "unseen", ("drop", "uniform"))
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"logits has no classes (shape {tuple(logits.shape)}); templates need C >= 1")
    if n == 0 and unseen == "drop":
        raise ValueError("logits is empty (shape [0, C]): no class is predicted, so no template is fitted")
    _checks.finite(logits, "logits")
    sums = torch.zeros((c, c), dtype=_F64, device=logits.device)
    counts = torch.zeros(c, dtype=_F64, device=logits.device)
    for start in range(0, n, _ROWS_PER_CHUNK):
        x = logits[start:start + _ROWS_PER_CHUNK].detach().to(_F64)
        k = x.argmax(dim=1)
        sums.index_add_(0, k, torch.softmax(x, dim=1))
        counts.index_add_(0, k, torch.ones_like(k, dtype=_F64))
    seen = counts > 0
    templates = torch.where(seen[:, None], sums / torch.where(seen, counts, 1.0)[:, None],
                            torch.full_like(sums, 1.0 / c))
    if unseen == "drop":
        templates = templates[seen]
    return templates.to(reference.compute_dtype(logits.dtype))


@_arrays.accepts_arrays
def vim_fit(features: torch.Tensor, logits: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
            dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fits ViM (Wang et al. 2022) on in-distribution training features.

    With the classifier's last layer logits = x W^T + b:
        u     = -pinv(W) b                           (the origin where all logits are 0)
        P     = the ``dim`` leading eigenvectors of (1/N) sum_i (x_i - u)(x_i - u)^T
                (sklearn's EmpiricalCovariance(assume_centered=True) of x - u)
        alpha = sum_i max_c logits_ic / sum_i ||(I - P P^T)(x_i - u)||
    exactly as the paper's code and OpenOOD's ViM postprocessor (which keep the
    complement of P instead; the residual norm is the same).

    Args:
        features: [N, D] float tensor of training features, N >= 1, D >= 2.
        logits: [N, C] logits of the same rows, or None to compute x W^T + b.
        weight: [C, D] last-layer weight W; bias: [C] last-layer bias b.
        dim: R, the principal dimension, 1 <= R < D (the paper: 1000 for
            D = 2048, 512 for D = 768).

    Returns:
        ``(center [D], principal [D, R], alpha)``: center and principal in
        features' dtype on its device (principal with orthonormal columns,
        ordered by decreasing eigenvalue; eigenvector signs are arbitrary),
        alpha a Python float. Feed them to ``vim(features, logits, principal,
        center, alpha)`` or ``residual(features, principal, center)``.

    Everything is computed in float64 (pinv, covariance, eigh); peak extra
    memory N x D float64 plus D x D. alpha is read back to the host (one
    device sync on CUDA). Raises ValueError when the training features have
    no residual outside the principal subspace (alpha would be infinite).
    """
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(weight, "weight", ndim=2)
    _checks.tensor(bias, "bias", ndim=1)
    named = {"features": features, "weight": weight, "bias": bias}
    if logits is not None:
        _checks.tensor(logits, "logits", ndim=2)
        named["logits"] = logits
    _checks.same_device(**named)
    n, d = features.shape
    c = weight.shape[0]
    if n == 0:
        raise ValueError("features is empty (shape [0, D]); vim_fit needs training rows")
    if weight.shape[1] != d:
        raise ValueError(f"weight must be [C, D] with D = {d} (features.shape[1]), got {tuple(weight.shape)}")
    if bias.shape[0] != c:
        raise ValueError(f"bias must be [C] = [{c}] (weight.shape[0]), got {tuple(bias.shape)}")
    if logits is not None and tuple(logits.shape) != (n, c):
        raise ValueError(f"logits must be [N, C] = [{n}, {c}], got {tuple(logits.shape)}")
    _checks.integer(dim, "dim", low=1, high=d - 1)
    for name, t in named.items():
        _checks.finite(t, name)

    x = features.detach().to(_F64)
    w, b = weight.detach().to(_F64), bias.detach().to(_F64)
    center = -(torch.linalg.pinv(w) @ b)
    xc = x - center
    evals, evecs = torch.linalg.eigh(xc.T @ xc / n)  # ascending eigenvalues
    principal = evecs[:, -dim:].flip(1)
    lg = x @ w.T + b if logits is None else logits.detach().to(_F64)
    residual_sum = torch.linalg.vector_norm(xc - (xc @ principal) @ principal.T, dim=1).sum()
    max_logit_sum = lg.amax(dim=1).sum()
    if not bool(residual_sum > 0):
        raise ValueError("training features have no component outside the principal subspace "
                         f"(dim={dim}); lower dim")
    alpha = float(max_logit_sum / residual_sum)
    return center.to(features.dtype), principal.to(features.dtype).contiguous(), alpha
