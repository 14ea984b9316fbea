"""ot: the Sinkhorn softmin, one definition (gencore._op.Op).

gencore::ot_sinkhorn_softmin(x [N, d], y [M, d], log_weights [M], eps, p, gradient)
    -> (f [N], df/dx [N, d] or [N, 0])

    f_i       = -eps log sum_j exp(h_j - C_ij / eps),   C_ij = |x_i - y_j|^2 / 2 (p = 2) or |x_i - y_j| (p = 1)
    df_i/dx_i = x_i - sum_j P_ij y_j (p = 2),  sum_j P_ij (x_i - y_j) / |x_i - y_j| (p = 1)   (when gradient)

with P_ij = softmax_j(h_j - C_ij / eps): one half-step of log-domain Sinkhorn
(h = log b + g / eps) and the derivative its envelope gradient needs; see
gencore.ot.reference. The native kernels are the score family's streaming
data-set softmin (gencore._softmin) with alpha = 1 and, for p = 2, its squared
cost at sigma^2 = eps (df/dx from the second GEMM's barycentre T); for p = 1
its euclidean cost at sigma = eps, and for df/dx a second pass with the
euclidean_inverse cost, whose weights are P_ij eps / |x_i - y_j|: its log-sum
and mean D give sum_j P_ij / |x_i - y_j| = exp(log_z' - log_z) / eps and
df/dx = that (x - D). On the CPU one GEMM tile + a SIMD epilogue (+ a second
GEMM only for df/dx), on CUDA cuBLAS tiles around one fused epilogue kernel.
Memory O(N tile), never N x M.
"""
from __future__ import annotations

import math

import torch

from ... import _checks, _softmin
from ..._op import Op
from .. import reference


def _check(x, y, log_weights, eps, p, gradient):
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(y, "y", ndim=2)
    _checks.tensor(log_weights, "log_weights", ndim=1)
    _checks.same_device(x=x, y=y, log_weights=log_weights)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "y.shape[1]": y.shape[1]})
    _checks.same_size("points of y", **{"y.shape[0]": y.shape[0], "log_weights.shape[0]": log_weights.shape[0]})
    if y.shape[0] == 0:
        raise ValueError("y is empty (shape [0, d]); the softmin needs at least one point")
    if x.shape[1] == 0:
        raise ValueError("x and y have dimension d = 0")
    eps = _checks.real(eps, "eps", positive=True)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    p = _checks.integer(p, "p")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 (cost |x - y|) or 2 (cost |x - y|^2 / 2), got {p}")
    if not isinstance(gradient, bool):
        raise TypeError(f"gradient must be a bool, got {type(gradient).__name__}")
    return x, y, log_weights, eps, p, gradient


def _check_values(backend, x, y, log_weights, eps, p, gradient):
    # -inf is a weight of 0; NaN and +inf have no meaning as log-weights.
    if bool((torch.isnan(log_weights) | (log_weights == math.inf)).any()):
        raise ValueError("log_weights contains NaN or +inf (only -inf, a weight of 0, is allowed)")
    if not bool((log_weights > -math.inf).any()):
        raise ValueError("log_weights are all -inf: y has no mass")


def _fake(x, y, log_weights, eps, p, gradient):
    dtype = reference.compute_dtype(x.dtype)
    n, d = x.shape
    return x.new_empty((n,), dtype=dtype), x.new_empty((n, d if gradient else 0), dtype=dtype)


def _stream_scales(x, eps, p, dtype):
    """(sigma, alpha) [N] of gencore._softmin for the cost of exponent p at this eps."""
    n = x.shape[0]
    sigma = torch.full((n,), math.sqrt(eps) if p == 2 else eps, dtype=dtype, device=x.device)
    return sigma, torch.ones(n, dtype=dtype, device=x.device)


def _softmin_by(stream, x, eps, p, gradient, dtype):
    """(f, df/dx) from ``stream(sigma, alpha, cost, with_denoised) -> (D or None, log_z)``, the
    CPU or CUDA glue of gencore._softmin on this call's x, y and log-weights."""
    n = x.shape[0]
    sigma, alpha = _stream_scales(x, eps, p, dtype)
    points = x.to(dtype)
    if p == 2:
        barycentre, log_z = stream(sigma, alpha, _softmin.SQUARED, gradient)
        grad = points - barycentre if gradient else None
    else:
        _, log_z = stream(sigma, alpha, _softmin.EUCLIDEAN, False)
        grad = None
        if gradient:
            mean, log_z_inverse = stream(sigma, alpha, _softmin.EUCLIDEAN_INVERSE, True)
            weight = (torch.exp(log_z_inverse - log_z) / eps)[:, None]   # sum_j P_ij / |x_i - y_j|
            # weight 0: every y_j with mass equals x_i (the mean is 0 / 0): a zero subgradient
            grad = torch.where(weight > 0, weight * (points - mean), torch.zeros_like(points))
    return log_z.mul_(-eps), grad if gradient else x.new_empty((n, 0), dtype=dtype)


