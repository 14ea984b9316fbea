"""ood torch ops: registration (custom op, fake, autograd) and the public wrappers."""
from __future__ import annotations

import torch

from .. import _checks, _dispatch, _native
from . import reference

_KNN_CODES = {"l2": 0, "sqeuclidean": 0, "ip": 1, "cosine": 2}


def _validate_knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str) -> None:
    _checks.tensor(queries, "queries", ndim=2)
    _checks.tensor(bank, "bank", ndim=2)
    _checks.same_device(queries=queries, bank=bank)
    _checks.choice(metric, "metric", reference.KNN_METRICS)
    _checks.same_size("feature dimension", **{"queries.shape[1]": queries.shape[1], "bank.shape[1]": bank.shape[1]})
    if bank.shape[0] == 0:
        raise ValueError("bank is empty (shape [0, D]); kNN needs at least k rows")
    if queries.shape[1] == 0:
        raise ValueError("queries and bank have feature dimension 0")
    _checks.integer(k, "k", low=1)
    if k > bank.shape[0]:
        raise ValueError(f"k={k} exceeds the bank size N={bank.shape[0]}")
    if queries.dtype != bank.dtype:
        raise TypeError(f"queries and bank must share a dtype, got {queries.dtype} and {bank.dtype}")


def _knn_cpu(queries, bank, k, metric):
    dtype = reference.compute_dtype(queries.dtype)
    x, y = _checks.native_rows(queries, dtype), _checks.native_rows(bank, dtype)
    values = torch.empty((x.shape[0], k), dtype=dtype)
    indices = torch.empty((x.shape[0], k), dtype=torch.int64)
    _native.core.knn(x.numpy(), y.numpy(), k, _KNN_CODES[metric], values.numpy(), indices.numpy(),
                     _native.get_num_threads())
    if metric == "l2":
        values.sqrt_()
    return values, indices


def _knn_cuda(queries, bank, k, metric):
    x, y = queries.detach().float(), bank.detach().float()
    if metric == "cosine":  # the CUDA kernel has L2 and IP; cosine is IP on unit rows
        x, y = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    x, y = x.contiguous(), y.contiguous()
    if k > _native.cuda.max_k():
        raise ValueError(f"k={k} exceeds the CUDA kernel's limit {_native.cuda.max_k()}")
    values = torch.empty((x.shape[0], k), dtype=torch.float32, device=x.device)
    indices = torch.empty((x.shape[0], k), dtype=torch.int64, device=x.device)
    _native.cuda.knn(x.data_ptr(), y.data_ptr(), x.shape[0], y.shape[0], x.shape[1], k,
                     0 if _KNN_CODES[metric] == 0 else 1, values.data_ptr(), indices.data_ptr(),
                     torch.cuda.current_stream(x.device).cuda_stream, x.device.index)
    if metric == "l2":
        values.sqrt_()
    return values, indices


