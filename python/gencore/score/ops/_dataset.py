"""score: the exact denoiser of a finite data set, one definition (gencore._op.Op) and the public functions.

gencore::score_dataset_denoise(x [B, d], data [N, d], sigma [B], alpha [B],
weights [N]?) -> (D [B, d], log_z [B]); see gencore.score.reference for the math.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ... import _arrays, _checks, _softmin
from ..._op import Op
from .. import reference

# ====================================================================== checks

def per_query(value, name: str, x: torch.Tensor) -> torch.Tensor:
    """sigma / alpha as a [B] tensor in x's compute dtype: a float, or a [B] (or [1]) tensor."""
    dtype, b = reference.compute_dtype(x.dtype), x.shape[0]
    if isinstance(value, torch.Tensor):
        _checks.tensor(value, name)
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, b)):
            raise ValueError(f"{name} must be a float or a [B] = [{b}] tensor, got shape {tuple(value.shape)}")
        _checks.same_device(x=x, **{name: value})
        return value.to(dtype).reshape(-1).expand(b).contiguous() if value.numel() != b else value.to(dtype)
    return torch.full((b,), _checks.real(value, name, positive=True), dtype=dtype, device=x.device)


def _check(x, data, sigma, alpha, weights):
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(data, "data", ndim=2)
    _checks.tensor(sigma, "sigma", ndim=1)
    _checks.tensor(alpha, "alpha", ndim=1)
    named = {"x": x, "data": data, "sigma": sigma, "alpha": alpha}
    if weights is not None:
        _checks.tensor(weights, "weights", ndim=1)
        named["weights"] = weights
    _checks.same_device(**named)
    _checks.same_dtype("x", x, data=data)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "data.shape[1]": data.shape[1]})
    _checks.same_size("queries", **{"x.shape[0]": x.shape[0], "sigma.shape[0]": sigma.shape[0],
                                    "alpha.shape[0]": alpha.shape[0]})
    if data.shape[0] == 0:
        raise ValueError("data is empty (shape [0, d]); the data-set denoiser needs at least one point")
    if x.shape[1] == 0:
        raise ValueError("x and data have dimension d = 0")
    if weights is not None:
        _checks.same_size("data points", **{"data.shape[0]": data.shape[0], "weights.shape[0]": weights.shape[0]})
    return x, data, sigma, alpha, weights


def _check_values(backend, x, data, sigma, alpha, weights):
    for name, t in (("sigma", sigma), ("alpha", alpha)):
        if t.numel() and not bool((t > 0).all()):
            raise ValueError(f"{name} must be > 0, got a minimum of {float(t.min())}")
    if weights is not None:
        if bool((weights < 0).any()):
            raise ValueError(f"weights must be >= 0, got a minimum of {float(weights.min())}")
        if not bool((weights > 0).any()):
            raise ValueError("weights are all zero: the data set has no mass")


def _fake(x, data, sigma, alpha, weights):
    dtype = reference.compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0],), dtype=dtype)