def _cpu_stream(x, y, log_weights):
    """(stream, dtype) for ``_softmin_by`` / ``_projection_by``: the CPU glue on this call's data."""
    dtype = reference.compute_dtype(x.dtype)
    return (lambda sigma, alpha, cost, with_denoised: _softmin.cpu(
        x, y, sigma, alpha, log_weights, dtype, with_denoised=with_denoised, cost=cost)), dtype


def _cuda_stream(x, y, log_weights):
    """The same on CUDA (float32)."""
    return (lambda sigma, alpha, cost, with_denoised: _softmin.cuda(
        x, y, sigma, alpha, log_weights, with_denoised=with_denoised, cost=cost)), torch.float32


def _cpu(x, y, log_weights, eps, p, gradient):
    stream, dtype = _cpu_stream(x, y, log_weights)
    return _softmin_by(stream, x, eps, p, gradient, dtype)


def _cuda(x, y, log_weights, eps, p, gradient):
    stream, dtype = _cuda_stream(x, y, log_weights)
    return _softmin_by(stream, x, eps, p, gradient, dtype)


def _samples(gen):
    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def log_w(m, dtype=torch.float32, zeros=0):
        h = torch.randn(m, generator=gen, dtype=dtype)
        h[:zeros] = -math.inf
        return h
    return [
        (rand(7, 3), rand(40, 3), log_w(40), 0.05, 2, True),
        (rand(1, 1, dtype=torch.float64), rand(1, 1, dtype=torch.float64), log_w(1, torch.float64), 1.0, 2, True),
        (rand(0, 4), rand(9, 4), log_w(9), 0.1, 2, False),
        (rand(13, 17, dtype=torch.float64), rand(300, 17, dtype=torch.float64), log_w(300, torch.float64, 30),
         0.3, 2, False),
        (rand(5, 6), rand(3000, 6), log_w(3000, zeros=2100), 0.01, 2, True),
        (rand(300, 2), rand(5, 2), log_w(5), 2.0, 2, False),
        (rand(9, 3), rand(50, 3), log_w(50), 0.05, 1, True),
        (rand(0, 2), rand(4, 2), log_w(4), 0.1, 1, True),
        (rand(11, 5, dtype=torch.float64), rand(700, 5, dtype=torch.float64), log_w(700, torch.float64, 70),
         0.2, 1, True),
        (rand(260, 4), rand(33, 4), log_w(33), 0.5, 1, False),
    ]


SINKHORN_SOFTMIN = Op(
    "ot.sinkhorn_softmin",
    "(Tensor x, Tensor y, Tensor log_weights, float eps, int p, bool gradient) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.sinkhorn_softmin, cpu=_cpu, cuda=_cuda,
    finite=("x", "y"), cpu_kernel_checks=("x",), check_values=_check_values,
    empty=lambda x, *rest: x.shape[0] == 0, samples=_samples,
)


# ---------------------------------------------------------------------------------- T(x)
# gencore::ot_barycentric_projection(x [N, d], y [M, d], log_weights [M], eps, p) -> T [N, d]
#     T(x_i) = sum_j P_ij y_j,  P_ij = softmax_j(h_j - C_ij / eps)
# the same streamed pass as the softmin with the data-set kernel's weighted mean D as the
# output (the denoiser's D, under the squared or the euclidean logits): with h = log b + g / eps
# the entropic plan's conditional mean of y given x_i, for any x; never N x M.

def _check_projection(x, y, log_weights, eps, p):
    return _check(x, y, log_weights, eps, p, False)[:5]


def _check_projection_values(backend, x, y, log_weights, eps, p):
    _check_values(backend, x, y, log_weights, eps, p, False)


def _fake_projection(x, y, log_weights, eps, p):
    return x.new_empty(tuple(x.shape), dtype=reference.compute_dtype(x.dtype))


def _projection_by(stream, x, eps, p, dtype):
    sigma, alpha = _stream_scales(x, eps, p, dtype)
    barycentre, _ = stream(sigma, alpha, _softmin.SQUARED if p == 2 else _softmin.EUCLIDEAN, True)
    return barycentre


def _projection_cpu(x, y, log_weights, eps, p):
    stream, dtype = _cpu_stream(x, y, log_weights)
    return _projection_by(stream, x, eps, p, dtype)


def _projection_cuda(x, y, log_weights, eps, p):
    stream, dtype = _cuda_stream(x, y, log_weights)
    return _projection_by(stream, x, eps, p, dtype)


BARYCENTRIC_PROJECTION = Op(
    "ot.barycentric_projection",
    "(Tensor x, Tensor y, Tensor log_weights, float eps, int p) -> Tensor",
    check=_check_projection, fake=_fake_projection, reference=reference.barycentric_projection,
    cpu=_projection_cpu, cuda=_projection_cuda, finite=("x", "y"), cpu_kernel_checks=("x",),
    check_values=_check_projection_values, empty=lambda x, *rest: x.shape[0] == 0,
    samples=lambda gen: [sample[:5] for sample in _samples(gen)],
)
