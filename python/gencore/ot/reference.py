"""Pure-torch reference of the ot family: the specification and the fallback.

Conventions (as GeomLoss): for p = 2 the ground cost is C(x, y) = |x - y|^2 / 2,
for p = 1 it is |x - y|; epsilon = blur^p. Weights a [N], b [M] are
non-negative; balanced problems need sum a = sum b. Every function works on
any device and dtype torch supports; float64 inputs give the oracle.
"""
from __future__ import annotations

import math

import torch

__all__: list = []

# ---------------------------------------------------------------------------
# Sinkhorn (entropic OT): softmin, the Sinkhorn loop, the divergence
# ---------------------------------------------------------------------------
#
# For p = 2, C_ij = |x_i - y_j|^2 / 2. A Sinkhorn half-step is the softmin
#
#     f_i = -eps log sum_j exp(h_j - C_ij / eps),    h_j = log b_j + g_j / eps,
#
# and the barycentric projection of x_i under the plan it defines is
# T(x_i) = sum_j softmax_j(h_j - C_ij / eps) y_j. With these, the plan is
# pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) and, at convergence of the
# balanced problem, OT_eps(a, b) = <a, f> + <b, g> (GeomLoss's convention).

_SOFTMIN_TILE = 2048  # y rows per tile: memory N x tile, never N x M


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed (and returned) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sinkhorn_softmin(x: torch.Tensor, y: torch.Tensor, log_weights: torch.Tensor, eps: float,
                     barycentre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(f [N], T [N, d] or [N, 0]): the softmin above and, when ``barycentre``, T(x).

    x [N, d], y [M, d], log_weights h [M] (may hold -inf, not every entry),
    eps > 0. An online log-sum-exp over tiles of y with distances computed
    directly (no expansion), so memory is O(N tile d).
    """
    dtype = compute_dtype(x.dtype)
    x, y, h = x.to(dtype), y.to(dtype), log_weights.to(dtype)
    n, d = x.shape
    running_max = torch.full((n,), -math.inf, dtype=dtype, device=x.device)
    total = torch.zeros(n, dtype=dtype, device=x.device)
    acc = torch.zeros(n, d if barycentre else 0, dtype=dtype, device=x.device)
    for start in range(0, y.shape[0], _SOFTMIN_TILE):
        tile = y[start:start + _SOFTMIN_TILE]
        logits = h[start:start + _SOFTMIN_TILE] - 0.5 * torch.cdist(x, tile).square() / eps   # [N, T]
        new_max = torch.maximum(running_max, logits.amax(1))
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(logits - shift[:, None])
        rescale = torch.exp(running_max - shift)
        total = total * rescale + p.sum(1)
        if barycentre:
            acc = acc * rescale[:, None] + p @ tile
        running_max = new_max
    f = -eps * (running_max + torch.log(total))
    return f, (acc / total[:, None] if barycentre else acc)


def sinkhorn_softmin_dense(x: torch.Tensor, y: torch.Tensor, log_weights: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same, in float64, from the dense [N, M] matrix of exact squared distances: the tests' oracle."""
    x, y, h = x.double(), y.double(), log_weights.double()
    logits = h - 0.5 * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / eps
    return -eps * torch.logsumexp(logits, 1), torch.softmax(logits, 1) @ y


# ---------------------------------------------------------------------------
# Exact OT (network simplex), sliced Wasserstein
# ---------------------------------------------------------------------------
