"""Targeted data selection by optimal transport, in the manner of TAROT (Feng, Nie,
Liu, Alahi, ICML 2025): pick the candidates whose distribution is closest to a
target distribution, in whitened feature space.

Steps of ``select``:

1. Whitening: features become (x - mu) W with W = (Sigma + ridge I)^(-1/2) the
   inverse square root of the candidates' covariance (or a given [d, d] W), so
   that no few dominant directions decide the distance (TAROT's "whitened
   feature distance").
2. L2 normalisation: u = z / |z|. On unit vectors the cost of
   ``gencore.ot.sinkhorn``, |u - v|^2 / 2, is 1 - cos(u, v): the cosine cost.
3. Sinkhorn between the candidates (weights a, default uniform) and the target
   (weights b): the candidates' potential f_i is the derivative of OT_eps with
   respect to the mass a_i (up to a constant shared by all candidates): putting
   more mass on candidate i lowers the transport cost to the target by more the
   lower f_i is. It is low for candidates near the target's support AND in a
   part of it that the candidates cover thinly, so a multimodal target's modes
   are served in proportion, not only the one nearest mode.
4. Selection: the k candidates with the lowest f. ``weights`` are the
   per-sample weights a_i exp(-(f_i - min f) / eps), normalised to 1 (the share
   of the target's mass each candidate would take at those prices).

This is the potential-ranking reading of TAROT's selection; the paper's
fixed-size and ratio-estimating variants (repeated matching, a held-out
target split) are not reproduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from .. import _checks
from .sinkhorn import sinkhorn

__all__ = ["TarotSelection", "estimate_whitening", "whiten", "select"]


@dataclass(frozen=True)
class TarotSelection:
    """What ``select`` returns.

    indices: [k] int64, the selected candidates, best first.
    scores: [N] the candidates' potentials f (lower = closer to the target).
    weights: [N] per-sample weights >= 0 summing to 1 (see the module docstring).
    cost: OT_eps between all candidates and the target (0-d), for reference.
    converged: whether Sinkhorn met its tolerance.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    cost: torch.Tensor
    converged: bool


def estimate_whitening(features: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], W [d, d]) with W = (Sigma + ridge * mean eigenvalue * I)^(-1/2), Sigma the
    covariance of ``features`` [N, d] (N >= 2): (x - mean) @ W has about identity covariance."""
    _checks.tensor(features, "features", ndim=2)
    if features.shape[0] < 2:
        raise ValueError(f"features needs at least 2 rows to estimate a covariance, got {features.shape[0]}")
    ridge = _checks.real(ridge, "ridge")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x = features.detach().to(torch.float64)
    mean = x.mean(0)
    cov = torch.cov((x - mean).T).reshape(x.shape[1], x.shape[1])
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp(min=0) + ridge * float(values.clamp(min=0).mean()) + 1e-12
    w = (vectors * values.rsqrt()) @ vectors.T
    return mean.to(features.dtype), w.to(features.dtype)


def whiten(features: torch.Tensor, mean: Optional[torch.Tensor], whitening: Optional[torch.Tensor]) -> torch.Tensor:
    """Unit rows of (features - mean) @ whitening (either may be None: no centring / no whitening)."""
    _checks.tensor(features, "features", ndim=2)
    z = features.detach()
    if mean is not None:
        _checks.tensor(mean, "mean", ndim=1)
        if mean.shape[0] != z.shape[1]:
            raise ValueError(f"mean must have shape [{z.shape[1]}], got {tuple(mean.shape)}")
        z = z - mean.to(z.dtype)
    if whitening is not None:
        _checks.tensor(whitening, "whitening", ndim=2)
        if whitening.shape[0] != z.shape[1]:
            raise ValueError(f"whitening must have {z.shape[1]} rows (the feature dimension), "
                             f"got shape {tuple(whitening.shape)}")
        z = z @ whitening.to(z.dtype)
    return torch.nn.functional.normalize(z, dim=1)


def select(candidates: torch.Tensor, target: torch.Tensor, k: int,
           whitening: Union[str, torch.Tensor, None] = "estimate", mean: Optional[torch.Tensor] = None,
           ridge: float = 1e-3, candidate_weights: Optional[torch.Tensor] = None,
           target_weights: Optional[torch.Tensor] = None, blur: float = 0.1, tol: float = 1e-3,
           max_iter: int = 1000) -> TarotSelection:
    """The k candidates closest to the target distribution (module docstring: the steps).

    Args:
        candidates: [N, d] features of the candidate pool (e.g. per-sample
            gradient or embedding features), float.
        target: [M, d] features of the target data, same dtype and device.
        k: 1 <= k <= N.
        whitening: "estimate" (default: from the candidates, ``estimate_whitening``,
            which also gives the centring mean), a [d, d] matrix (centred by
            ``mean`` when given), or None (no whitening, no centring unless ``mean``).
        mean: [d] centre for a given whitening matrix (ignored with "estimate").
        ridge: with "estimate": relative ridge added to the covariance's eigenvalues.
        candidate_weights, target_weights: [N], [M] masses (default uniform);
            normalised to 1 each.
        blur: Sinkhorn's blur on the unit sphere (eps = blur^2; the cost is in [0, 2]).
        tol, max_iter: as ``gencore.ot.sinkhorn``.

    Returns:
        ``TarotSelection`` (indices [k], scores [N], weights [N], cost, converged).
    """
    _checks.tensor(candidates, "candidates", ndim=2)
    _checks.tensor(target, "target", ndim=2)
    _checks.same_size("feature dimension", **{"candidates.shape[1]": candidates.shape[1],
                                              "target.shape[1]": target.shape[1]})
    k = _checks.integer(k, "k", low=1, high=candidates.shape[0])
    if isinstance(whitening, str):
        _checks.choice(whitening, "whitening", ("estimate",))
        mean, whitening = estimate_whitening(candidates, ridge)
    u, v = whiten(candidates, mean, whitening), whiten(target, mean, whitening)

    def normalised(w, name, n):
        if w is None:
            return None
        _checks.tensor(w, name, ndim=1)
        if w.shape[0] != n:
            raise ValueError(f"{name} must have shape [{n}], got {tuple(w.shape)}")
        return w.detach() / w.detach().sum()

    a = normalised(candidate_weights, "candidate_weights", u.shape[0])
    b = normalised(target_weights, "target_weights", v.shape[0])
    result = sinkhorn(u, v, a, b, blur=blur, tol=tol, max_iter=max_iter)
    f = result.f
    mass = torch.full_like(f, 1.0 / f.shape[0]) if a is None else a.to(f.dtype)
    weights = mass * torch.exp(-(f - f.min()) / result.eps)
    weights = weights / weights.sum()
    indices = torch.argsort(f, stable=True)[:k]
    return TarotSelection(indices, f, weights, result.cost, result.converged)
