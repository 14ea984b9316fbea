"""The data-set denoiser over data sharded across torch.distributed ranks.

Each rank holds some rows of one global data set (any split) and the same
queries. It streams its shard with the op and keeps (D_r, log_z_r); one
all-reduce of the maxima and one of the rescaled sums give exactly the
single-process answer:

    log_z = logsumexp_r log_z_r,   D = sum_r exp(log_z_r - log_z) D_r

A rank with no rows contributes log_z_r = -inf (weight 0).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _checks

from .ops._dataset import DATASET_DENOISE, per_query

__all__ = ["dataset_denoiser", "dataset_log_density"]


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("gencore.score.distributed needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    return dist


def _sharded(x, local_data, sigma, weights, alpha, group):
    """(D [B, d], log_z [B], global weight total) over every rank's shard."""
    dist = _dist()
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(local_data, "local_data", ndim=2)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "local_data.shape[1]": local_data.shape[1]})
    s, a = per_query(sigma, "sigma", x), per_query(1.0 if alpha is None else alpha, "alpha", x)
    dtype = s.dtype
    b, n = x.shape[0], local_data.shape[0]
    if n > 0:
        denoised, log_z = DATASET_DENOISE(x, local_data, s, a, weights)
    else:
        denoised = torch.zeros(x.shape, dtype=dtype, device=x.device)
        log_z = torch.full((b,), -math.inf, dtype=dtype, device=x.device)
    local_total = float(n) if weights is None else float(weights.to(torch.float64).sum())
    totals = torch.tensor([local_total, float(b)], dtype=torch.float64, device=x.device)
    dist.all_reduce(totals, group=group)
    if totals[1] != b * dist.get_world_size(group):
        raise ValueError("every rank must pass the same queries x [B, d]")
    if totals[0] <= 0:
        raise ValueError("the global data set is empty (or has no weight) on every rank")
    top = log_z.detach().clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    share = torch.exp(log_z - top)                        # [B], 0 for an empty shard
    packed = torch.cat([share[:, None] * denoised, share[:, None]], 1)
    dist.all_reduce(packed, group=group)
    return packed[:, :-1] / packed[:, -1:], top + torch.log(packed[:, -1]), float(totals[0]), s


def dataset_denoiser(x: torch.Tensor, local_data: torch.Tensor, sigma, weights: Optional[torch.Tensor] = None,
                     group=None, *, alpha=None) -> torch.Tensor:
    """``gencore.score.dataset_denoiser(x, cat(all ranks' local_data), sigma, weights)``,
    on every rank.

    Args:
        x: [B, d], identical on every rank; local_data: [n_r, d], n_r may be 0;
        sigma, alpha: as ``dataset_denoiser``; weights: [n_r] this rank's weights;
        group: process group (default the world): gloo for CPU tensors, NCCL for CUDA.

    Communication: one all-reduce of [2] totals, one of [B] maxima, one of
    [B, d + 1] sums. Gradients do not flow through the collectives.
    """
    return _sharded(x, local_data, sigma, weights, alpha, group)[0]


def dataset_log_density(x: torch.Tensor, local_data: torch.Tensor, sigma, weights: Optional[torch.Tensor] = None,
                        group=None, *, alpha=None) -> torch.Tensor:
    """``gencore.score.dataset_log_density`` over the sharded data set, on every rank."""
    _, log_z, total, s = _sharded(x, local_data, sigma, weights, alpha, group)
    return log_z - math.log(total) - 0.5 * x.shape[1] * torch.log(2 * math.pi * s * s)
