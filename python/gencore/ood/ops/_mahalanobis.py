"""ood Mahalanobis ops: one definition (gencore._op.Op) and the public functions."""

from __future__ import annotations

import torch

from ... import _arrays, _checks, _native, _native_call
from ..._op import Op
from .. import reference

_REDUCE_CODES = {"none": 0, "min": 1}
_CUDA_SLAB_ELEMENTS = 1 << 24  # whitened queries per CUDA slab: slab * (D + R) floats (64 MiB)


def _check(features, means, precision_factor, reduce):
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(means, "means", ndim=2)
    _checks.tensor(precision_factor, "precision_factor", ndim=2)
    _checks.same_device(features=features, means=means, precision_factor=precision_factor)
    _checks.choice(reduce, "reduce", reference.MAHALANOBIS_REDUCTIONS)
    _checks.same_dtype("features", features, means=means, precision_factor=precision_factor)
    _checks.same_size("feature dimension", **{"features.shape[1]": features.shape[1],
                                              "means.shape[1]": means.shape[1],
                                              "precision_factor.shape[0]": precision_factor.shape[0]})
    if features.shape[1] == 0:
        raise ValueError("features, means and precision_factor have feature dimension 0")
    if means.shape[0] == 0:
        raise ValueError("means is empty (shape [0, D]); Mahalanobis scores need at least one class")
    if precision_factor.shape[1] == 0:
        raise ValueError("precision_factor has no columns (shape [D, 0]); its rank R must be >= 1")
    return features, means, precision_factor, reduce


def _shapes(features, means, reduce):
    """(distances, nearest) shapes: [Q, C] or [Q], and [Q]."""
    q, c = features.shape[0], means.shape[0]
    return ((q, c) if reduce == "none" else (q,)), (q,)


def _fake(features, means, precision_factor, reduce):
    out_shape, nearest_shape = _shapes(features, means, reduce)
    return (features.new_empty(out_shape, dtype=reference.compute_dtype(features.dtype)),
            features.new_empty(nearest_shape, dtype=torch.int64))


def _cpu(features, means, precision_factor, reduce):
    dtype = reference.compute_dtype(features.dtype)
    out_shape, nearest_shape = _shapes(features, means, reduce)
    q = features.shape[0]
    out, out_array = _native_call.cpu_output(out_shape, dtype, (q, means.shape[0] if reduce == "none" else 1))
    nearest, nearest_array = _native_call.cpu_output(nearest_shape, torch.int64, (q, 1))
    _native.core.mahalanobis(*(_native_call.cpu_array(t, dtype) for t in (features, means, precision_factor)),
                             _REDUCE_CODES[reduce], out_array, nearest_array, _native_call.threads())
    return out, nearest


