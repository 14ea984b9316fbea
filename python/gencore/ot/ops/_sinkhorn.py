"""ot: the Sinkhorn softmin, one definition (gencore._op.Op).

gencore::ot_sinkhorn_softmin(x [N, d], y [M, d], log_weights [M], eps, barycentre)
    -> (f [N], T [N, d] or [N, 0])

    f_i    = -eps log sum_j exp(h_j - |x_i - y_j|^2 / (2 eps))
    T(x_i) = sum_j softmax_j(h_j - |x_i - y_j|^2 / (2 eps)) y_j     (when barycentre)

One half-step of log-domain Sinkhorn for the cost |x - y|^2 / 2 (h = log b +
g / eps), and the barycentric projection its envelope gradient needs; see
gencore.ot.reference. The native kernels are the score family's streaming
data-set softmin (gencore._softmin) with sigma^2 = eps, alpha = 1: on the CPU
one GEMM tile + a SIMD exp epilogue (+ a second GEMM only for T), on CUDA
cuBLAS tiles around one fused epilogue kernel. Memory O(N tile), never N x M.
"""
from __future__ import annotations

import math

import torch

from ... import _checks, _softmin
from ..._op import Op
from .. import reference


def _check(x, y, log_weights, eps, barycentre):
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
    if not isinstance(barycentre, bool):
        raise TypeError(f"barycentre must be a bool, got {type(barycentre).__name__}")
    return x, y, log_weights, eps, barycentre


def _check_values(backend, x, y, log_weights, eps, barycentre):
    # -inf is a weight of 0; NaN and +inf have no meaning as log-weights.
    if bool((torch.isnan(log_weights) | (log_weights == math.inf)).any()):
        raise ValueError("log_weights contains NaN or +inf (only -inf, a weight of 0, is allowed)")
    if not bool((log_weights > -math.inf).any()):
        raise ValueError("log_weights are all -inf: y has no mass")


def _fake(x, y, log_weights, eps, barycentre):
    dtype = reference.compute_dtype(x.dtype)
    n, d = x.shape
    return x.new_empty((n,), dtype=dtype), x.new_empty((n, d if barycentre else 0), dtype=dtype)


def _per_point(x: torch.Tensor, eps: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma = sqrt(eps) and alpha = 1 as the [N] tensors the data-set kernel takes."""
    n = x.shape[0]
    return (torch.full((n,), math.sqrt(eps), dtype=dtype, device=x.device),
            torch.ones(n, dtype=dtype, device=x.device))


def _from_log_z(x, eps, denoised, log_z, barycentre, dtype):
    f = log_z.mul_(-eps)
    return f, denoised if barycentre else x.new_empty((x.shape[0], 0), dtype=dtype)


def _cpu(x, y, log_weights, eps, barycentre):
    dtype = reference.compute_dtype(x.dtype)
    sigma, alpha = _per_point(x, eps, dtype)
    denoised, log_z = _softmin.cpu(x, y, sigma, alpha, log_weights, dtype, with_denoised=barycentre)
    return _from_log_z(x, eps, denoised, log_z, barycentre, dtype)


def _cuda(x, y, log_weights, eps, barycentre):
    sigma, alpha = _per_point(x, eps, torch.float32)
    denoised, log_z = _softmin.cuda(x, y, sigma, alpha, log_weights, with_denoised=barycentre)
    return _from_log_z(x, eps, denoised, log_z, barycentre, torch.float32)


def _samples(gen):
    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def log_w(m, dtype=torch.float32, zeros=0):
        h = torch.randn(m, generator=gen, dtype=dtype)
        h[:zeros] = -math.inf
        return h
    return [
        (rand(7, 3), rand(40, 3), log_w(40), 0.05, True),
        (rand(1, 1, dtype=torch.float64), rand(1, 1, dtype=torch.float64), log_w(1, torch.float64), 1.0, True),
        (rand(0, 4), rand(9, 4), log_w(9), 0.1, False),
        (rand(13, 17, dtype=torch.float64), rand(300, 17, dtype=torch.float64), log_w(300, torch.float64, 30),
         0.3, False),
        (rand(5, 6), rand(3000, 6), log_w(3000, zeros=2100), 0.01, True),
        (rand(300, 2), rand(5, 2), log_w(5), 2.0, False),
    ]


SINKHORN_SOFTMIN = Op(
    "ot.sinkhorn_softmin",
    "(Tensor x, Tensor y, Tensor log_weights, float eps, bool barycentre) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.sinkhorn_softmin, cpu=_cpu, cuda=_cuda,
    finite=("x", "y"), cpu_kernel_checks=("x",), check_values=_check_values,
    empty=lambda x, *rest: x.shape[0] == 0, samples=_samples,
)
