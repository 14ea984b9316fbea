"""Pure-torch reference of the ood family: the specification and the fallback.

Works on any device and dtype torch supports; float64 inputs give the
high-precision oracle the tests compare native kernels against. Pairwise work
streams the bank in tiles, so memory stays O(Q * (tile + k)), never Q x N.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KNN_METRICS = ("l2", "sqeuclidean", "ip", "cosine")
LARGER_IS_BETTER = {"l2": False, "sqeuclidean": False, "ip": True, "cosine": True}
_BANK_TILE = 4096


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed (and returned) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN: queries [Q, D], bank [N, D] -> (values [Q, k], indices [Q, k] int64).

    Best first: ascending distance for 'l2' / 'sqeuclidean', descending
    similarity for 'ip' / 'cosine'. Ties go to the lower bank index. Distances
    use ||x||^2 + ||y||^2 - 2 x.y, clamped at 0 (as the native kernels do).
    """
    dtype = compute_dtype(queries.dtype)
    x, y = queries.to(dtype), bank.to(dtype)
    if metric == "cosine":
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    q = x.shape[0]
    # Running best as a "smaller is better" key; indices seen so far are all
    # lower than the next tile's, so a stable sort breaks ties by index.
    best_key = x.new_empty((q, 0))
    best_idx = torch.empty((q, 0), dtype=torch.int64, device=x.device)
    x_sq = (x * x).sum(1, keepdim=True)
    for start in range(0, y.shape[0], _BANK_TILE):
        tile = y[start:start + _BANK_TILE]
        dots = x @ tile.T
        if metric in ("l2", "sqeuclidean"):
            key = (x_sq + (tile * tile).sum(1)[None, :] - 2 * dots).clamp_min(0)
        else:
            key = -dots
        idx = torch.arange(start, start + tile.shape[0], device=x.device).expand(q, -1)
        key, idx = torch.cat([best_key, key], 1), torch.cat([best_idx, idx], 1)
        order = torch.sort(key, dim=1, stable=True).indices[:, :k]
        best_key, best_idx = key.gather(1, order), idx.gather(1, order)
    values = best_key if not LARGER_IS_BETTER[metric] else -best_key
    if metric == "l2":
        values = values.sqrt()
    return values, best_idx


# ---------------------------------------------------------------- Mahalanobis

MAHALANOBIS_REDUCTIONS = ("none", "min")
_QUERY_BLOCK = 4096


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                reduce: str = "min") -> torch.Tensor:
    """Squared Mahalanobis distances, whitened form: the spec of ``gencore.ood.mahalanobis``.

    features [Q, D], means [C, D], precision_factor L [D, R] (Sigma^-1 = L L^T)
    -> [Q, C] (reduce="none") or [Q] (reduce="min"), float64 for float64 input,
    else float32.

    d_c(x) = ||z - m_c||^2 = ||z||^2 + (||m_c||^2 - 2 z.m_c), clamped at 0, with
    z = (x - mu_bar) L and m_c = (mu_c - mu_bar) L. Centring at the mean of the
    class means mu_bar leaves d unchanged and keeps the expansion accurate for
    features far from the origin. Queries stream in blocks of 4096, so memory is
    O(4096 * (D + R + C) + C * R). NaN propagates (through the min too).
    """
    return mahalanobis_nearest(features, means, precision_factor, reduce)[0]


def mahalanobis_nearest(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                        reduce: str = "min") -> tuple[torch.Tensor, torch.Tensor]:
    """``mahalanobis`` plus the nearest class [Q] int64: the argmin over classes of
    ||m_c||^2 - 2 z.m_c (before the clamp, so clamped ties still pick the closest)."""
    dtype = compute_dtype(features.dtype)
    x, mu, factor = features.to(dtype), means.to(dtype), precision_factor.to(dtype)
    center = mu.mean(0)
    mt = (mu - center) @ factor                      # [C, R]
    msq = (mt * mt).sum(1)                           # [C]
    dists, nearest = [], []
    for start in range(0, x.shape[0], _QUERY_BLOCK):
        z = (x[start:start + _QUERY_BLOCK] - center) @ factor   # [B, R]
        v = torch.addmm(msq[None, :], z, mt.T, alpha=-2)        # [B, C]
        zsq = (z * z).sum(1, keepdim=True)
        near = v.argmin(1)
        if reduce == "min":
            v = v.gather(1, near[:, None])[:, 0]
            zsq = zsq[:, 0]
        dists.append((zsq + v).clamp_min(0))
        nearest.append(near)
    if not dists:
        shape = (0, mu.shape[0]) if reduce == "none" else (0,)
        return x.new_empty(shape), torch.empty((0,), dtype=torch.int64, device=x.device)
    return torch.cat(dists), torch.cat(nearest)


def relative_mahalanobis(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                         background_mean: torch.Tensor, background_factor: torch.Tensor,
                         reduce: str = "min") -> torch.Tensor:
    """Relative Mahalanobis distance (Ren et al. 2021): d_c(x) - d_bg(x).

    background_mean [D], background_factor [D, R0]; [Q, C] or [Q] (min_c d_c - d_bg).
    """
    d = mahalanobis(features, means, precision_factor, reduce)
    d_bg = mahalanobis(features, background_mean[None, :], background_factor, "min")
    return d - (d_bg[:, None] if reduce == "none" else d_bg)