@torch.library.custom_op("gencore::ood_knn", mutates_args=())
def _knn_op(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    _validate_knn(queries, bank, k, metric)
    backend = _dispatch.select("ood.knn", queries)
    if backend == "native-cpu":  # the native norm pass refuses NaN/inf itself
        return _knn_cpu(queries, bank, k, metric)
    _checks.finite(queries, "queries")
    _checks.finite(bank, "bank")
    if backend == "native-cuda" and queries.dtype != torch.float64:
        return _knn_cuda(queries, bank, k, metric)
    if backend == "native-cuda":
        _dispatch.warn_once("ood.knn:cuda:float64", "gencore.ood.knn: the CUDA kernel is float32; "
                            "float64 CUDA tensors run on the pure-torch reference")
    values, indices = reference.knn(queries.detach(), bank.detach(), k, metric)
    return values.contiguous(), indices.contiguous()


@_knn_op.register_fake
def _(queries, bank, k, metric):
    _validate_knn(queries, bank, k, metric)
    dtype = reference.compute_dtype(queries.dtype)
    return queries.new_empty((queries.shape[0], k), dtype=dtype), queries.new_empty((queries.shape[0], k), dtype=torch.int64)


def _knn_setup_context(ctx, inputs, output):
    queries, bank, k, metric = inputs
    values, indices = output
    ctx.save_for_backward(queries, bank, values, indices)
    ctx.metric = metric


def _knn_backward(ctx, grad_values, grad_indices):
    # d value_ij / d x_i and d / d y_j for the selected pairs; indices are constant.
    queries, bank, values, indices = ctx.saved_tensors
    dtype = values.dtype
    x = queries.to(dtype)[:, None, :]  # [Q, 1, D]
    y = bank.to(dtype)[indices]        # [Q, k, D]
    g = grad_values[..., None].to(dtype)
    metric = ctx.metric
    if metric in ("l2", "sqeuclidean"):
        diff = x - y
        scale = 2.0 if metric == "sqeuclidean" else 1.0 / values.clamp_min(torch.finfo(dtype).tiny)[..., None]
        dx = g * diff * scale
        dy = -dx
    elif metric == "ip":
        dx, dy = g * y, g * x.expand_as(y)
    else:
        tiny = torch.finfo(dtype).tiny
        nx = x.norm(dim=-1, keepdim=True).clamp_min(tiny)
        ny = y.norm(dim=-1, keepdim=True).clamp_min(tiny)
        v = values[..., None]
        dx = g * (y / (nx * ny) - v * x / nx**2)
        dy = g * (x / (nx * ny) - v * y / ny**2)
    grad_q = dx.sum(1).to(queries.dtype) if ctx.needs_input_grad[0] else None
    grad_b = None
    if ctx.needs_input_grad[1]:
        grad_b = torch.zeros(bank.shape, dtype=dtype, device=bank.device)
        grad_b.index_add_(0, indices.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        grad_b = grad_b.to(bank.dtype)
    return grad_q, grad_b, None, None


_knn_op.register_autograd(_knn_backward, setup_context=_knn_setup_context)


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest neighbours of each query in ``bank``.

    Args:
        queries: [Q, D] float tensor (float32 fast path; float64 on CPU;
            float16/bfloat16 accepted and computed in float32).
        bank: [N, D] tensor of the same dtype and device, N >= k.
        k: neighbours per query, 1 <= k <= N.
        metric: ``"l2"`` (Euclidean distance), ``"sqeuclidean"`` (its square),
            ``"ip"`` (inner product) or ``"cosine"`` (cosine similarity of rows
            normalized as ``torch.nn.functional.normalize``: norms below 1e-12
            count as 1e-12, so a zero vector has similarity 0 with everything).

    Returns:
        ``(values, indices)``, each [Q, k]: best first (ascending distance,
        descending similarity); ties go to the lower bank index, so the result
        is deterministic. ``values`` is float64 for float64 input, else float32;
        ``indices`` is int64.

    Math: squared distances are ``||x||^2 + ||y||^2 - 2 x.y`` clamped at 0,
    as in faiss; float32 rounding makes very close pairs (distance below
    ~1e-3 of the norms) imprecise, exactly like every GEMM-based kNN.

    Memory: the bank streams in tiles; peak extra memory is O(N) norms plus
    per-thread tiles of 256 x 1024 and the [Q, k] outputs, never Q x N.

    Gradients flow to ``queries`` and ``bank`` through ``values`` (indices
    are piecewise constant). Inputs must be finite: NaN/inf raise ValueError.
    """
    _validate_knn(queries, bank, k, metric)  # before torch's schema casts (k=True -> 1)
    return torch.ops.gencore.ood_knn(queries, bank, k, metric)


# ---------------------------------------------------------------- Mahalanobis

_MAHALANOBIS_CODES = {"none": 0, "min": 1}
_CUDA_SLAB_ELEMENTS = 1 << 24  # whitened queries per CUDA slab: slab * (D + R) floats (64 MiB)


def _same_feature_dim(**named) -> None:
    # Like _checks.same_size, which hashes its values and so fails on the SymInts
    # of dynamic-shape tracing (the kNN op's known bug); == works on both.
    values = list(named.values())
    if any(v != values[0] for v in values[1:]):
        listing = ", ".join(f"{n}={v}" for n, v in named.items())
        raise ValueError(f"feature dimension mismatch: {listing}")


def _validate_mahalanobis(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                          reduce: str) -> None:
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(means, "means", ndim=2)
    _checks.tensor(precision_factor, "precision_factor", ndim=2)
    _checks.same_device(features=features, means=means, precision_factor=precision_factor)
    _checks.choice(reduce, "reduce", reference.MAHALANOBIS_REDUCTIONS)
    for name, t in (("means", means), ("precision_factor", precision_factor)):
        if t.dtype != features.dtype:
            raise TypeError(f"{name} must have the dtype of features ({features.dtype}), got {t.dtype}")
    _same_feature_dim(**{"features.shape[1]": features.shape[1], "means.shape[1]": means.shape[1],
                         "precision_factor.shape[0]": precision_factor.shape[0]})
    if features.shape[1] == 0:
        raise ValueError("features, means and precision_factor have feature dimension 0")
    if means.shape[0] == 0:
        raise ValueError("means is empty (shape [0, D]); Mahalanobis scores need at least one class")
    if precision_factor.shape[1] == 0:
        raise ValueError("precision_factor has no columns (shape [D, 0]); its rank R must be >= 1")


def _mahalanobis_shapes(features, means, reduce):
    q, c = features.shape[0], means.shape[0]
    return ((q, c) if reduce == "none" else (q,)), (q,)


def _mahalanobis_cpu(features, means, precision_factor, reduce):
    dtype = reference.compute_dtype(features.dtype)
    x, mu, factor = (_checks.native_rows(t, dtype) for t in (features, means, precision_factor))
    q = x.shape[0]
    out_shape, _ = _mahalanobis_shapes(x, mu, reduce)
    out = torch.empty(out_shape, dtype=dtype)
    nearest = torch.empty((q,), dtype=torch.int64)
    if q == 0:  # numpy gives empty arrays zero strides, which matrix_in refuses
        _checks.finite(mu, "means")
        _checks.finite(factor, "precision_factor")
        return out, nearest
    _native.core.mahalanobis(x.numpy(), mu.numpy(), factor.numpy(), _MAHALANOBIS_CODES[reduce],
                             out.numpy().reshape(q, mu.shape[0] if reduce == "none" else 1),
                             nearest.numpy().reshape(q, 1), _native.get_num_threads())
    return out, nearest


def _mahalanobis_cuda(features, means, precision_factor, reduce):
    # z = (x - mu_bar) L by torch (cuBLAS, the caller's stream and matmul precision
    # settings), one slab of queries at a time so memory stays bounded; the
    # distance tile, clamp, argmin and min run in gencore's kernel. No host sync:
    # non-finite inputs are not refused here, they come out as NaN/inf rows.
    x, mu, factor = (t.detach().float() for t in (features, means, precision_factor))
    out_shape, _ = _mahalanobis_shapes(x, mu, reduce)
    out = torch.empty(out_shape, dtype=torch.float32, device=x.device)
    nearest = torch.empty((x.shape[0],), dtype=torch.int64, device=x.device)
    q, c, r = x.shape[0], mu.shape[0], factor.shape[1]
    if q == 0:
        return out, nearest
    center = mu.mean(0)
    mt = ((mu - center) @ factor).contiguous()                 # [C, R]
    stream = torch.cuda.current_stream(x.device).cuda_stream
    slab = max(1, _CUDA_SLAB_ELEMENTS // (x.shape[1] + r))
    for q0 in range(0, q, slab):
        z = ((x[q0:q0 + slab] - center) @ factor).contiguous()  # [slab, R]
        _native.cuda.mahalanobis(z.data_ptr(), mt.data_ptr(), z.shape[0], c, r, _MAHALANOBIS_CODES[reduce],
                                 out[q0:].data_ptr(), nearest[q0:].data_ptr(), stream, x.device.index)
    return out, nearest


@torch.library.custom_op("gencore::ood_mahalanobis", mutates_args=())
def _mahalanobis_op(features: torch.Tensor, means: torch.Tensor, precision_factor: torch.Tensor,
                    reduce: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Q, C] or [Q], nearest class [Q] int64); see ``mahalanobis``."""
    _validate_mahalanobis(features, means, precision_factor, reduce)
    backend = _dispatch.select("ood.mahalanobis", features)
    if backend == "native-cpu":  # the kernel refuses NaN/inf itself, features for free
        return _mahalanobis_cpu(features, means, precision_factor, reduce)
    if backend == "native-cuda" and features.dtype != torch.float64:  # the kernel is fp32
        return _mahalanobis_cuda(features, means, precision_factor, reduce)
    if features.device.type != "cuda":  # on CUDA the check would synchronise the host
        for name, t in (("features", features), ("means", means), ("precision_factor", precision_factor)):
            _checks.finite(t, name)
    distances, nearest = reference.mahalanobis_nearest(
        features.detach(), means.detach(), precision_factor.detach(), reduce)
    return distances.contiguous(), nearest.contiguous()


@_mahalanobis_op.register_fake
def _(features, means, precision_factor, reduce):
    _validate_mahalanobis(features, means, precision_factor, reduce)
    out_shape, nearest_shape = _mahalanobis_shapes(features, means, reduce)
    dtype = reference.compute_dtype(features.dtype)
    return features.new_empty(out_shape, dtype=dtype), features.new_empty(nearest_shape, dtype=torch.int64)


def _mahalanobis_setup_context(ctx, inputs, output):
    features, means, precision_factor, reduce = inputs
    _, nearest = output
    ctx.save_for_backward(features, means, precision_factor, nearest)
    ctx.reduce = reduce


def _mahalanobis_backward(ctx, grad_distances, grad_nearest):
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


_mahalanobis_op.register_autograd(_mahalanobis_backward, setup_context=_mahalanobis_setup_context)


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
    host synchronisation, non-finite inputs give NaN/inf in the affected rows.
    Values that overflow float32 come out as inf or NaN; a NaN propagates
    through the min.

    Gradients: to features, means and precision_factor (float64 gradcheck);
    through reduce="min" the gradient goes to the nearest class (found by the
    forward pass; lowest index on ties). The backward is plain torch matmuls
    with O(Q (D + R) + C R) memory, never Q x C x D.
    """
    # Checked here too: the dispatcher would refuse a non-tensor with a RuntimeError first.
    _validate_mahalanobis(features, means, precision_factor, reduce)
    return torch.ops.gencore.ood_mahalanobis(features, means, precision_factor, reduce)[0]


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
    for name, t in (("background_mean", background_mean), ("background_factor", background_factor)):
        if t.dtype != features.dtype:
            raise TypeError(f"{name} must have the dtype of features ({features.dtype}), got {t.dtype}")
    _same_feature_dim(**{"features.shape[1]": features.shape[1],
                         "background_mean.shape[0]": background_mean.shape[0],
                         "background_factor.shape[0]": background_factor.shape[0]})
    d = mahalanobis(features, means, precision_factor, reduce)
    try:
        d_bg = mahalanobis(features, background_mean[None, :], background_factor, "min")
    except ValueError as exc:  # the op's messages say "means" / "precision_factor"
        raise ValueError(f"background Gaussian (background_mean, background_factor): {exc}") from exc
    return d - (d_bg[:, None] if reduce == "none" else d_bg)
# ====================================================================== logit scores and ViM
# Every score: higher = more in-distribution. One custom op per score
# (gencore::ood_msp, _energy, _max_logit, _gen, _kl_matching, _residual, _vim);
# they share validation, dispatch and the native kernels: csrc/ood/logits.cpp and
# csrc/ood/vim.cpp on the CPU, cuda/ood/logits.cu on CUDA. The CPU kernels refuse
# NaN/inf in their first pass; elsewhere _checks.finite does, which on CUDA is one
# device-to-host sync per checked tensor (the CUDA kernels themselves never sync).

_LOGIT_CODES = {"max_logit": 0, "msp": 1, "energy": 2, "gen": 3, "kl_matching": 4}


def _validate_logits(logits: torch.Tensor, name: str = "logits") -> None:
    _checks.tensor(logits, name, ndim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {tuple(logits.shape)}); scores need C >= 1")


def _validate_templates(logits: torch.Tensor, templates: torch.Tensor) -> None:
    _checks.tensor(templates, "templates", ndim=2)
    _checks.same_device(logits=logits, templates=templates)
    c = logits.shape[1]
    if templates.shape[0] != c or templates.shape[1] != c:
        raise ValueError(f"templates must be [C, C] = [{c}, {c}] for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(templates.shape)}")


def _validate_residual(features, principal, center, logits=None) -> None:
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(principal, "principal", ndim=2)
    _checks.tensor(center, "center", ndim=1)
    named = {"features": features, "principal": principal, "center": center}
    if logits is not None:
        _validate_logits(logits)
        named["logits"] = logits
    _checks.same_device(**named)
    for name, t in named.items():
        if t.dtype != features.dtype:
            raise TypeError(f"{name} must have the dtype of features ({features.dtype}), got {t.dtype}")
    d = features.shape[1]
    if d == 0:
        raise ValueError("features have feature dimension 0")
    if principal.shape[0] != d or principal.shape[1] > d:
        raise ValueError(f"principal must be [D, R] with D = {d} (features.shape[1]) and R <= D, "
                         f"got {tuple(principal.shape)}")
    if center.shape[0] != d:
        raise ValueError(f"center must be [D] = [{d}], got {tuple(center.shape)}")
    if logits is not None and logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits must have one row per feature row: features {tuple(features.shape)}, "
                         f"logits {tuple(logits.shape)}")


def _backend(op: str, x: torch.Tensor) -> str:
    """_dispatch.select, plus: float64 CUDA tensors run the reference (no float64 CUDA kernel)."""
    backend = _dispatch.select(f"ood.{op}", x)
    if backend == "native-cuda" and x.dtype == torch.float64:
        _dispatch.warn_once(f"ood.{op}:cuda-float64",
                            f"gencore.ood.{op}: no float64 CUDA kernel; float64 CUDA tensors run the torch reference")
        return "reference"
    return backend


def _cuda_stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def _logit_scores(op: str, logits: torch.Tensor, temperature: float = 1.0, gamma: float = 0.1, top_m: int = 1,
                  templates=None) -> torch.Tensor:
    """[N] scores of ``op`` from the native kernel, or from the reference."""
    backend = _backend(op, logits)
    code, n = _LOGIT_CODES[op], logits.shape[0]
    if backend == "native-cpu":  # the kernel's max pass refuses NaN/inf itself
        dtype = reference.compute_dtype(logits.dtype)
        if n == 0:  # numpy reports strides (0, 0) for empty arrays; nothing to compute
            return torch.empty(0, dtype=dtype)
        x = _checks.native_rows(logits, dtype)
        log_t = None if templates is None else templates.detach().to(dtype).log().contiguous().numpy()
        out = torch.empty(n, dtype=dtype)
        _native.core.logit_scores(x.numpy(), code, temperature, gamma, top_m, log_t, out.view(n, 1).numpy(),
                                  _native.get_num_threads())
        return out
    _checks.finite(logits, "logits")
    if backend == "native-cuda":
        x = logits.detach().float().contiguous()
        log_t = None if templates is None else templates.detach().float().log().contiguous()
        out = torch.empty(n, dtype=torch.float32, device=x.device)
        if n > 0:
            _native.cuda.logit_scores(x.data_ptr(), n, x.shape[1], code, temperature, gamma, top_m,
                                      0 if log_t is None else log_t.data_ptr(), out.data_ptr(),
                                      _cuda_stream(x), x.device.index)
        return out
    x = logits.detach()
    if op == "msp":
        return reference.msp(x, temperature)
    if op == "energy":
        return reference.energy(x, temperature)
    if op == "max_logit":
        return reference.max_logit(x)
    if op == "gen":
        return reference.gen(x, gamma, top_m)
    return reference.kl_matching(x, templates.detach())


def _residual_scores(op: str, features, principal, center, logits=None, alpha: float = 0.0) -> torch.Tensor:
    """[N] residual (logits None) or ViM scores from the native kernel, or from the reference."""
    backend = _backend(op, features)
    n = features.shape[0]
    _checks.finite(principal, "principal")
    _checks.finite(center, "center")
    if backend == "native-cpu":  # the kernels' norm and max passes refuse NaN/inf themselves
        dtype = reference.compute_dtype(features.dtype)
        if n == 0:
            return torch.empty(0, dtype=dtype)
        x, p = _checks.native_rows(features, dtype), _checks.native_rows(principal, dtype)
        u = center.detach().to(dtype).reshape(1, -1).contiguous()
        lg = None if logits is None else _checks.native_rows(logits, dtype).numpy()
        out = torch.empty(n, dtype=dtype)
        _native.core.residual_scores(x.numpy(), p.numpy(), u.numpy(), lg, alpha, out.view(n, 1).numpy(),
                                     _native.get_num_threads())
        return out
    _checks.finite(features, "features")
    if logits is not None:
        _checks.finite(logits, "logits")
    if backend == "native-cuda":
        # The projection is two GEMMs by torch (xc P, then xc - (xc P) P^T in one
        # addmm): on the GPU they are cheap, and guarding the one-GEMM form of the
        # CPU kernel row by row would need a host sync. The kernel fuses ||e||,
        # logsumexp(logits) and the combination.
        p = principal.detach().float()
        xc = features.detach().float() - center.detach().float()
        e = torch.addmm(xc, xc @ p, p.T, alpha=-1).contiguous()
        lg = None if logits is None else logits.detach().float().contiguous()
        out = torch.empty(n, dtype=torch.float32, device=xc.device)
        if n > 0:
            _native.cuda.residual_scores(e.data_ptr(), n, e.shape[1], 0 if lg is None else lg.data_ptr(),
                                         0 if lg is None else lg.shape[1], alpha, out.data_ptr(),
                                         _cuda_stream(xc), xc.device.index)
        return out
    if logits is None:
        return reference.residual(features.detach(), principal.detach(), center.detach())
    return reference.vim(features.detach(), logits.detach(), principal.detach(), center.detach(), alpha)


def _scores_like(x: torch.Tensor) -> torch.Tensor:
    """Fake output: [N] in the compute dtype of x."""
    return x.new_empty((x.shape[0],), dtype=reference.compute_dtype(x.dtype))


def _grad_to(grad: torch.Tensor, like: torch.Tensor):
    return grad.to(like.dtype)


# --- msp / energy / max_logit

@torch.library.custom_op("gencore::ood_msp", mutates_args=())
def _msp_op(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return _logit_scores("msp", logits, temperature=temperature)


@torch.library.custom_op("gencore::ood_energy", mutates_args=())
def _energy_op(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return _logit_scores("energy", logits, temperature=temperature)


@torch.library.custom_op("gencore::ood_max_logit", mutates_args=())
def _max_logit_op(logits: torch.Tensor) -> torch.Tensor:
    _validate_logits(logits)
    return _logit_scores("max_logit", logits)


@_msp_op.register_fake
def _(logits, temperature):
    _validate_logits(logits)
    _checks.real(temperature, "temperature", positive=True)
    return _scores_like(logits)


@_energy_op.register_fake
def _(logits, temperature):
    _validate_logits(logits)
    _checks.real(temperature, "temperature", positive=True)
    return _scores_like(logits)


@_max_logit_op.register_fake
def _(logits):
    _validate_logits(logits)
    return _scores_like(logits)


def _save_logits(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)
    ctx.temperature = inputs[1] if len(inputs) > 1 else 1.0


def _softmax_of(ctx):
    logits, out = ctx.saved_tensors
    return torch.softmax(logits.to(out.dtype) / ctx.temperature, dim=1), logits, out


def _msp_backward(ctx, grad):
    # d p_k / d l = p_k (onehot_k - p) / T, k = argmax (piecewise constant)
    p, logits, out = _softmax_of(ctx)
    onehot = torch.zeros_like(p).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
    return _grad_to((grad * out / ctx.temperature)[:, None] * (onehot - p), logits), None


def _energy_backward(ctx, grad):
    # d T logsumexp(l / T) / d l = softmax(l / T)
    p, logits, _ = _softmax_of(ctx)
    return _grad_to(grad[:, None] * p, logits), None


def _max_logit_backward(ctx, grad):
    # the gradient goes to the first argmax, as torch.max(dim) does
    logits, out = ctx.saved_tensors
    g = torch.zeros(logits.shape, dtype=out.dtype, device=logits.device)
    return _grad_to(g.scatter_(1, logits.argmax(dim=1, keepdim=True), grad[:, None]), logits)


_msp_op.register_autograd(_msp_backward, setup_context=_save_logits)
_energy_op.register_autograd(_energy_backward, setup_context=_save_logits)
_max_logit_op.register_autograd(_max_logit_backward, setup_context=_save_logits)


# --- GEN / KL matching (no gradients: these scores rank inputs, and GEN's
# p^gamma has an unbounded derivative at p -> 0)

def _validate_gen(logits, gamma, top_m):
    _validate_logits(logits)
    return _checks.real(gamma, "gamma", positive=True), _checks.integer(top_m, "top_m", low=1)


@torch.library.custom_op("gencore::ood_gen", mutates_args=())
def _gen_op(logits: torch.Tensor, gamma: float, top_m: int) -> torch.Tensor:
    gamma, top_m = _validate_gen(logits, gamma, top_m)
    return _logit_scores("gen", logits, gamma=gamma, top_m=top_m)


@_gen_op.register_fake
def _(logits, gamma, top_m):
    _validate_gen(logits, gamma, top_m)
    return _scores_like(logits)


@torch.library.custom_op("gencore::ood_kl_matching", mutates_args=())
def _kl_matching_op(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    _validate_logits(logits)
    _validate_templates(logits, templates)
    _checks.finite(templates, "templates")
    if templates.numel() and bool((templates < 0).any()):
        raise ValueError("templates must be >= 0 (rows are class-mean softmax distributions)")
    return _logit_scores("kl_matching", logits, templates=templates)


@_kl_matching_op.register_fake
def _(logits, templates):
    _validate_logits(logits)
    _validate_templates(logits, templates)
    return _scores_like(logits)


# --- residual / ViM

@torch.library.custom_op("gencore::ood_residual", mutates_args=())
def _residual_op(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    _validate_residual(features, principal, center)
    return _residual_scores("residual", features, principal, center)


@_residual_op.register_fake
def _(features, principal, center):
    _validate_residual(features, principal, center)
    return _scores_like(features)


@torch.library.custom_op("gencore::ood_vim", mutates_args=())
def _vim_op(features: torch.Tensor, logits: torch.Tensor, principal: torch.Tensor, center: torch.Tensor,
            alpha: float) -> torch.Tensor:
    _validate_residual(features, principal, center, logits)
    alpha = _checks.real(alpha, "alpha")
    return _residual_scores("vim", features, principal, center, logits, alpha)


@_vim_op.register_fake
def _(features, logits, principal, center, alpha):
    _validate_residual(features, principal, center, logits)
    _checks.real(alpha, "alpha")
    return _scores_like(features)


def _residual_grads(ctx, scale):
    """d(-scale ||e||)/dx and /du per row, e = (I - P P^T)(x - u); P is held constant."""
    if ctx.needs_input_grad[ctx.principal_index]:
        raise NotImplementedError("gencore.ood residual/vim: no gradient with respect to principal "
                                  "(the score assumes orthonormal columns); pass principal.detach()")
    features, principal, center = ctx.saved_tensors[:3]
    e = reference.residual_vectors(features, principal, center)
    r = torch.linalg.vector_norm(e, dim=1, keepdim=True)
    unit = torch.where(r > 0, e / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(e))
    grad_x = -scale[:, None] * unit  # the norm's subgradient 0 at r = 0, as torch.linalg.norm
    grad_features = _grad_to(grad_x, features) if ctx.needs_input_grad[0] else None
    grad_center = _grad_to(-grad_x.sum(dim=0), center) if ctx.needs_input_grad[ctx.principal_index + 1] else None
    return grad_features, grad_center


def _residual_setup(ctx, inputs, output):
    features, principal, center = inputs
    ctx.save_for_backward(features, principal, center)
    ctx.principal_index = 1


def _residual_backward(ctx, grad):
    grad_features, grad_center = _residual_grads(ctx, grad)
    return grad_features, None, grad_center


def _vim_setup(ctx, inputs, output):
    features, logits, principal, center, alpha = inputs
    ctx.save_for_backward(features, principal, center, logits)
    ctx.alpha = alpha
    ctx.principal_index = 2


def _vim_backward(ctx, grad):
    logits = ctx.saved_tensors[3]
    grad_logits = None
    if ctx.needs_input_grad[1]:  # d logsumexp(l) / d l = softmax(l)
        grad_logits = _grad_to(grad[:, None] * torch.softmax(logits.to(grad.dtype), dim=1), logits)
    grad_features, grad_center = _residual_grads(ctx, grad * ctx.alpha)
    return grad_features, grad_logits, None, grad_center, None


_residual_op.register_autograd(_residual_backward, setup_context=_residual_setup)
_vim_op.register_autograd(_vim_backward, setup_context=_vim_setup)


# --- public functions (arguments are checked here too, before the op schema's
# conversion, so a wrong type is a TypeError naming the argument, not a RuntimeError)

def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017, "A baseline for detecting
    misclassified and out-of-distribution examples").

        score = max_c softmax(logits / T)_c  in (0, 1]      higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1 (float32 fast path; float64 computed
            in float64; float16/bfloat16 computed in float32).
        temperature: T > 0 (default 1; T > 1 is the temperature scaling of ODIN).

    Returns:
        [N], float64 for float64 logits, else float32.

    Computed as 1 / (1 + sum_{j != k} exp((l_j - l_k) / T)) with k the argmax,
    exp in float32 and sums in float64 for float32 input. Peak extra memory:
    none beyond the output (the torch expression materializes softmax [N, C]).
    Differentiable with respect to logits. NaN/inf in logits raise ValueError
    (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return torch.ops.gencore.ood_msp(logits, temperature)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Energy score (Liu et al. 2020, "Energy-based out-of-distribution detection"):
    the negative free energy

        score = -E(x; T) = T logsumexp_c(logits_c / T)      higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1 (dtypes as in ``msp``).
        temperature: T > 0 (default 1, the paper's choice).

    Returns:
        [N], float64 for float64 logits, else float32.

    Computed as l_k + T log1p(sum_{j != k} exp((l_j - l_k) / T)) (k the argmax),
    stable for any logit range. Peak extra memory: none beyond the output.
    Differentiable (gradient softmax(logits / T)).
    NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return torch.ops.gencore.ood_energy(logits, temperature)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"):

        score = max_c logits_c                               higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1.

    Returns:
        [N], float64 for float64 logits, else float32 (exact: the max of the inputs).

    Differentiable: the gradient goes to the first maximal logit of each row.
    NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    return torch.ops.gencore.ood_max_logit(logits)


def gen(logits: torch.Tensor, gamma: float = 0.1, top_m: int = 100) -> torch.Tensor:
    """GEN (Liu et al. 2023, "GEN: Pushing the limits of softmax-based
    out-of-distribution detection"): the negative generalized entropy of the M
    largest softmax probabilities,

        score = -sum_{i in top-M(p)} p_i^gamma (1 - p_i)^gamma,  p = softmax(logits)
                                                             higher = more in-distribution

    as in the paper's and OpenOOD's code (sort p, keep the M largest, sum,
    negate; M >= C uses every class).

    Args:
        logits: [N, C] float tensor, C >= 1.
        gamma: gamma > 0 (default 0.1, the paper's choice).
        top_m: M >= 1 (default 100, the paper's ImageNet setting).

    Returns:
        [N], float64 for float64 logits, else float32.

    Each term is exp(gamma (log p + log(1 - p))) with log p = l - logsumexp(l)
    and 1 - p of the top class as the sum of the others, so probabilities that
    underflow (p < 1e-38 in float32) and p -> 1 keep their exact contribution
    (gamma = 0.1 turns p = 1e-40 into 1e-4). The top M come from a quickselect
    per row (CPU) or a radix select (CUDA); peak extra memory one [C] row buffer
    per CPU thread, no [N, C] intermediate. Not differentiable (no autograd
    formula). NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    gamma, top_m = _validate_gen(logits, gamma, top_m)
    return torch.ops.gencore.ood_gen(logits, gamma, top_m)


def kl_matching(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """KL matching (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"):

        score = -KL(p || d_k) = -sum_c p_c log(p_c / d_kc),  p = softmax(logits),
        k = argmax_c logits_c                                higher = more in-distribution

    with d_k the template of the predicted class (``kl_matching_templates``),
    the direction KL(posterior || template) of the paper, pytorch-ood and
    OpenOOD. (OpenOOD's KLM takes the minimum over all C templates instead of
    the predicted class's; pytorch-ood and this function use the predicted class.)

    Args:
        logits: [N, C] float tensor, C >= 1.
        templates: [C, C] float tensor on the same device, >= 0, finite; row c
            is the mean softmax of the samples predicted as class c.

    Returns:
        [N], float64 for float64 logits, else float32. Classes with p_c = 0
        contribute 0; d_kc = 0 where p_c > 0 gives -inf.

    Peak extra memory: log(templates) [C, C] and one [C] row buffer per CPU
    thread. Not differentiable (no autograd formula). NaN/inf in logits or templates
    and negative templates raise ValueError (on CUDA, after host syncs).
    """
    _validate_logits(logits)
    _validate_templates(logits, templates)
    return torch.ops.gencore.ood_kl_matching(logits, templates)


def residual(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Residual score (Wang et al. 2022, "ViM", section 3): minus the norm of the
    part of the centred feature outside the principal subspace,

        score = -||(I - P P^T)(x - u)||                      higher = more in-distribution

    Args:
        features: [N, D] float tensor x, D >= 1.
        principal: [D, R] tensor P with orthonormal columns (P^T P = I; not
            checked, it would cost D R^2 per call), 0 <= R <= D: the principal
            subspace, e.g. from ``vim_fit``.
        center: [D] tensor u (ViM: u = -pinv(W) b).
        All three share dtype and device.

    Returns:
        [N], float64 for float64 features, else float32.

    CPU: one GEMM y = (x - u) P per block of rows, then r^2 = ||x - u||^2 - ||y||^2
    in double; rows where the residual is below 1/8 of ||x - u|| (where that
    difference cancels) are recomputed as ||(x - u) - y P^T||, so the error
    stays a few float eps of ||x - u||. CUDA: (x - u) - ((x - u) P) P^T by torch
    matmuls, norms by the gencore kernel. Peak extra memory on the CPU: P^T plus
    per-thread blocks of 128 x (2D + 2R); on CUDA: two [N, D] and one [N, R] tensors.

    Differentiable with respect to features and center (gradient
    -(I - P P^T)(x - u) / r, 0 where r = 0); principal must not require grad.
    NaN/inf in any input raise ValueError (on CUDA, after host syncs).
    """
    _validate_residual(features, principal, center)
    return torch.ops.gencore.ood_residual(features, principal, center)


def vim(features: torch.Tensor, logits: torch.Tensor, principal: torch.Tensor, center: torch.Tensor,
        alpha: float) -> torch.Tensor:
    """ViM (Wang et al. 2022, "ViM: Out-of-distribution with virtual-logit matching"):

        score = logsumexp_c(logits_c) - alpha ||(I - P P^T)(x - u)||
                                                             higher = more in-distribution

    i.e. the energy of the real logits against the virtual logit alpha ||x^{P-perp}||,
    exactly as OpenOOD's ViM postprocessor (energy - alpha * norm of the
    residual). Fit u, P and alpha with ``vim_fit``.

    Args:
        features: [N, D] float tensor x (penultimate-layer features).
        logits: [N, C] logits of the same rows (same dtype and device), C >= 1.
        principal: [D, R] orthonormal columns P; center: [D] u (see ``residual``).
        alpha: finite real (ViM: mean max-logit / mean residual norm on training data).

    Returns:
        [N], float64 for float64 features, else float32.

    Same kernels and memory as ``residual`` plus the ``energy`` kernel on logits.
    Differentiable with respect to features, logits and center. NaN/inf in
    any input raise ValueError (on CUDA, after host syncs).
    """
    _validate_residual(features, principal, center, logits)
    alpha = _checks.real(alpha, "alpha")
    return torch.ops.gencore.ood_vim(features, logits, principal, center, alpha)
