"""score: the exact score of a Gaussian mixture, one definition (gencore._op.Op) and the public functions.

gencore::score_gmm(x [B, d], means [K, d], log_weights [K], eigvals [K, d],
eigvecs [K, d, d]?, sigma [B], alpha [B]) -> (log_prob [B], score [B, d]).
Isotropic [K] and diagonal [K, d] variances reach the op as eigenvalues with
no eigenvectors; full covariances [K, d, d] as their eigendecomposition (one
``torch.linalg.eigh`` per call, which also refuses non-symmetric or non-PSD
input). See gencore.score.reference for the math.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ... import _arrays, _checks, _native, _native_call
from ..._op import Op, checks_values_of
from .. import reference
from ._dataset import per_query

_PSD_TOLERANCE = 1e-6  # eigenvalues above -tol * max |eigenvalue| count as 0, below it the matrix is not PSD


def _check(x, means, log_weights, eigvals, eigvecs, sigma, alpha):
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(means, "means", ndim=2)
    _checks.tensor(log_weights, "log_weights (of weights)", ndim=1)
    _checks.tensor(eigvals, "eigvals (of variances)", ndim=2)
    _checks.tensor(sigma, "sigma", ndim=1)
    _checks.tensor(alpha, "alpha", ndim=1)
    named = {"x": x, "means": means, "log_weights": log_weights, "eigvals": eigvals, "sigma": sigma, "alpha": alpha}
    if eigvecs is not None:
        _checks.tensor(eigvecs, "eigvecs (of variances)", ndim=3)
        named["eigvecs"] = eigvecs
    _checks.same_device(**named)
    k, d = means.shape
    if k == 0:
        raise ValueError("means is empty (shape [0, d]); a mixture needs at least one component")
    if d == 0:
        raise ValueError("means have dimension d = 0")
    _checks.same_size("dimension", **{"x.shape[1]": x.shape[1], "means.shape[1]": d})
    _checks.same_size("components", **{"means.shape[0]": k, "log_weights.shape[0]": log_weights.shape[0]})
    if eigvals.shape[0] != k or eigvals.shape[1] != d:
        raise ValueError(f"eigvals (of variances) must be [K, d] = [{k}, {d}], got {tuple(eigvals.shape)}")
    if eigvecs is not None and (eigvecs.shape[0] != k or eigvecs.shape[1] != d or eigvecs.shape[2] != d):
        raise ValueError(f"eigvecs (of variances) must be [K, d, d] = [{k}, {d}, {d}], got {tuple(eigvecs.shape)}")
    _checks.same_size("queries", **{"x.shape[0]": x.shape[0], "sigma.shape[0]": sigma.shape[0],
                                    "alpha.shape[0]": alpha.shape[0]})
    return x, means, log_weights, eigvals, eigvecs, sigma, alpha


def _check_values(backend, x, means, log_weights, eigvals, eigvecs, sigma, alpha):
    for name, t in (("sigma", sigma), ("alpha", alpha)):
        if t.numel() and not bool((t > 0).all()):
            raise ValueError(f"{name} must be > 0, got a minimum of {float(t.min())}")
    if bool((eigvals < 0).any()):
        raise ValueError(f"eigvals (of variances) must be >= 0: covariances must be positive semi-definite, "
                         f"got an eigenvalue {float(eigvals.min()):.3g}")


def _fake(x, means, log_weights, eigvals, eigvecs, sigma, alpha):
    dtype = reference.compute_dtype(x.dtype)
    return x.new_empty((x.shape[0],), dtype=dtype), x.new_empty(x.shape, dtype=dtype)


def _cpu(x, means, log_weights, eigvals, eigvecs, sigma, alpha):
    dtype = reference.compute_dtype(x.dtype)
    k, d = means.shape
    log_prob, log_prob_array = _native_call.cpu_output((x.shape[0],), dtype)
    score, score_array = _native_call.cpu_output(x.shape, dtype)
    vecs = None if eigvecs is None else _native_call.cpu_array(eigvecs.reshape(k * d, d), dtype)
    _native.core.gmm_score(*(_native_call.cpu_array(t, dtype) for t in (x, means, log_weights, eigvals)), vecs,
                           _native_call.cpu_array(sigma, dtype), _native_call.cpu_array(alpha, dtype),
                           log_prob_array, score_array, _native_call.threads())
    return log_prob, score


_CUDA_TILE_FLOATS = 1 << 24  # full covariances on CUDA: floats of the rotated tile [B, C, d] (64 MiB)


def _cuda(x, means, log_weights, eigvals, eigvecs, sigma, alpha):
    xs, mu, lw, lam = (_native_call.cuda_input(t) for t in (x, means, log_weights, eigvals))
    s, a = _native_call.cuda_input(sigma), _native_call.cuda_input(alpha)
    b, (k, d) = xs.shape[0], mu.shape
    stream, device = _native_call.cuda_stream(xs.device), _native_call.device_index(xs.device)
    if eigvecs is None:  # iso / diagonal: one fused kernel
        log_prob = _native_call.output((b,), torch.float32, xs.device)
        score = _native_call.output(xs.shape, torch.float32, xs.device)
        _native.cuda.gmm_score(xs.data_ptr(), b, d, mu.data_ptr(), k, lw.data_ptr(), lam.data_ptr(), s.data_ptr(),
                               a.data_ptr(), log_prob.data_ptr(), score.data_ptr(), stream, device)
        return log_prob, score
    # Full covariances: the rotations are GEMMs, so torch (cuBLAS, caller's stream) does them,
    # C components at a time: zx = x' [U_k0 | U_k0+1 | ...] [B, C d]; one gencore kernel turns
    # zx into -p_k (z_k / c_k), still rotated, and advances the online log-sum-exp; one GEMM
    # rotates back and sums over the tile into acc. Memory O(B d C). Queries and means are
    # centred on the mean of the means (z = U^T ((x - a m) - a (mu - m)) exactly), so x U and
    # a U^T mu do not cancel in float32 for a mixture far from the origin.
    u = _native_call.cuda_input(eigvecs)                               # [K, d, d], columns U_k
    center = mu.mean(0)
    xc = xs - a[:, None] * center                                      # [B, d]
    u_cat = u.permute(1, 0, 2).reshape(d, k * d)                       # [d, K d] = [U_0 | U_1 | ...]
    mu_rot = torch.bmm((mu - center)[:, None, :], u)[:, 0, :].contiguous()   # [K, d]: rows (mu_k - m) U_k
    c = max(1, min(k, _CUDA_TILE_FLOATS // max(1, b * d)))  # components a tile
    running_max = torch.full((b,), -math.inf, device=xs.device)
    total = torch.zeros(b, device=xs.device)
    rescale = torch.empty(b, device=xs.device)
    acc = torch.zeros_like(xs)
    workspace = _native_call.cuda_workspace(_native.cuda.gmm_score_tile_workspace_bytes(b, c), xs.device)
    for start in range(0, k, c):
        n = min(c, k - start)
        u_tile = u_cat[:, start * d:(start + n) * d]                   # [d, n d]
        zx = xc @ u_tile                                                # [B, n, d] as [B, n d]
        _native.cuda.gmm_score_tile(zx.data_ptr(), b, n, d, mu_rot[start].data_ptr(), lw[start].data_ptr(),
                                    lam[start].data_ptr(), s.data_ptr(), a.data_ptr(), running_max.data_ptr(),
                                    total.data_ptr(), rescale.data_ptr(), workspace.data_ptr(), workspace.numel(),
                                    stream, device)
        acc.mul_(rescale[:, None]).addmm_(zx, u_tile.T)
    return running_max + torch.log(total), acc / total[:, None]


def _setup_context(ctx, inputs, output):
    x, means, log_weights, eigvals, eigvecs, sigma, alpha = inputs
    for name, t in (("means", means), ("weights", log_weights), ("variances", eigvals), ("variances", eigvecs),
                    ("sigma", sigma), ("alpha", alpha)):
        if t is not None and t.requires_grad:
            raise NotImplementedError(f"gencore.score mixture: no gradient with respect to {name}; pass it "
                                      "detached (gradients flow to x)")
    ctx.save_for_backward(*inputs[:-2], sigma, alpha, output[1])


def _backward(ctx, grad_log_prob, grad_score):
    # d log p / dx = score s. The score's Jacobian is the Hessian of log p:
    #   H = sum_k r_k (s_k s_k^T - C_k^-1) - s s^T,  s_k = -C_k^-1 (x - alpha mu_k),
    # so g^T H = sum_k r_k ((g.s_k) s_k - C_k^-1 g) - (g.s) s: one more pass over the
    # components (online, O(B d) memory), recomputing r_k with the forward log p.
    x, means, log_weights, eigvals, eigvecs, sigma, alpha, score = ctx.saved_tensors
    dtype = score.dtype
    xs, mu, lam, lw = x.to(dtype), means.to(dtype), eigvals.to(dtype), log_weights.to(dtype)
    s, a = sigma.to(dtype), alpha.to(dtype)
    g = grad_score.to(dtype) if grad_score is not None else torch.zeros_like(score)
    grad = torch.zeros_like(xs) if grad_log_prob is None else grad_log_prob.to(dtype)[:, None] * score
    if grad_score is not None:
        log_p = reference.gmm(xs, mu, lw, lam, eigvecs, s, a)[0]
        acc = torch.zeros_like(xs)
        for k in range(mu.shape[0]):
            u = None if eigvecs is None else eigvecs[k].to(dtype)
            diff = xs - a[:, None] * mu[k]
            var = (a * a)[:, None] * lam[k] + (s * s)[:, None]
            z = diff if u is None else diff @ u
            w = z / var
            log_n = -0.5 * ((z * w).sum(1) + torch.log(var).sum(1) + xs.shape[1] * torch.log(
                torch.tensor(2 * torch.pi, dtype=dtype))) + lw[k]
            r = torch.exp(log_n - log_p)                                    # [B]
            s_k = -(w if u is None else w @ u.T)                            # [B, d]
            g_rot = g if u is None else g @ u
            c_inv_g = g_rot / var if u is None else (g_rot / var) @ u.T
            acc += r[:, None] * ((g * s_k).sum(1, keepdim=True) * s_k - c_inv_g)
        grad = grad + acc - (g * score).sum(1, keepdim=True) * score
    return (grad.to(x.dtype), None, None, None, None, None, None)


def _samples(gen):
    def randn(*shape, dtype=torch.float32, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    def pos(*shape, low=0.2, high=2.0, dtype=torch.float32):
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=dtype)

    def full(k, d, dtype):
        vecs = torch.linalg.qr(randn(k, d, d, dtype=torch.float64))[0].to(dtype)
        return pos(k, d, dtype=dtype), vecs

    out = []
    for b, k, d, dtype, kind in [(9, 3, 2, torch.float32, "iso"), (1, 1, 1, torch.float64, "diag"),
                                 (0, 2, 3, torch.float32, "diag"), (13, 4, 7, torch.float64, "full"),
                                 (40, 5, 16, torch.float32, "full")]:
        lw = torch.log_softmax(randn(k, dtype=dtype), 0)
        if kind == "full":
            lam, vecs = full(k, d, dtype)
        else:
            lam, vecs = (pos(k, 1, dtype=dtype).expand(k, d).contiguous() if kind == "iso" else pos(k, d, dtype=dtype)), None
        out.append((randn(b, d, dtype=dtype, scale=2.0), randn(k, d, dtype=dtype, scale=2.0), lw, lam, vecs,
                    pos(b, low=0.05, high=3.0, dtype=dtype), pos(b, low=0.3, high=1.0, dtype=dtype)))
    return out


GMM = Op(
    "score.gmm",
    "(Tensor x, Tensor means, Tensor log_weights, Tensor eigvals, Tensor? eigvecs, Tensor sigma, Tensor alpha) "
    "-> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.gmm, cpu=_cpu, cuda=_cuda,
    finite=("x", "means", "log_weights", "eigvals", "eigvecs", "sigma", "alpha"), cpu_kernel_checks=("x",),
    check_values=_check_values, empty=lambda x, *rest: x.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)


# ====================================================================== public functions

def _mixture(x, means, weights, variances):
    """(log_weights [K], eigvals [K, d], eigvecs [K, d, d] or None) of the public arguments."""
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(means, "means", ndim=2)
    _checks.tensor(weights, "weights", ndim=1)
    _checks.tensor(variances, "variances")
    _checks.same_dtype("x", x, means=means, weights=weights, variances=variances)
    dtype = reference.compute_dtype(x.dtype)
    k, d = means.shape
    if variances.dim() == 1:          # isotropic
        _checks.same_size("components", **{"means.shape[0]": k, "variances.shape[0]": variances.shape[0]})
        eigvals, eigvecs = variances.to(dtype)[:, None].expand(k, d).contiguous(), None
    elif variances.dim() == 2:        # diagonal
        eigvals, eigvecs = variances.to(dtype), None
    elif variances.dim() == 3:        # full
        if variances.shape[1:] != (d, d) or variances.shape[0] != k:
            raise ValueError(f"full covariances must be [K, d, d] = [{k}, {d}, {d}], got {tuple(variances.shape)}")
        cov = variances.to(dtype)
        if checks_values_of(cov) and cov.numel() and not bool(
                torch.allclose(cov, cov.transpose(1, 2), rtol=1e-5, atol=1e-8 * float(cov.abs().max()))):
            raise ValueError("variances: full covariances must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(cov)
        if eigvals.numel():
            floor = _PSD_TOLERANCE * eigvals.abs().amax(1, keepdim=True)
            eigvals = torch.where(eigvals.abs() <= floor, torch.zeros_like(eigvals), eigvals)
    else:
        raise ValueError(f"variances must be [K] (isotropic), [K, d] (diagonal) or [K, d, d] (full), "
                         f"got shape {tuple(variances.shape)}")
    w = weights.to(dtype)
    if checks_values_of(w) and w.numel():
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite and >= 0")
        if not bool((w > 0).any()):
            raise ValueError("weights are all zero: the mixture has no mass")
    # A component of weight 0 gets the most negative finite log weight rather than -inf,
    # so it contributes exactly 0 and stays within the ops' finiteness contract.
    lowest = torch.full_like(w, torch.finfo(w.dtype).min)
    log_weights = torch.where(w > 0, torch.log(torch.where(w > 0, w, torch.ones_like(w))) - torch.log(w.sum()), lowest)
    return log_weights, eigvals, eigvecs


def _log_prob_and_score(x, means, weights, variances, sigma, alpha):
    log_weights, eigvals, eigvecs = _mixture(x, means, weights, variances)
    s, a = per_query(sigma, "sigma", x), per_query(1.0 if alpha is None else alpha, "alpha", x)
    return GMM(x, means, log_weights, eigvals, eigvecs, s, a), s, a


SigmaLike = Union[float, torch.Tensor]

_GMM_ARGS = """
    Args:
        x: [B, d] queries (float32 fast path; float64 natively on the CPU), or a
            numpy / CuPy array.
        means: [K, d] component means mu_k, K >= 1.
        weights: [K] mixture weights >= 0, not all zero (normalised by their sum).
        variances: the component covariances Sigma_k: [K] isotropic (Sigma_k =
            v_k I), [K, d] diagonal, or [K, d, d] full (symmetric positive
            semi-definite; decomposed once per call with ``torch.linalg.eigh``).
        sigma: noise level > 0, a float or a [B] tensor; sigma = 0 is not allowed
            (pass a small sigma for the clean mixture).
        alpha: signal scale of the VP convention x = alpha y + sigma n (default 1).

    The smoothed mixture is x | k ~ N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I);
    responsibilities are computed in the log domain (online log-sum-exp over
    components), so no component underflows to a zero total. Memory O(B d).
    Gradients flow to x (the score's is the Hessian-vector product)."""


@_arrays.accepts_arrays
def gmm_log_prob(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, variances: torch.Tensor,
                 sigma: SigmaLike, *, alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """log p(x) of a Gaussian mixture smoothed at noise level sigma, [B]:
    logsumexp_k (log pi_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)).
    """
    return _log_prob_and_score(x, means, weights, variances, sigma, alpha)[0][0]


@_arrays.accepts_arrays
def gmm_score(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, variances: torch.Tensor,
              sigma: SigmaLike, *, alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """grad_x log p(x) of the smoothed mixture, [B, d]:
    -sum_k r_k(x) (alpha^2 Sigma_k + sigma^2 I)^-1 (x - alpha mu_k).
    """
    return _log_prob_and_score(x, means, weights, variances, sigma, alpha)[0][1]


@_arrays.accepts_arrays
def gmm_denoiser(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, variances: torch.Tensor,
                 sigma: SigmaLike, *, alpha: Optional[SigmaLike] = None) -> torch.Tensor:
    """E[y | x] of the mixture, [B, d]: (x + sigma^2 score(x)) / alpha (Tweedie).
    """
    (_, score), s, a = _log_prob_and_score(x, means, weights, variances, sigma, alpha)
    return (x.to(score.dtype) + (s * s)[:, None] * score) / a[:, None]


for _fn in (gmm_log_prob, gmm_score, gmm_denoiser):
    _fn.__doc__ = _fn.__doc__.rstrip() + "\n" + _GMM_ARGS + "\n"
