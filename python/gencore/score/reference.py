"""Pure-torch reference of the score family: the specification and the fallback.

Conventions. A clean sample y is noised as x = alpha y + sigma n, n ~ N(0, I):
alpha = 1 is the VE / EDM convention, alpha = alpha_t the VP one. sigma and
alpha are per query ([B] tensors). Every function works on any device and
dtype torch supports; float64 inputs give the high-precision oracle.

Finite data set (the Gaussian-smoothed empirical distribution, the "ideal
denoiser" that memorises its training set), data y_i with weights w_i:

    p(x)   = sum_i w_i N(x; alpha y_i, sigma^2 I) / sum_i w_i
    l_i(x) = log w_i - ||x - alpha y_i||^2 / (2 sigma^2)
    D(x)   = E[y | x] = sum_i softmax_i(l(x)) y_i
    score  = grad log p(x) = (alpha D(x) - x) / sigma^2          (Tweedie)
    log p  = logsumexp_i l_i - log sum_i w_i - (d / 2) log(2 pi sigma^2)

Gaussian mixture, components N(mu_k, Sigma_k) with weights pi_k:

    x | k ~ N(alpha mu_k, C_k),  C_k = alpha^2 Sigma_k + sigma^2 I
    log p  = logsumexp_k (log pi_k + log N(x; alpha mu_k, C_k))
    score  = -sum_k r_k(x) C_k^-1 (x - alpha mu_k),   r = responsibilities
    D(x)   = (x + sigma^2 score) / alpha

Sigma_k = U_k diag(lambda_k) U_k^T is passed as eigenvalues [K, d] and
eigenvectors [K, d, d] (None: U = I, i.e. isotropic or diagonal covariances).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

_DATA_TILE = 4096


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed (and returned) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- finite data set

def dataset_denoise(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor,
                    log_weights: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(D [B, d], log_z [B]): the data-set denoiser and log_z = logsumexp_i l_i(x).

    x [B, d], data [N, d], sigma [B] > 0, alpha [B] > 0, log_weights [N] or None
    (all weights 1). Streams the data in tiles with an online log-sum-exp, so
    memory is O(B (tile + d)). Distances are computed around the data mean:
    ||x - alpha y||^2 = ||x' - alpha y'||^2 with y' = y - m, x' = x - alpha m,
    which keeps the expanded form ||x'||^2 - 2 alpha x'.y' + alpha^2 ||y'||^2
    accurate for data far from the origin.
    """
    dtype = compute_dtype(x.dtype)
    x, y = x.to(dtype), data.to(dtype)
    sigma, alpha = sigma.to(dtype), alpha.to(dtype)
    center = y.mean(0)
    xc = x - alpha[:, None] * center                          # [B, d]
    inv_var = 1.0 / (sigma * sigma)                          # [B]
    b, d = x.shape
    running_max = torch.full((b,), -math.inf, dtype=dtype, device=x.device)
    total = torch.zeros(b, dtype=dtype, device=x.device)
    acc = torch.zeros(b, d, dtype=dtype, device=x.device)
    for start in range(0, y.shape[0], _DATA_TILE):
        tile = y[start:start + _DATA_TILE] - center           # [T, d]
        # l_i + ||x'||^2 / (2 sigma^2): the query's own term is added at the end
        logits = (alpha[:, None] * (xc @ tile.T) - 0.5 * (alpha * alpha)[:, None] * (tile * tile).sum(1)) \
            * inv_var[:, None]
        if log_weights is not None:
            logits = logits + log_weights[start:start + _DATA_TILE].to(dtype)
        new_max = torch.maximum(running_max, logits.amax(1))
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(running_max - safe_max)
        p = torch.exp(logits - safe_max[:, None])
        total = total * rescale + p.sum(1)
        acc = acc * rescale[:, None] + p @ tile
        running_max = new_max
    denoised = acc / total[:, None] + center
    safe = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))
    log_z = safe + torch.log(total) - 0.5 * (xc * xc).sum(1) * inv_var
    return denoised, log_z


