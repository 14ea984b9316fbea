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
# ====================================================================== logit scores and ViM
# Every score: higher = more in-distribution. logits [N, C] -> [N] in
# compute_dtype(logits.dtype), computed in float64 (the kernels accumulate in
# double too). The formulas avoid forming 1 - p by subtraction and never
# exponentiate before taking logs.

def _shifted_tempered(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (row max [N], (logits - max) / T [N, C]) with 1/T clamped to the
    largest double, so T -> 0 keeps tied maxima at 0 instead of 0 * inf = NaN."""
    x = logits.double()
    m = x.amax(dim=1)
    inv_t = min(1.0 / temperature, torch.finfo(torch.float64).max)
    return m, (x - m[:, None]) * inv_t


def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """max_c softmax(logits / T)_c (Hendrycks & Gimpel 2017)."""
    _, z = _shifted_tempered(logits, temperature)
    return (1.0 / torch.exp(z).sum(dim=1)).to(compute_dtype(logits.dtype))


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T logsumexp(logits / T), the negative free energy (Liu et al. 2020)."""
    m, z = _shifted_tempered(logits, temperature)
    return (m + temperature * torch.logsumexp(z, dim=1)).to(compute_dtype(logits.dtype))


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """max_c logits_c (Hendrycks et al. 2022)."""
    return logits.to(compute_dtype(logits.dtype)).amax(dim=1)


def _log_one_minus_max_p(x: torch.Tensor) -> torch.Tensor:
    """[N, 1] log(1 - max_c p_c) = logsumexp of the other classes - logsumexp of all."""
    k = x.argmax(dim=1, keepdim=True)
    others = x.scatter(1, k, float("-inf"))
    return (torch.logsumexp(others, dim=1) - torch.logsumexp(x, dim=1))[:, None]


def gen(logits: torch.Tensor, gamma: float = 0.1, top_m: int = 100) -> torch.Tensor:
    """-sum over the top-M classes of p^gamma (1 - p)^gamma, p = softmax(logits) (GEN, Liu et al. 2023).

    Terms are exp(gamma (log p + log(1 - p))): log p from log_softmax, log(1 - p)
    from the other classes' logsumexp for the largest p, log1p(-p) for the rest
    (p <= 1/2 there), so confident rows and tiny probabilities stay exact.
    """
    x = logits.double()
    m = min(top_m, x.shape[1])
    log_p = torch.log_softmax(x, dim=1).topk(m, dim=1).values  # descending: column 0 is the max
    log_1mp = torch.cat([_log_one_minus_max_p(x), torch.log1p(-log_p[:, 1:].exp())], dim=1)
    return (-torch.exp(gamma * (log_p + log_1mp)).sum(dim=1)).to(compute_dtype(logits.dtype))


def kl_matching(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """-KL(softmax(logits) || templates[argmax logits]) (Hendrycks et al. 2022).

    Classes with p = 0 contribute 0; a template entry of 0 where p > 0 gives -inf.
    """
    x = logits.double()
    log_p = torch.log_softmax(x, dim=1)
    log_d = templates.double().log()[x.argmax(dim=1)]  # [N, C]
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_d), torch.zeros_like(p)).sum(dim=1)
    return (-kl).to(compute_dtype(logits.dtype))


_KL_ROWS = 4096


def kl_matching_min(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """-min_k KL(softmax(logits) || templates[k]) over every template row (the paper's
    formula, OpenOOD's KLM, pytorch-ood 0.4.0), in float64, rows in blocks of 4096:

        KL(p || d_k) = sum_c p_c log p_c - max_k sum_c p_c log d_kc

    A template entry of 0 counts as the lowest finite float of the logits' compute
    dtype (as pytorch-ood does), so p_c > 0 against d_kc = 0 gives a huge finite KL,
    not inf; p_c = 0 contributes 0.
    """
    lowest = torch.finfo(compute_dtype(logits.dtype)).min
    log_d = torch.log(templates.double()).clamp_min(lowest)   # [K, C]
    out = []
    for start in range(0, logits.shape[0], _KL_ROWS):
        log_p = torch.log_softmax(logits[start:start + _KL_ROWS].double(), dim=1)
        p = log_p.exp()
        neg_entropy = torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)
        out.append(-(neg_entropy - (p @ log_d.T).amax(1)))
    result = torch.cat(out) if out else logits.new_empty((0,), dtype=torch.float64)
    return result.to(compute_dtype(logits.dtype))


def residual_vectors(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """[N, D] (I - P P^T)(x - u), in compute_dtype(features.dtype)."""
    dtype = compute_dtype(features.dtype)
    xc = features.to(dtype) - center.to(dtype)
    p = principal.to(dtype)
    return xc - (xc @ p) @ p.T


def residual(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """-||(I - P P^T)(x - u)||: features [N, D], principal [D, R], center [D] -> [N]."""
    return -torch.linalg.vector_norm(residual_vectors(features, principal, center), dim=1)


def vim(features: torch.Tensor, logits: torch.Tensor, principal: torch.Tensor, center: torch.Tensor,
        alpha: float) -> torch.Tensor:
    """logsumexp(logits) - alpha ||(I - P P^T)(x - u)|| (ViM, Wang et al. 2022)."""
    return energy(logits).to(compute_dtype(features.dtype)) + alpha * residual(features, principal, center)
