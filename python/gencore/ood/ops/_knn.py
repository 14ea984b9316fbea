"""ood kNN op: one definition (gencore._op.Op) and the public function."""

from __future__ import annotations

import torch

from ... import _arrays, _checks, _native, _native_call
from ..._op import Op
from .. import reference

_KNN_CODES = {"l2": 0, "sqeuclidean": 0, "ip": 1, "cosine": 2}
# Rows whose squared norm exceeds this could overflow float32 distances
# (||x||^2 + ||y||^2 + 2|x.y| <= 4 * this = FLT_MAX): refused, not returned as inf/NaN.
MAX_SQUARED_NORM = torch.finfo(torch.float32).max / 4


def _check(queries, bank, k, metric):
    _checks.tensor(queries, "queries", ndim=2)
    _checks.tensor(bank, "bank", ndim=2)
    _checks.same_device(queries=queries, bank=bank)
    _checks.choice(metric, "metric", reference.KNN_METRICS)
    if queries.shape[1] != bank.shape[1]:  # compared first: building the message's arguments costs ~1 us a call
        _checks.same_size("feature dimension", **{"queries.shape[1]": queries.shape[1],
                                                  "bank.shape[1]": bank.shape[1]})
    if bank.shape[0] == 0:
        raise ValueError("bank is empty (shape [0, D]); kNN needs at least k rows")
    if queries.shape[1] == 0:
        raise ValueError("queries and bank have feature dimension 0")
    k = _checks.integer(k, "k", low=1)
    if k > bank.shape[0]:
        raise ValueError(f"k={k} exceeds the bank size N={bank.shape[0]}")
    if queries.dtype != bank.dtype:
        raise TypeError(f"queries and bank must share a dtype, got {queries.dtype} and {bank.dtype}")
    return queries, bank, k, metric


def _fake(queries, bank, k, metric):
    dtype = reference.compute_dtype(queries.dtype)
    return (queries.new_empty((queries.shape[0], k), dtype=dtype),
            queries.new_empty((queries.shape[0], k), dtype=torch.int64))


def _check_norms(backend, queries, bank, k, metric):
    """The float32 range (the native CPU kernel refuses it in its norm pass)."""
    if backend == "native-cpu" or queries.dtype == torch.float64:
        return
    for name, t in (("queries", queries), ("bank", bank)):
        if t.numel() and float(t.detach().double().square().sum(1).max()) > MAX_SQUARED_NORM:
            raise ValueError(f"{name} has a row with squared norm above {MAX_SQUARED_NORM:.3g}: float32 "
                             "distances would overflow; scale the data down or pass float64")


def _cpu(queries, bank, k, metric):
    dtype = reference.compute_dtype(queries.dtype)
    values, values_array = _native_call.cpu_output((queries.shape[0], k), dtype)
    indices, indices_array = _native_call.cpu_output((queries.shape[0], k), torch.int64)
    _native.core.knn(_native_call.cpu_array(queries, dtype), _native_call.cpu_array(bank, dtype), k,
                     _KNN_CODES[metric], values_array, indices_array, _native_call.threads())
    if metric == "l2":
        values.sqrt_()
    return values, indices


def _cuda(queries, bank, k, metric):
    x, y = _native_call.cuda_input(queries), _native_call.cuda_input(bank)
    if metric == "cosine":  # the CUDA kernel has L2 and IP; cosine is IP on unit rows
        x = torch.nn.functional.normalize(x, dim=1).contiguous()
        y = torch.nn.functional.normalize(y, dim=1).contiguous()
    (q, d), n = x.shape, y.shape[0]
    values = _native_call.output((q, k), torch.float32, x.device)
    indices = _native_call.output((q, k), torch.int64, x.device)
    workspace = _native_call.cuda_workspace(_native.cuda.knn_workspace_bytes(q, n, d, k), x.device)
    _native.cuda.knn(x.data_ptr(), y.data_ptr(), q, n, d, k, 0 if _KNN_CODES[metric] == 0 else 1,
                     values.data_ptr(), indices.data_ptr(), workspace.data_ptr(), workspace.numel(),
                     _native_call.cuda_stream(x.device), _native_call.device_index(x.device))
    if metric == "l2":
        values.sqrt_()
    return values, indices


def _cuda_limit(queries, bank, k, metric):
    limit = _native.cuda.knn_max_k()
    return f"k={k} exceeds the CUDA kernel's largest k ({limit})" if k > limit else None


def _setup_context(ctx, inputs, output):
    queries, bank, k, metric = inputs
    values, indices = output
    ctx.save_for_backward(queries, bank, values, indices)
    ctx.metric = metric


def _backward(ctx, grad_values, grad_indices):
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


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return [
        (randn(7, 5), randn(13, 5), 3, "l2"),
        (randn(1, 1, dtype=torch.float64), randn(1, 1, dtype=torch.float64), 1, "sqeuclidean"),
        (randn(0, 4), randn(6, 4), 2, "ip"),
        (randn(9, 33, dtype=torch.float64), randn(300, 33, dtype=torch.float64), 17, "cosine"),
        (randn(5, 8), randn(40, 8), 40, "ip"),
    ]


KNN = Op(
    "ood.knn", "(Tensor queries, Tensor bank, int k, str metric) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.knn, cpu=_cpu, cuda=_cuda,
    finite=("queries", "bank"), cpu_kernel_checks=("queries", "bank"), check_values=_check_norms,
    cuda_limit=_cuda_limit, empty=lambda queries, bank, k, metric: queries.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)


@_arrays.accepts_arrays
def knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest neighbours of each query in ``bank``.

    Args:
        queries: [Q, D] float tensor (float32 fast path; float64 on CPU;
            float16/bfloat16 accepted and computed in float32), or a numpy /
            CuPy array (results then come back as the same kind).
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

    Range: in float32 (and fp16/bf16) every row's squared norm must be at most
    FLT_MAX / 4 ~ 8.5e37 (norm ~ 9.2e18), so no distance or product can
    overflow; larger rows raise ValueError (pass float64 for such data).

    Memory: the bank streams in tiles; peak extra memory is O(N) norms plus
    per-thread tiles of 256 x 1024 and the [Q, k] outputs, never Q x N.
    CUDA: a workspace of at most 256 MiB from torch's caching allocator;
    k above the CUDA kernel's largest k (``gencore._cuda.knn_max_k()``, 4096)
    runs the reference, with a warning.

    Gradients flow to ``queries`` and ``bank`` through ``values`` (indices
    are piecewise constant). NaN/inf inputs raise ValueError on the CPU; on
    CUDA they are not checked (that would synchronise the host; see
    ``gencore.set_check_finite``): a non-finite distance ranks last.
    """
    return KNN(queries, bank, k, metric)