def dataset_denoise_dense(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor,
                          log_weights: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same, in float64 with the dense [B, N] softmax of direct distances: the tests' oracle."""
    x, y = x.double(), data.double()
    sigma, alpha = sigma.double(), alpha.double()
    dist = ((x[:, None, :] - alpha[:, None, None] * y[None, :, :]) ** 2).sum(-1)   # [B, N]
    logits = -dist / (2 * sigma * sigma)[:, None]
    if log_weights is not None:
        logits = logits + log_weights.double()
    return torch.softmax(logits, 1) @ y, torch.logsumexp(logits, 1)


def log_normaliser(weights: Optional[torch.Tensor], n: int, d: int, sigma: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """log sum_i w_i + (d / 2) log(2 pi sigma^2) (w = 1 when weights is None): log p = log_z - this."""
    log_total = math.log(n) if weights is None else torch.log(weights.to(dtype).sum())
    return log_total + 0.5 * d * torch.log(2 * math.pi * sigma.to(dtype) ** 2)


# ---------------------------------------------------------------- Gaussian mixture

def gmm(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, eigvals: torch.Tensor,
        eigvecs: Optional[torch.Tensor], sigma: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x) [B], score [B, d]) of the mixture smoothed at (sigma, alpha).

    x [B, d], means [K, d], log_weights [K] (normalised: logsumexp = 0),
    eigvals [K, d] >= 0, eigvecs [K, d, d] (columns) or None, sigma, alpha [B].
    Components are visited one at a time with an online log-sum-exp, so memory
    is O(B d) whatever K.
    """
    dtype = compute_dtype(x.dtype)
    x, mu, lam = x.to(dtype), means.to(dtype), eigvals.to(dtype)
    sigma, alpha, lw = sigma.to(dtype), alpha.to(dtype), log_weights.to(dtype)
    b, d = x.shape
    running_max = torch.full((b,), -math.inf, dtype=dtype, device=x.device)
    total = torch.zeros(b, dtype=dtype, device=x.device)
    acc = torch.zeros(b, d, dtype=dtype, device=x.device)
    log_2pi = math.log(2 * math.pi)
    for k in range(mu.shape[0]):
        diff = x - alpha[:, None] * mu[k]                               # [B, d]
        z = diff if eigvecs is None else diff @ eigvecs[k].to(dtype)     # rotated: U^T (x - alpha mu)
        var = (alpha * alpha)[:, None] * lam[k] + (sigma * sigma)[:, None]   # [B, d]
        w = z / var
        log_n = -0.5 * ((z * w).sum(1) + torch.log(var).sum(1) + d * log_2pi) + lw[k]
        grad = -(w if eigvecs is None else w @ eigvecs[k].to(dtype).T)  # C^-1 (x - alpha mu), negated
        new_max = torch.maximum(running_max, log_n)
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(running_max - safe_max)      # 0 while nothing has mass (running_max = -inf)
        p = torch.exp(log_n - safe_max)
        total = total * rescale + p
        acc = acc * rescale[:, None] + p[:, None] * grad
        running_max = new_max
    return running_max + torch.log(total), acc / total[:, None]


# ---------------------------------------------------------------- score-matching losses

def dsm_loss(raw: torch.Tensor, x: torch.Tensor, target: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor,
             weight: torch.Tensor) -> torch.Tensor:
    """Per-sample weight_b * mean_j (c_skip_b x_bj + c_out_b raw_bj - target_bj)^2, [B].

    raw, x, target [B, ...] (same shape); c_skip, c_out, weight [B]. The
    prediction c_skip x + c_out raw is the preconditioned denoiser of EDM
    (Karras et al. 2022, eq. 7) or, with c_skip = 0 and c_out = 1, any raw
    prediction (epsilon, v, flow velocity) against its target.
    """
    dtype = compute_dtype(raw.dtype)
    b = raw.shape[0]
    shape = (b,) + (1,) * (raw.dim() - 1)
    pred = c_skip.to(dtype).view(shape) * x.to(dtype) + c_out.to(dtype).view(shape) * raw.to(dtype)
    err = (pred - target.to(dtype)).reshape(b, -1)
    per_sample = (err * err).mean(1) if err.shape[1] else torch.zeros(b, dtype=dtype, device=raw.device)
    return weight.to(dtype) * per_sample


def dmd_gradient(x0: torch.Tensor, denoised_real: torch.Tensor, denoised_fake: torch.Tensor) -> torch.Tensor:
    """The distribution-matching gradient of DMD / DMD2 (Yin et al. 2024), [B, ...]:

        grad = (denoised_fake - denoised_real) / mean_j |x0 - denoised_real|_j   (per sample)

    i.e. (s_real - s_fake) sigma^2 / alpha ... rewritten with denoisers, normalised
    by the per-sample mean absolute error of the real denoiser as in DMD's
    code; a zero normaliser gives 0 (DMD applies nan_to_num).
    """
    dtype = compute_dtype(x0.dtype)
    b = x0.shape[0]
    x0, real, fake = x0.to(dtype), denoised_real.to(dtype), denoised_fake.to(dtype)
    norm = (x0 - real).abs().reshape(b, -1).mean(1) if x0[0].numel() else torch.ones(b, dtype=dtype,
                                                                                     device=x0.device)
    shape = (b,) + (1,) * (x0.dim() - 1)
    grad = (fake - real) / norm.view(shape)
    return torch.where(norm.view(shape) > 0, grad, torch.zeros_like(grad))