def _log_weights(weights: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if weights is None else torch.log(weights.detach().to(dtype))


def _reference(x, data, sigma, alpha, weights):
    return reference.dataset_denoise(x, data, sigma, alpha, _log_weights(weights, reference.compute_dtype(x.dtype)))


# ====================================================================== native glue

def _cpu(x, data, sigma, alpha, weights):
    dtype = reference.compute_dtype(x.dtype)
    return _softmin.cpu(x, data, sigma, alpha, _log_weights(weights, dtype), dtype)


def _cuda(x, data, sigma, alpha, weights):
    return _softmin.cuda(x, data, sigma, alpha, _log_weights(weights, torch.float32))


# ====================================================================== autograd (with respect to x and sigma)

def _setup_context(ctx, inputs, output):
    x, data, sigma, alpha, weights = inputs
    denoised, log_z = output
    for name, t in (("data", data), ("alpha", alpha), ("weights", weights)):
        if t is not None and t.requires_grad:
            raise NotImplementedError(f"gencore.score data-set denoiser: no gradient with respect to {name}; "
                                      f"pass {name}.detach() (gradients flow to x and sigma)")
    ctx.save_for_backward(x, data, sigma, alpha, weights, denoised, log_z)


def _backward(ctx, grad_denoised, grad_log_z):
    # p_i = exp(l_i - log_z), l_i = log w_i - ||x - a y_i||^2 / (2 s^2):
    #   d log_z / dx = (a D - x) / s^2                 d log_z / ds = E_p[dist^2] / s^3
    #   g.dD/dx = (a / s^2) (E_p[(g.y) y] - (g.D) D)   g.dD/ds = (E_p[dist^2 (g.y)] - E_p[dist^2] (g.D)) / s^3
    # E_p[(g.y) y], E_p[dist^2], E_p[dist^2 (g.y)] stream over data tiles (two GEMMs a tile), never B x N.
    x, data, sigma, alpha, weights, denoised, log_z = ctx.saved_tensors
    dtype = denoised.dtype
    xs, y, s, a = x.to(dtype), data.to(dtype), sigma.to(dtype), alpha.to(dtype)
    g = grad_denoised.to(dtype) if grad_denoised is not None else torch.zeros_like(denoised)
    gz = grad_log_z.to(dtype) if grad_log_z is not None else torch.zeros_like(log_z)
    log_w = _log_weights(weights, dtype)
    var = s * s
    center = y.mean(0)                       # the forward pass's centring, so p sums to 1 with its log_z
    xc = xs - a[:, None] * center
    xc_sq = (xc * xc).sum(1)
    e_gy_y = torch.zeros_like(xs)
    e_dist = torch.zeros_like(s)
    e_dist_gy = torch.zeros_like(s)
    for start in range(0, y.shape[0], reference._DATA_TILE):
        tile = y[start:start + reference._DATA_TILE]
        tc = tile - center
        dist = (xc_sq[:, None] - 2 * a[:, None] * (xc @ tc.T) + (a * a)[:, None] * (tc * tc).sum(1)).clamp_min(0)
        logits = -dist / (2 * var[:, None]) + (0 if log_w is None else log_w[start:start + tile.shape[0]])
        p = torch.exp(logits - log_z[:, None])                             # [B, T]
        gy = g @ tile.T
        e_gy_y += (p * gy) @ tile
        e_dist += (p * dist).sum(1)
        e_dist_gy += (p * dist * gy).sum(1)
    g_dot_d = (g * denoised).sum(1)
    grad_x = (a / var)[:, None] * (e_gy_y - g_dot_d[:, None] * denoised) + gz[:, None] * (a[:, None] * denoised - xs) / var[:, None]
    grad_sigma = ((e_dist_gy - e_dist * g_dot_d) + gz * e_dist) / (var * s)
    return (grad_x.to(x.dtype) if ctx.needs_input_grad[0] else None, None,
            grad_sigma.to(sigma.dtype) if ctx.needs_input_grad[2] else None, None, None)


# ====================================================================== the op

def _samples(gen):
    def randn(*shape, dtype=torch.float32, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    def pos(n, low, high, dtype=torch.float32):
        return low + (high - low) * torch.rand(n, generator=gen, dtype=dtype)
    return [
        (randn(7, 3), randn(40, 3), pos(7, 0.3, 2.0), torch.ones(7), None),
        (randn(1, 1, dtype=torch.float64), randn(1, 1, dtype=torch.float64), pos(1, 0.5, 1.0, torch.float64),
         torch.ones(1, dtype=torch.float64), None),
        (randn(0, 4), randn(9, 4), pos(0, 1.0, 2.0), torch.ones(0), None),
        (randn(11, 17, dtype=torch.float64, scale=2.0), randn(300, 17, dtype=torch.float64),
         pos(11, 0.05, 5.0, torch.float64), pos(11, 0.2, 1.0, torch.float64), pos(300, 0.0, 3.0, torch.float64)),
        (randn(5, 6), randn(5000, 6), pos(5, 0.5, 3.0), pos(5, 0.5, 1.0), pos(5000, 0.1, 1.0)),
    ]


DATASET_DENOISE = Op(
    "score.dataset_denoise",
    "(Tensor x, Tensor data, Tensor sigma, Tensor alpha, Tensor? weights) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=_reference, cpu=_cpu, cuda=_cuda,
    finite=("x", "data", "sigma", "alpha", "weights"), cpu_kernel_checks=("x", "data"),
    check_values=_check_values, empty=lambda x, *rest: x.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)


# ====================================================================== public functions

def _denoise(x, data, sigma, weights, k, alpha) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, log_z) through the op, or through the k nearest points when k is given."""
    _checks.tensor(x, "x", ndim=2)
    s, a = per_query(sigma, "sigma", x), per_query(1.0 if alpha is None else alpha, "alpha", x)
    if k is None:
        return DATASET_DENOISE(x, data, s, a, weights)
    _check(x, data, s, a, weights)
    k = _checks.integer(k, "k", low=1, high=data.shape[0])
    return _topk_denoise(x, data, s, a, weights, k)


def _topk_denoise(x, data, sigma, alpha, weights, k):
    """The denoiser restricted to the k nearest data points of x / alpha (by distance, through
    gencore.ood.knn), with exact distances on those: memory B k d."""
    from ...ood import knn

    dtype = reference.compute_dtype(x.dtype)
    xs, s, a = x.to(dtype), sigma.to(dtype), alpha.to(dtype)
    _, idx = knn((xs / a[:, None]).detach(), data.detach().to(dtype), k, "sqeuclidean")   # [B, k]
    near = data.to(dtype)[idx]                                                               # [B, k, d]
    logits = -((xs[:, None, :] - a[:, None, None] * near) ** 2).sum(-1) / (2 * s * s)[:, None]
    if weights is not None:
        logits = logits + torch.log(weights.to(dtype))[idx]
    p = torch.softmax(logits, dim=1)
    return (p[:, :, None] * near).sum(1), torch.logsumexp(logits, dim=1)


SigmaLike = Union[float, torch.Tensor]


@_arrays.accepts_arrays
def dataset_denoiser(x: torch.Tensor, data: torch.Tensor, sigma: SigmaLike, weights: Optional[torch.Tensor] = None,
                     k: Optional[int] = None, *, alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """Exact denoiser of a finite data set: the posterior mean E[y | x] under the
    Gaussian-smoothed empirical distribution ("ideal denoiser", memorising its data).

        D(x) = sum_i softmax_i(log w_i - ||x - alpha y_i||^2 / (2 sigma^2)) y_i

    Args:
        x: [B, d] noisy queries, float (float32 fast path; float64 natively on
            the CPU; fp16/bf16 computed in float32), or a numpy / CuPy array.
        data: [N, d] the data set y, N >= 1, same dtype and device.
        sigma: noise level > 0: a float or a [B] tensor (one per query).
        weights: [N] >= 0, not all zero (default: all 1); normalised by their sum.
        k: keep only the k nearest data points of x / alpha (through
            ``gencore.ood.knn``; weights apply within them): faster at large N
            and small sigma, an approximation otherwise. Default: all N.
        alpha: signal scale of the VP convention x = alpha y + sigma n (default 1:
            the VE / EDM convention x = y + sigma n); float or [B] tensor > 0.

    Returns:
        [B, d], float64 for float64 input, else float32.

    Computation: flash-attention style, an online log-sum-exp over tiles of the
    data: per tile one GEMM for x.y, a fused exp epilogue, one GEMM for the
    weighted sum, so memory is O(B (tile + d)), never B x N. Distances are
    taken around the data mean (exact in exact arithmetic; in float32 the
    logits carry an error ~ eps (||x'||^2 + ||y'||^2) / sigma^2 with x', y'
    centred, as in every GEMM-based distance: at tiny sigma the result is still
    the nearest point, within float32 rounding).

    Gradients: to x and sigma (streamed: three GEMMs a tile); data, weights
    and alpha must not require grad. NaN/inf in x or data raise ValueError on
    the CPU; sigma, alpha and weights are checked there too (see
    ``gencore.set_check_finite`` for CUDA).
    """
    return _denoise(x, data, sigma, weights, k, alpha)[0]


@_arrays.accepts_arrays
def dataset_score(x: torch.Tensor, data: torch.Tensor, sigma: SigmaLike, weights: Optional[torch.Tensor] = None,
                  k: Optional[int] = None, *, alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """Score grad_x log p(x) of the smoothed data set, [B, d]: (alpha D(x) - x) / sigma^2
    (Tweedie's formula), with D = ``dataset_denoiser`` (same arguments)."""
    denoised = _denoise(x, data, sigma, weights, k, alpha)[0]
    s = per_query(sigma, "sigma", x)
    a = per_query(1.0 if alpha is None else alpha, "alpha", x)
    return (a[:, None] * denoised - x.to(denoised.dtype)) / (s * s)[:, None]


@_arrays.accepts_arrays
def dataset_log_density(x: torch.Tensor, data: torch.Tensor, sigma: SigmaLike,
                        weights: Optional[torch.Tensor] = None, k: Optional[int] = None, *,
                        alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """log p(x) of the smoothed data set, [B]:

        log p(x) = logsumexp_i (log w_i - ||x - alpha y_i||^2 / (2 sigma^2))
                   - log sum_i w_i - (d / 2) log(2 pi sigma^2)

    (the log-density of sum_i w_i N(alpha y_i, sigma^2 I) / sum_i w_i); same
    arguments and computation as ``dataset_denoiser``, which it comes with for free."""
    log_z = _denoise(x, data, sigma, weights, k, alpha)[1]
    s = per_query(sigma, "sigma", x)
    return log_z - reference.log_normaliser(weights, data.shape[0], x.shape[1], s, log_z.dtype)
