"""Sinkhorn between point clouds sharded across torch.distributed ranks.

Each rank holds some points of x and some of y (any split, a shard may be
empty), with their weights. Each rank updates the potentials of its own points
against all of the other cloud: the softmin

    f_i = -eps log sum_j b_j exp((g_j - C_ij) / eps)

is streamed one visiting shard at a time (each rank in turn broadcasts its
shard's points with log b_j + g_j / eps, every rank runs the single-process
softmin op on it), and the partial results merge exactly, as an online
log-sum-exp across shards:

    -f_i / eps = logsumexp_r (-f_i^(r) / eps)

(an empty shard contributes -inf). No rank holds more than its shards plus one
visiting shard. The epsilon schedule (the bounding box is all-reduced), the
stopping rule (the marginal error's sums are all-reduced) and the
over-relaxation are those of ``gencore.ot.sinkhorn``, run by the same code, so
every rank takes the same decisions and the result equals the single-process
one on the concatenated clouds, to the rounding of the merge.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _checks
from .._op import checks_values_of
from . import reference
from .sinkhorn import (SinkhornResult, _bounds, _check_loop, _check_p, _check_reach, _diameter, _divergence_envelope,
                       _divergence_value, _needs_grad, _pair_envelope, _pair_value, _positive, _sides, _softmin,
                       _solve, _start, _weights, _whiten, epsilon_schedule)

__all__ = ["sinkhorn", "sinkhorn_divergence"]


def _dist(what: str):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{what} needs an initialized torch.distributed process group "
                           "(torch.distributed.init_process_group)")
    return dist


class _Shards:
    """The process group's view of one sharded cloud: the points each rank's shard streams to
    the others (0 for an empty shard or one without mass: it adds no term to any softmin, so it
    is never sent), the streamed softmin over them."""

    def __init__(self, dist, group, sizes: list[int]):
        self.dist, self.group, self.sizes = dist, group, sizes
        self.rank = dist.get_rank(group)

    def softmin(self, points, other, log_w, eps, p, gradient=False):
        """``_softmin(points, cat(every rank's other), cat(every rank's log_w), eps, p, gradient)``,
        streamed: rank r broadcasts [other_r | log_w_r] in turn (the visiting shard), merged online.
        The derivative df/dx = sum_j P_ij dC_ij/dx merges with the shards' shares of the softmax
        mass, exp((f - f^(r)) / eps), as the log-sum-exp does (no extra communication)."""
        d = other.shape[1]
        merged = torch.full((points.shape[0],), -math.inf, dtype=log_w.dtype, device=log_w.device)
        derivative = torch.zeros((points.shape[0], d), dtype=log_w.dtype, device=log_w.device) if gradient else None
        for src, size in enumerate(self.sizes):
            if size == 0:
                continue
            if src == self.rank:
                visiting = torch.cat([other, log_w[:, None]], 1)
            else:
                visiting = torch.empty((size, d + 1), dtype=log_w.dtype, device=log_w.device)
            self.dist.broadcast(visiting, self.dist.get_global_rank(self.group, src) if self.group is not None
                                else src, group=self.group)
            if points.shape[0] == 0:
                continue
            # a row-strided view of the points (the glue reads row strides), the log-weights a [m_r] copy
            part, part_derivative = _softmin(points, visiting[:, :d], visiting[:, d].contiguous(), eps, p, gradient)
            total = torch.logaddexp(merged, part / -eps)
            if gradient:   # shares of the mass so far and of this shard (exp(-inf) = 0 before the first)
                derivative = (torch.exp(merged - total)[:, None] * derivative
                              + torch.exp(part / -eps - total)[:, None] * part_derivative)
            merged = total
        return -eps * merged, derivative

    def total(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        self.dist.all_reduce(t, group=self.group)
        return t


def _prepare(what, x, y, a, b, blur, p, scaling, tol, max_iter, reach, cost, whitening, group):
    """Checks on every rank alike (a rank's bad input raises on every rank, none is left waiting):
    (shards of x, shards of y, local points x, y (whitened, with their autograd graph), weights
    a, b (likewise), p, eps schedule, rho, tol, max_iter, dtype)."""
    dist = _dist(what)
    error = None
    try:
        for t, name in ((x, "x_local"), (y, "y_local")):
            _checks.tensor(t, name, ndim=2)
            if checks_values_of(t):
                _checks.finite(t, name)
        _checks.same_device(x_local=x, y_local=y)
        _checks.same_dtype("x_local", x, y_local=y)
        _checks.same_size("feature dimension", **{"x_local.shape[1]": x.shape[1], "y_local.shape[1]": y.shape[1]})
        if x.shape[1] == 0:
            raise ValueError("x_local has dimension d = 0")
        for w, name, n in ((a, "a_local", x.shape[0]), (b, "b_local", y.shape[0])):
            if w is not None:
                _weights(w, name, n, x, reference.compute_dtype(x.dtype), need_mass=False)
        p = _check_p(p)
        blur = _positive(blur, "blur")
        rho = _check_reach(reach)
        scaling, tol, max_iter = _check_loop(scaling, tol, max_iter)
        dtype = reference.compute_dtype(x.dtype)
        if rho is not None and _needs_grad(a, b):
            raise ValueError("no gradient with respect to the weights of unbalanced OT (reach=...): pass "
                             "a_local / b_local detached")
        xw, yw = _whiten(x.to(dtype), y.to(dtype), cost, whitening)
        # points a shard streams: none when its weights are all zero (the default weights are positive)
        streamed = [n if w is None or bool((w > 0).any()) else 0 for w, n in ((a, x.shape[0]), (b, y.shape[0]))]
        shape = (x.shape[0], y.shape[0], x.shape[1], str(x.dtype), a is not None, b is not None, *streamed)
    except (TypeError, ValueError) as exc:
        error, shape = f"{type(exc).__name__}: {exc}", None
    metas = [None] * dist.get_world_size(group)
    dist.all_gather_object(metas, (error, shape), group=group)
    failed = [(r, e) for r, (e, _) in enumerate(metas) if e is not None]
    if failed:
        listing = "; ".join(f"rank {r}: {e}" for r, e in failed)
        raise ValueError(f"{what}: bad input on {len(failed)} rank(s): {listing}")
    shapes = [s for _, s in metas]
    for index, name in ((2, "x_local.shape[1] (the feature dimension)"), (3, "dtype of x_local / y_local"),
                        (4, "a_local (given or None)"), (5, "b_local (given or None)")):
        if len({s[index] for s in shapes}) > 1:
            raise ValueError(f"{what}: {name} must be the same on every rank, got {[s[index] for s in shapes]}")
    sizes_x, sizes_y = [s[0] for s in shapes], [s[1] for s in shapes]
    for sizes, name in ((sizes_x, "x_local"), (sizes_y, "y_local")):
        if sum(sizes) == 0:
            raise ValueError(f"{what}: {name} is empty on every rank; a point cloud needs at least one point")
    rho = None if rho is None else rho ** p
    wa = _weights(a, "a_local", x.shape[0], x, dtype, total=sum(sizes_x), need_mass=False)
    wb = _weights(b, "b_local", y.shape[0], y, dtype, total=sum(sizes_y), need_mass=False)
    xs, ys = _Shards(dist, group, [s[6] for s in shapes]), _Shards(dist, group, [s[7] for s in shapes])
    masses = xs.total(torch.stack([wa.detach().sum(), wb.detach().sum()]).to(torch.float64)).tolist()
    for mass, name in zip(masses, ("a_local", "b_local")):
        if not mass > 0:
            raise ValueError(f"{what}: {name} are all zero on every rank: the measure has no mass")
    if rho is None and abs(masses[0] - masses[1]) > 1e-4 * max(masses):
        raise ValueError(f"{what}: balanced OT needs sum(a) == sum(b) over all ranks, got {masses[0]:.6g} and "
                         f"{masses[1]:.6g} (normalise the weights, or pass reach= for unbalanced OT)")
    bounds = _bounds(xw.detach(), yw.detach())
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX, group=group)
    eps_list = epsilon_schedule(p, max(_diameter(xw.detach(), yw.detach(), bounds), blur), blur, scaling)
    return xs, ys, xw, yw, wa, wb, p, eps_list, rho, tol, max_iter, dtype


def sinkhorn(x_local: torch.Tensor, y_local: torch.Tensor, a_local: Optional[torch.Tensor] = None,
             b_local: Optional[torch.Tensor] = None, blur: float = 0.05, p: int = 2, scaling: float = 0.5,
             tol: float = 1e-3, max_iter: int = 1000, reach: Optional[float] = None, cost: str = "sqeuclidean",
             whitening: Optional[torch.Tensor] = None, group: Optional[object] = None) -> SinkhornResult:
    """``gencore.ot.sinkhorn`` on clouds sharded across the ranks of ``group``.

    Args:
        x_local: [n_r, d] this rank's points of x (the global x is the
            concatenation in rank order); n_r may be 0 on some ranks, not all.
        y_local: [m_r, d] this rank's points of y, same dtype and device.
        a_local, b_local: [n_r], [m_r] weights of the local points, >= 0 (a
            shard may have no mass); given on every rank or on none. Default:
            the GLOBAL uniform weights 1 / N, 1 / M (N = sum of n_r).
        blur, p, scaling, tol, max_iter, reach, cost, whitening: as
            ``gencore.ot.sinkhorn`` (``whitening`` the same matrix on every rank).
        group: process group (default: the world). Tested with gloo on CPU
            tensors; NCCL on CUDA tensors runs the same code but is untested.

    Returns:
        ``SinkhornResult`` with f [n_r], g [m_r] the potentials of the LOCAL
        points and cost, n_iter, marginal_error, converged, status, eps the
        global ones (equal on every rank): the single-process result on the
        concatenated clouds, to rounding (the softmin's partial sums merge in
        another order).

    Bad input on any rank raises ValueError on every rank (the message names the
    rank and the argument). Communication per softmin: every shard of the other
    cloud is broadcast once ([m_r, d + 1]); per measured iteration, one
    all-reduce of 2 numbers per potential.

    Gradients (envelope theorem, as ``gencore.ot.sinkhorn``): ``cost.backward()``
    on every rank gives each rank d cost / d its x_local, y_local (and a_local,
    b_local when balanced); a ``whitening`` W that requires grad gets this
    rank's share (sum it over the ranks, as data-parallel training does). They
    come from the merged softmin derivatives of the last step: no extra
    communication.
    """
    what = "gencore.ot.distributed.sinkhorn"
    xs, ys, xw, yw, wa, wb, p, eps_list, rho, tol, max_iter, dtype = _prepare(
        what, x_local, y_local, a_local, b_local, blur, p, scaling, tol, max_iter, reach, cost, whitening, group)
    wa_d, wb_d = wa.detach(), wb.detach()
    sides = _sides(xw.detach(), yw.detach(), wa_d, wb_d, p, over_x=xs.softmin, over_y=ys.softmin, total=xs.total)
    _start(sides, eps_list[0], rho)
    need_grad = _needs_grad(xw, yw, a_local, b_local)
    n_iter, error, status, eps, (df_x, dg_y) = _solve(what, sides, eps_list, rho, tol, max_iter, dtype,
                                                      gradient=need_grad)
    f, g = sides[0].value, sides[1].value
    value = xs.total(_pair_value(wa_d, f, wb_d, g, rho, eps))
    if need_grad:
        value = _pair_envelope(xw, yw, wa, wb, value, f, g, df_x, dg_y, rho)
    return SinkhornResult(value, f, g, n_iter, error, status == "converged", status, eps)


def sinkhorn_divergence(x_local: torch.Tensor, y_local: torch.Tensor, a_local: Optional[torch.Tensor] = None,
                        b_local: Optional[torch.Tensor] = None, blur: float = 0.05, p: int = 2,
                        reach: Optional[float] = None, scaling: float = 0.5, tol: float = 1e-3, max_iter: int = 1000,
                        cost: str = "sqeuclidean", whitening: Optional[torch.Tensor] = None,
                        group: Optional[object] = None) -> torch.Tensor:
    """``gencore.ot.sinkhorn_divergence`` on clouds sharded across the ranks of ``group``:
    S(a, b) = OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2, a 0-d tensor equal on every
    rank. Arguments, sharding, defaults (global uniform weights), errors and communication as
    ``sinkhorn`` in this module (four potentials instead of two), gradients included (by
    ``backward()`` on every rank)."""
    what = "gencore.ot.distributed.sinkhorn_divergence"
    xs, ys, xw, yw, wa, wb, p, eps_list, rho, tol, max_iter, dtype = _prepare(
        what, x_local, y_local, a_local, b_local, blur, p, scaling, tol, max_iter, reach, cost, whitening, group)
    wa_d, wb_d = wa.detach(), wb.detach()
    sides = _sides(xw.detach(), yw.detach(), wa_d, wb_d, p, selves=True, over_x=xs.softmin, over_y=ys.softmin,
                   total=xs.total)
    _start(sides, eps_list[0], rho)
    need_grad = _needs_grad(xw, yw, a_local, b_local)
    _, _, _, eps, derivatives = _solve(what, sides, eps_list, rho, tol, max_iter, dtype, gradient=need_grad)
    f_ab, g_ab, f_aa, g_bb = (s.value for s in sides)
    value = xs.total(_divergence_value(wa_d, wb_d, f_ab, g_ab, f_aa, g_bb, rho, eps))
    if not need_grad:
        return value
    return _divergence_envelope(xw, yw, wa, wb, value, sides, derivatives, rho)
