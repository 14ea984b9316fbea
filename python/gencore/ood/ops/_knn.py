"""ood kNN op: registration (custom op, fake, autograd) and the public wrapper."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch, _native
from .. import reference

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