def _cuda(features, means, precision_factor, reduce):
    # z = (x - mu_bar) L by torch (cuBLAS, the caller's stream and matmul precision
    # settings), one slab of queries at a time so memory stays bounded; the
    # distance tile, clamp, argmin and min run in gencore's kernel.
    x, mu, factor = (_native_call.cuda_input(t) for t in (features, means, precision_factor))
    out_shape, nearest_shape = _shapes(x, mu, reduce)
    out = _native_call.output(out_shape, torch.float32, x.device)
    nearest = _native_call.output(nearest_shape, torch.int64, x.device)
    q, c, r = x.shape[0], mu.shape[0], factor.shape[1]
    center = mu.mean(0)
    mt = ((mu - center) @ factor).contiguous()                 # [C, R]
    stream, device = _native_call.cuda_stream(x.device), _native_call.device_index(x.device)
    slab = max(1, _CUDA_SLAB_ELEMENTS // (x.shape[1] + r))
    code = _REDUCE_CODES[reduce]
    # one workspace, sized for the largest slab, serves every call
    workspace = _native_call.cuda_workspace(_native.cuda.mahalanobis_workspace_bytes(min(q, slab), c, r, code),
                                            x.device)
    for q0 in range(0, q, slab):
        z = ((x[q0:q0 + slab] - center) @ factor).contiguous()  # [slab, R]
        _native.cuda.mahalanobis(z.data_ptr(), mt.data_ptr(), z.shape[0], c, r, code,
                                 out[q0:].data_ptr(), nearest[q0:].data_ptr(), workspace.data_ptr(),
                                 workspace.numel(), stream, device)
    return out, nearest


def _setup_context(ctx, inputs, output):
    features, means, precision_factor, reduce = inputs
    _, nearest = output
    ctx.save_for_backward(features, means, precision_factor, nearest)
    ctx.reduce = reduce


def _backward(ctx, grad_distances, grad_nearest):
    # With r_qc = (x_q - mu_c) L and d_qc = ||r_qc||^2:
    #   dd/dx_q = 2 L r_qc,  dd/dmu_c = -2 L r_qc,  dd/dL = 2 (x_q - mu_c) r_qc^T.
    # Summed against the incoming gradient g they need only
    #   gz [Q, R] = sum_c g_qc r_qc  and  gm [C, R] = sum_q g_qc r_qc,
    # so nothing of size Q x C x D exists. reduce="min" routes g to the nearest
    # class (a subgradient at ties). Centring as in the forward pass.
    features, means, precision_factor, nearest = ctx.saved_tensors
    dtype = reference.compute_dtype(features.dtype)
    x, mu, factor = features.to(dtype), means.to(dtype), precision_factor.to(dtype)
    g = grad_distances.to(dtype)
    center = mu.mean(0).detach()
    xc, mc = x - center, mu - center
    z, mt = xc @ factor, mc @ factor                        # [Q, R], [C, R]
    if ctx.reduce == "none":
        gz = g.sum(1, keepdim=True) * z - g @ mt
        gm = g.T @ z - g.sum(0)[:, None] * mt
    else:
        gz = g[:, None] * (z - mt[nearest])
        gm = torch.zeros_like(mt).index_add(0, nearest, gz)
    grads = [None, None, None]
    if ctx.needs_input_grad[0]:
        grads[0] = (2 * gz @ factor.T).to(features.dtype)
    if ctx.needs_input_grad[1]:
        grads[1] = (-2 * gm @ factor.T).to(means.dtype)
    if ctx.needs_input_grad[2]:
        grads[2] = (2 * (xc.T @ gz - mc.T @ gm)).to(precision_factor.dtype)
    return grads[0], grads[1], grads[2], None


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    lower = torch.linalg.cholesky(torch.eye(6, dtype=torch.float64) * 2 + 0.1)
    return [
        (randn(11, 6), randn(3, 6), lower.float(), "min"),
        (randn(11, 6, dtype=torch.float64), randn(4, 6, dtype=torch.float64), lower, "none"),
        (randn(0, 5), randn(2, 5), randn(5, 3), "none"),
        (randn(1, 1), randn(1, 1), randn(1, 1), "min"),
        (randn(37, 9, dtype=torch.float64), randn(5, 9, dtype=torch.float64), randn(9, 4, dtype=torch.float64),
         "none"),
    ]


MAHALANOBIS = Op(
    "ood.mahalanobis",
    "(Tensor features, Tensor means, Tensor precision_factor, str reduce) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.mahalanobis_nearest, cpu=_cpu, cuda=_cuda,
    finite=("features", "means", "precision_factor"),
    cpu_kernel_checks=("features", "means", "precision_factor"),
    empty=lambda features, means, precision_factor, reduce: features.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)


@_arrays.accepts_arrays
def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                reduce: str = "min") -> torch.Tensor:
    """Squared Mahalanobis distances to class Gaussians with a shared covariance.

    The OOD score of Lee et al. 2018 ("A Simple Unified Framework for Detecting
    Out-of-Distribution Samples and Adversarial Attacks"):
    ``d_c(x) = (x - mu_c)^T Sigma^-1 (x - mu_c) = ||(x - mu_c)^T L||^2`` with the
    precision given as a factor, ``Sigma^-1 = L L^T``.

    Args:
        features: [Q, D] float tensor (float32 fast path; float64 on CPU;
            float16/bfloat16 accepted and computed in float32).
        means: [C, D] class means, C >= 1; same dtype and device.
        precision_factor: L, [D, R]; same dtype and device. Any factor with
            ``L @ L.T == Sigma^-1`` works: the Cholesky factor of the precision
            (R = D), or ``V * lambda**-0.5`` from an eigendecomposition of the
            covariance restricted to the kept eigenvalues (R < D: the distance
            in the kept subspace). On CPU the zero half of a triangular factor
            is skipped, about 2x faster for R = D: prefer
            ``torch.linalg.cholesky(precision)`` (lower) or the inverse-transposed
            Cholesky factor of the covariance (upper) to a dense factor.
        reduce: ``"min"`` (default): ``min_c d_c(x)``, shape [Q], the score of
            Lee et al. (larger = more anomalous); ``"none"``: every class, [Q, C].

    Returns:
        float64 for float64 input, else float32; [Q] or [Q, C]. (float64 on
        CUDA runs the float64 torch reference: the CUDA kernel is fp32.)

    Math: whitened once, ``z = (x - mu_bar) L``, ``m_c = (mu_c - mu_bar) L``
    with mu_bar the mean of the class means, then
    ``d_c = ||z||^2 + ||m_c||^2 - 2 z.m_c`` clamped at 0: two GEMMs per block
    of queries. As in every GEMM-based distance, float32 loses relative
    accuracy for distances far below ``||z||^2 + ||m_c||^2`` (~1e-6 of that
    scale); centring at mu_bar keeps the scale the spread of the data, not its
    offset from the origin.

    Memory: CPU: O(D R + C R) once plus per-thread blocks of 256 queries
    (256 x (D + R + min(C, 1024)) elements); CUDA: slabs of
    ~2^24 / (D + R) whitened queries plus a distance tile of at most 256 MiB.
    Never Q x C x D; [Q, C] only as the output of reduce="none".

    NaN policy: on CPU (and the reference) NaN/inf in any input raise
    ValueError naming the argument; on CUDA, where that check would cost a
    host synchronisation, non-finite inputs give NaN/inf in the affected rows
    (``gencore.set_check_finite("always")`` checks there too).
    Values that overflow float32 come out as inf or NaN; a NaN propagates
    through the min.

    Gradients: to features, means and precision_factor (float64 gradcheck);
    through reduce="min" the gradient goes to the nearest class (found by the
    forward pass; lowest index on ties). The backward is plain torch matmuls
    with O(Q (D + R) + C R) memory, never Q x C x D.
    """
    return MAHALANOBIS(features, means, precision_factor, reduce)[0]


