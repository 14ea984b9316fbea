"""Exact kNN over a bank sharded across torch.distributed ranks.

Each rank holds a contiguous slice of one global bank, in rank order (rank 0
holds global rows 0 .. n_0 - 1, rank 1 the next n_1, and so on), and the same
queries. Each rank searches its shard with ``gencore.ood.knn``, the
candidates are all-gathered, and every rank merges them into the answer the
single-process op gives on the concatenated bank: same values, same order,
same tie rule (lower global index first).

Why this merge is exact: the global top-k is contained in the union of the
per-shard top-min(k, n_r) lists, and ranks are concatenated in rank order,
which is global-index order, while each shard's list is already sorted with
ties by index; a stable sort by value of the concatenation therefore breaks
ties by global index, as the single-process kernel does.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from . import ops, reference

__all__ = ["knn"]


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("gencore.ood.distributed.knn needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    return dist


def _all_gather(dist, tensor: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def knn(queries: torch.Tensor, local_bank: torch.Tensor, k: int, metric: str = "l2",
        group: Optional[object] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN of ``queries`` in the bank formed by every rank's ``local_bank``.

    Args:
        queries: [Q, D], identical on every rank (the bank is sharded, not the queries).
        local_bank: [n_r, D], this rank's rows of the global bank; n_r may be 0
            or smaller than k. Same dtype as ``queries``.
        k: 1 <= k <= N = Σ_r n_r.
        metric: as ``gencore.ood.knn``: "l2", "sqeuclidean", "ip" or "cosine".
        group: process group (default: the world). Works with gloo (CPU
            tensors) and NCCL (CUDA tensors; the collectives run on the
            queries' device).

    Returns:
        ``(values, indices)`` [Q, k], identical on every rank: the result of
        ``gencore.ood.knn(queries, cat(all local banks), k, metric)``, with
        global indices (row offsets are the shard sizes of lower ranks).

    Communication: one all_gather of [3] sizes, then all_gather of values and
    indices, [Q, k] per rank. Gradients do not flow through the collectives.
    """
    dist = _dist()
    _checks.tensor(queries, "queries", ndim=2)
    _checks.tensor(local_bank, "local_bank", ndim=2)
    _checks.choice(metric, "metric", reference.KNN_METRICS)
    _checks.integer(k, "k", low=1)
    device = _checks.same_device(queries=queries, local_bank=local_bank)

    # Shard sizes give the global offsets; Q and D are gathered too so a rank
    # that was handed different queries fails here instead of hanging later.
    shape = torch.tensor([local_bank.shape[0], queries.shape[0], local_bank.shape[1]], dtype=torch.int64,
                         device=device)
    shapes = torch.stack(_all_gather(dist, shape, group)).cpu()
    sizes = shapes[:, 0]
    if not bool((shapes[:, 1] == queries.shape[0]).all()) or not bool((shapes[:, 2] == queries.shape[1]).all()):
        raise ValueError(f"every rank must pass the same queries [Q, D] and banks [n_r, D]; "
                         f"got (n_r, Q, D) per rank {shapes.tolist()}")
    total = int(sizes.sum())
    if total == 0:
        raise ValueError("the global bank is empty on every rank")
    if k > total:
        raise ValueError(f"k={k} exceeds the global bank size N={total}")
    offset = int(sizes[: dist.get_rank(group)].sum())

    larger_is_better = reference.LARGER_IS_BETTER[metric]
    out_dtype = reference.compute_dtype(queries.dtype)
    q = queries.shape[0]
    # Every rank sends [Q, k]; a shard with fewer rows pads with the worst
    # possible value, which sorts after every real candidate.
    pad_value = float("-inf") if larger_is_better else float("inf")
    values = torch.full((q, k), pad_value, dtype=out_dtype, device=device)
    indices = torch.full((q, k), -1, dtype=torch.int64, device=device)
    k_local = min(k, local_bank.shape[0])
    if k_local > 0 and q > 0:
        v, i = ops.knn(queries, local_bank, k_local, metric)
        values[:, :k_local] = v.detach()
        indices[:, :k_local] = i + offset

    all_values = torch.cat(_all_gather(dist, values, group), dim=1)     # [Q, W k], rank order
    all_indices = torch.cat(_all_gather(dist, indices, group), dim=1)
    key = -all_values if larger_is_better else all_values
    order = torch.sort(key, dim=1, stable=True).indices[:, :k]
    return all_values.gather(1, order), all_indices.gather(1, order)
