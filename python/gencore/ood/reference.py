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
    if metric == "cosine":  # norms clamped at eps=1e-12, as every backend does
        x, y = F.normalize(x, dim=1, eps=1e-12), F.normalize(y, dim=1, eps=1e-12)
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