@_arrays.accepts_arrays
def relative_mahalanobis(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                         background_mean: torch.Tensor, background_factor: torch.Tensor,
                         reduce: str = "min") -> torch.Tensor:
    """Relative Mahalanobis distance (Ren et al. 2021, "A Simple Fix to Mahalanobis
    Distance for Improving Near-OOD Detection"): ``d_c(x) - d_bg(x)``.

    ``d_c`` is ``mahalanobis(features, means, precision_factor, "none")`` and
    ``d_bg`` the squared Mahalanobis distance to one background Gaussian fitted
    to all training features, with the same conventions.

    Args:
        features [Q, D], means [C, D], precision_factor [D, R]: as in ``mahalanobis``.
        background_mean: [D]; background_factor: [D, R0] with
            ``background_factor @ background_factor.T`` the background precision.
            Same dtype and device as features.
        reduce: ``"min"``: ``min_c d_c(x) - d_bg(x)``, [Q]; ``"none"``: [Q, C].

    Two calls of the Mahalanobis op (the background is a one-class call), so
    dtype, memory, NaN policy and gradients are those of ``mahalanobis``.
    """
    _checks.tensor(background_mean, "background_mean", ndim=1)
    _checks.tensor(background_factor, "background_factor", ndim=2)
    _checks.tensor(features, "features", ndim=2)
    _checks.same_device(features=features, background_mean=background_mean, background_factor=background_factor)
    _checks.same_dtype("features", features, background_mean=background_mean, background_factor=background_factor)
    _checks.same_size("feature dimension", **{"features.shape[1]": features.shape[1],
                         "background_mean.shape[0]": background_mean.shape[0],
                         "background_factor.shape[0]": background_factor.shape[0]})
    d = mahalanobis(features, means, precision_factor, reduce)
    try:
        d_bg = mahalanobis(features, background_mean[None, :], background_factor, "min")
    except ValueError as exc:  # the op's messages say "means" / "precision_factor"
        raise ValueError(f"background Gaussian (background_mean, background_factor): {exc}") from exc
    return d - (d_bg[:, None] if reduce == "none" else d_bg)
