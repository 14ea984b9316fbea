"""The Sinkhorn solvers: online log-domain Sinkhorn on point clouds, the Sinkhorn
divergence, Sinkhorn on a given (batched) cost matrix.

Conventions (as GeomLoss, so values compare directly with ``SamplesLoss``):
cost C(x, y) = |x - y|^2 / 2 for p = 2 (the default), |x - y| for p = 1,
epsilon = blur^p, weights a [N], b [M] (default uniform 1 / N, 1 / M).
Potentials f [N], g [M] define the plan

    pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)

and OT_eps(a, b) = <a, f> + <b, g> at convergence of the balanced problem.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import _arrays, _checks
from .._op import checks_values_of
from . import reference
from .ops._sinkhorn import BARYCENTRIC_PROJECTION, SINKHORN_SOFTMIN
from .ops._sinkhorn_dense import SINKHORN_DENSE, check_dense_weights

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_divergence", "sinkhorn_cost_matrix", "barycentric_projection"]

#: Iterations at the final epsilon without a new smallest marginal error after which the
#: error counts as stalled (a float32 rounding floor above tol): long enough that a slow
#: but real linear convergence (which keeps setting new minima) is never mistaken for it.
PLATEAU_ITERATIONS = 40
_CUDA_CHECK_EVERY = 5  # iterations between marginal-error checks on CUDA (each one is a host sync)
_OMEGA_PROBE = 6       # plain iterations over which a pair's convergence rate is measured
_OMEGA_MAX = 1.9       # over-relaxation cap (the optimum approaches 2 as plain Sinkhorn slows down)
_OMEGA_RETREATS = 3    # error blow-ups after which a pair gives over-relaxation up
_OMEGA_STEP = 0.25     # largest increase of w per rate measurement


@dataclass(frozen=True)
class SinkhornResult:
    """What ``sinkhorn`` / ``sinkhorn_cost_matrix`` return.

    cost: OT_eps, a 0-d tensor ([B] for a batch of cost matrices); differentiable
        where the inputs require grad (point clouds: through the envelope theorem).
    f, g: the dual potentials [N], [M] ([B, n], [B, m]) at the final epsilon.
    n_iter: Sinkhorn iterations run, epsilon scaling included.
    marginal_error: the last measured error, the mass-weighted fixed-point
        residual sum_i a_i |1 - exp((f_i - f~_i) / eps)| / sum_i a_i, f~ the
        update of f (balanced: exactly |pi 1 - a|_1 / |a|_1), the larger of the
        two sides.
    converged: marginal_error <= tol.
    status: "converged", "max_iter" (the cap was reached) or "plateau" (the
        error stopped decreasing above tol: float32 cannot reach it).
    eps: the final epsilon.
    plan: the dense plan [n, m] (``sinkhorn_cost_matrix`` only; None otherwise).
    """

    cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    marginal_error: float
    converged: bool
    status: str
    eps: float
    plan: Optional[torch.Tensor] = None


# ====================================================================== checks

def _positive(value, name: str) -> float:
    v = _checks.real(value, name, positive=True)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_p(p) -> int:
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 (cost |x - y|) or 2 (cost |x - y|^2 / 2), got {p!r}")
    return int(p)


def _check_reach(reach) -> Optional[float]:
    return None if reach is None else _positive(reach, "reach")


def _cloud(t, name: str, finite: bool = True) -> torch.Tensor:
    """t checked as a point cloud: [n >= 1, d >= 1] and (``finite``) free of NaN/inf."""
    _checks.tensor(t, name, ndim=2)
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); a point cloud needs at least one point")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has dimension d = 0")
    if finite and checks_values_of(t):
        _checks.finite(t, name)
    return t


def _weights(w, name: str, n: int, like: torch.Tensor, dtype: torch.dtype, total: Optional[int] = None,
             need_mass: bool = True) -> torch.Tensor:
    """[n] weights in ``dtype`` (uniform 1 / total when None, total = n by default), checked:
    >= 0, finite and, with need_mass, some mass (a shard of a distributed cloud may have none)."""
    if w is None:
        return torch.full((n,), 1.0 / (n if total is None else total), dtype=dtype, device=like.device)
    _checks.tensor(w, name, ndim=1)
    if w.shape[0] != n:
        raise ValueError(f"{name} must have one weight per point: shape [{n}], got {tuple(w.shape)}")
    _checks.same_device(**{"points": like, name: w})
    if checks_values_of(w):
        _checks.finite(w, name)
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be >= 0, got a minimum of {float(w.min())}")
        if need_mass and not bool((w > 0).any()):
            raise ValueError(f"{name} are all zero: the measure has no mass")
    return w.to(dtype)


def _check_balanced(a: torch.Tensor, b: torch.Tensor) -> None:
    if not checks_values_of(a):
        return
    mass_a, mass_b = float(a.detach().sum()), float(b.detach().sum())
    if abs(mass_a - mass_b) > 1e-4 * max(mass_a, mass_b):
        raise ValueError(f"balanced OT needs a.sum() == b.sum(), got {mass_a:.6g} and {mass_b:.6g} "
                         "(normalise the weights, or pass reach= for unbalanced OT)")


def _whiten(x: torch.Tensor, y: torch.Tensor, cost: str, whitening) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in the coordinates where the whitened distance ((x - y)^T W (x - y))^(1/2) is |x - y|
    (so either p's cost of it is the plain one)."""
    factor = _whitening_factor(x, cost, whitening)
    return (x, y) if factor is None else (x @ factor, y @ factor)


def _whitening_factor(x: torch.Tensor, cost: str, whitening) -> Optional[torch.Tensor]:
    """L with W = L L^T (checked) for cost="whitened", so (x - y)^T W (x - y) = |(x - y) L|^2; None
    for the plain cost."""
    cost = _checks.choice(cost, "cost", ("sqeuclidean", "whitened"))
    if cost == "sqeuclidean":
        if whitening is not None:
            raise ValueError('whitening is only used with cost="whitened"')
        return None
    if whitening is None:
        raise ValueError('cost="whitened" needs whitening=W, a [d, d] symmetric positive definite matrix')
    d = x.shape[1]
    _checks.tensor(whitening, "whitening", ndim=2)
    if tuple(whitening.shape) != (d, d):
        raise ValueError(f"whitening must be [d, d] = [{d}, {d}], got {tuple(whitening.shape)}")
    _checks.same_device(x=x, whitening=whitening)
    w = whitening.to(x.dtype)
    # (x - y)^T W (x - y) = |(x - y) L|^2 with W = L L^T: transform once, then the plain cost.
    factor, info = torch.linalg.cholesky_ex(w)
    if int(info) != 0 or not torch.allclose(w.detach(), w.detach().T, rtol=1e-5, atol=1e-6 * float(w.detach().abs().max())):
        raise ValueError("whitening must be symmetric positive definite (its Cholesky factorisation failed)")
    return factor


# ====================================================================== the loop

def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    """eps from diameter^p down to blur^p, divided by scaling^p each step (GeomLoss's annealing):
    [diameter^p, diameter^p, (diameter scaling)^p, ..., > blur^p, blur^p]."""
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    logs = []
    e = start
    while e > stop:
        logs.append(e)
        e += step
    return [diameter ** p] + [math.exp(v) for v in logs] + [blur ** p]


def _bounds(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[2, d]: -(the lower corner), the upper corner of the bounding box of both clouds (either may
    be empty: +-inf then), both to be maximised when boxes merge."""
    both = torch.cat([x, y])
    if both.shape[0] == 0:
        return torch.full((2, x.shape[1]), -math.inf, dtype=x.dtype, device=x.device)
    return torch.stack([-both.min(0).values, both.max(0).values])


def _diameter(x: torch.Tensor, y: torch.Tensor, bounds: Optional[torch.Tensor] = None) -> float:
    """The diagonal of the bounding box of both clouds (an upper bound on every |x_i - y_j|);
    ``bounds`` (``_bounds``, merged over shards) when given."""
    b = _bounds(x, y) if bounds is None else bounds
    return float((b[1] + b[0]).norm())


def _softmin(points, other, log_w, eps, p, gradient=False):
    """(f [N], df/dx [N, d] or [N, 0]) through the op's fast path (arguments already checked)."""
    return SINKHORN_SOFTMIN.trusted(points, other, log_w, eps, p, gradient)


def _softmin_late(points, other, log_w, eps, p, gradient=False):
    """``_softmin`` looked up when called, not when a side is built (a test may replace it)."""
    return _softmin(points, other, log_w, eps, p, gradient)


def _local(t: torch.Tensor) -> torch.Tensor:
    """Sums over the shards of a cloud: a single process holds the one shard."""
    return t


def _residual(a: torch.Tensor, f: torch.Tensor, target: torch.Tensor, eps: float,
              total: Callable[[torch.Tensor], torch.Tensor] = _local) -> torch.Tensor:
    """sum_i a_i |1 - exp((f_i - f~_i) / eps)| / sum_i a_i: the balanced row-marginal error of
    the plan of (f, g) when f~ = softmin(g), the fixed-point residual in mass terms otherwise.
    ``total`` sums the two sums over every shard of the points."""
    ratio = torch.exp(((f - target) / eps).clamp(max=reference.ERROR_MAX_EXPONENT))
    sums = total(torch.stack([(a * (1 - ratio).abs()).sum(), a.sum()]))
    return sums[0] / sums[1]


@dataclass
class _Side:
    """One potential of the loop: points it lives on, the other side's points and log-weights.

    A sharded cloud (``gencore.ot.distributed``) holds a shard of each: ``softmin`` then
    streams every rank's shard of ``other`` (same signature as ``_softmin``, fed the local
    shard) and ``total`` sums over the shards of ``points``."""
    points: torch.Tensor
    other: torch.Tensor
    weights: torch.Tensor       # the weights of `points` (for the error)
    other_log_w: torch.Tensor   # log-weights of `other`
    value: torch.Tensor         # the potential [len(points)]
    p: int = 2                  # the cost's exponent
    partner: Optional["_Side"] = None   # whose potential enters the update (itself for a symmetric problem)
    softmin: Callable = _softmin_late
    total: Callable[[torch.Tensor], torch.Tensor] = _local


def _target(s: _Side, eps: float, damping: float) -> torch.Tensor:
    """The (damped) softmin update of side s from its partner's current potential."""
    return damping * s.softmin(s.points, s.other, s.other_log_w + s.partner.value / eps, eps, s.p)[0]


def _sides(px: torch.Tensor, py: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, p: int, selves: bool = False,
           over_x: Callable = _softmin_late, over_y: Callable = _softmin_late,
           total: Callable[[torch.Tensor], torch.Tensor] = _local) -> list[_Side]:
    """The sides of OT(a, b), [f, g], and with ``selves`` those of OT(a, a), OT(b, b) too:
    [f_ab, g_ab, f_aa, g_bb] (potentials unset), for the cost of exponent p. ``over_x`` /
    ``over_y``: the softmins over the points of x / y (the streamed ones of a sharded cloud)."""
    empty = torch.zeros(0)
    log_a, log_b = _log(wa), _log(wb)
    ab = _Side(px, py, wa, log_b, empty, p, softmin=over_y, total=total)
    ba = _Side(py, px, wb, log_a, empty, p, partner=ab, softmin=over_x, total=total)
    ab.partner = ba
    if not selves:
        return [ab, ba]
    aa = _Side(px, px, wa, log_a, empty, p, softmin=over_x, total=total)
    bb = _Side(py, py, wb, log_b, empty, p, softmin=over_y, total=total)
    aa.partner, bb.partner = aa, bb
    return [ab, ba, aa, bb]


def _start(sides: list[_Side], eps: float, rho: Optional[float]) -> None:
    """The first softmin of every side, from zero potentials."""
    damping = 1.0 if rho is None else 1.0 / (1.0 + eps / rho)
    for s in sides:
        s.value = damping * s.softmin(s.points, s.other, s.other_log_w, eps, s.p)[0]


def _solve(what: str, sides: list[_Side], eps_list: list[float], rho: Optional[float], tol: float, max_iter: int,
           dtype, gradient: bool) -> tuple[int, float, str, float, list]:
    """``_run`` on the sides of ``_sides`` (potentials set), the warning, the last step
    (``_extrapolate``): (n_iter, error, status, eps, each side's df/dx)."""
    check_every = _CUDA_CHECK_EVERY if sides[0].points.is_cuda else 1
    n_iter, error, status, eps = _run([(sides[0], sides[1])], sides[2:], eps_list, rho, tol, max_iter, check_every)
    if status != "converged":
        _warn_unconverged(what, status, error, tol, n_iter, dtype, stacklevel=4)
    return n_iter, error, status, eps, _extrapolate(sides, eps, rho, gradient)


def _pair_value(wa, f, wb, g, rho: Optional[float], eps: float) -> torch.Tensor:
    """OT_eps(a, b) from the potentials (the sums over the points given)."""
    return ((wa * f).sum() + (wb * g).sum() if rho is None
            else _unbalanced_term(wa, f, rho, eps) + _unbalanced_term(wb, g, rho, eps))


def _divergence_value(wa, wb, f_ab, g_ab, f_aa, g_bb, rho: Optional[float], eps: float) -> torch.Tensor:
    """S(a, b) from the four potentials (the sums over the points given)."""
    if rho is None:
        return (wa * (f_ab - f_aa)).sum() + (wb * (g_ab - g_bb)).sum()
    return (_unbalanced_term(wa, f_ab, rho, eps) - _unbalanced_term(wa, f_aa, rho, eps)
            + _unbalanced_term(wb, g_ab, rho, eps) - _unbalanced_term(wb, g_bb, rho, eps))


class _Problem:
    """One independent problem of the final-epsilon phase: a cross pair (f, g) of OT(a, b),
    or the single potential of a symmetric OT(a, a), with its own stopping state."""

    def __init__(self, sides: tuple[_Side, ...]):
        self.sides = sides
        self.errors: list[float] = []   # measured, in order
        self.best, self.since_best = math.inf, 0
        self.omega = 1.0 if len(sides) == 2 else 0.5   # pair: plain alternation first; self: averaged
        self.frozen = len(sides) == 1                    # over-relaxation is for the pairs
        self.probe_start = 0                             # index in errors where the rate window starts
        self.retreats = 0
        self.cap = _OMEGA_MAX
        self.status: Optional[str] = None                # "converged" / "plateau" once done

    def step(self, eps: float, damping: float, measure: bool) -> Optional[torch.Tensor]:
        """One update of every potential; the residual (a 0-d tensor) when measured."""
        residuals = []
        for s in self.sides:
            target = _target(s, eps, damping)
            if measure:
                residuals.append(_residual(s.weights, s.value, target, eps, s.total))
            s.value = s.value + self.omega * (target - s.value)
        return torch.stack(residuals).max() if measure else None

    def record(self, error: float, tol: float, check_every: int) -> None:
        self.errors.append(error)
        if error <= tol:
            self.status = "converged"
            return
        if error < self.best:
            self.best, self.since_best = error, 0
        else:
            self.since_best += check_every
            if self.since_best >= PLATEAU_ITERATIONS:
                self.status = "plateau"
                return
        self._tune(check_every)

    def _tune(self, check_every: int) -> None:
        # Over-relaxation f <- f + w (S(g) - f) (Thibault et al. 2017; Lehmann et al. 2021).
        # Every _OMEGA_PROBE iterations the observed rate lambda under the current w gives
        # the plain alternation's rate mu^2 through the SOR relation of linear iterations,
        # (lambda + w - 1)^2 = lambda w^2 mu^2, and w moves up to the optimum
        # 2 / (1 + sqrt(1 - mu^2)) (never down: early errors fall faster than the
        # asymptotic rate). Measured (5000 points in the unit cube, blur 0.05, tol 1e-3):
        # 31 refinement iterations instead of 70. Should the error grow past twice its
        # best, w halves its excess over 1 (and stays below the w that failed), the rate is
        # measured afresh; after
        # _OMEGA_RETREATS such retreats the pair stays at plain alternation.
        e = self.errors
        if self.frozen:
            return
        if self.omega > 1.0 and e[-1] > 2.0 * self.best:
            self.retreats += 1
            failed = self.omega
            self.omega = 1.0 if self.retreats >= _OMEGA_RETREATS else 1.0 + 0.5 * (self.omega - 1.0)
            self.cap = failed - 0.05   # never again as high as what failed
            self.frozen = self.retreats >= _OMEGA_RETREATS
            self.probe_start = len(e) - 1
            self.best = e[-1]   # measure "twice the best" from here
            return
        span = max(1, _OMEGA_PROBE // check_every)
        if len(e) < self.probe_start + span + 1:
            return
        first, last = e[self.probe_start], e[-1]
        self.probe_start = len(e) - 1
        if not 0 < last < first:
            return
        rate = (last / first) ** (1.0 / (span * check_every))
        w = self.omega
        mu2 = min((rate + w - 1.0) ** 2 / (rate * w * w), 1.0)
        # Far from the solution the iteration is not linear: w climbs by _OMEGA_STEP at most.
        self.omega = max(w, min(self.cap, w + _OMEGA_STEP, 2.0 / (1.0 + math.sqrt(1.0 - mu2))))


def _run(pairs: list[tuple[_Side, _Side]], selves: list[_Side], eps_list: list[float], rho: Optional[float],
         tol: float, max_iter: int, check_every: int) -> tuple[int, float, str, float]:
    """The iterations; returns (n_iter, error, status, eps).

    Epsilon scaling: symmetric (averaged, Jacobi) updates of every potential, one
    iteration per epsilon of the schedule, as GeomLoss. Then, at the final
    epsilon, each problem until its own residual is <= tol (a finished problem
    is no longer updated), its error stalls, or max_iter: a cross pair (f, g)
    alternates (Gauss-Seidel: f from g, then g from the new f), over-relaxed
    once its convergence rate is known (``_Problem._tune``); a symmetric problem
    (OT(a, a)) keeps the averaged update, its fast fixed point.
    """
    final = len(eps_list) - 1
    for eps in eps_list[:-1]:
        damping = 1.0 if rho is None else 1.0 / (1.0 + eps / rho)
        sides = [s for pair in pairs for s in pair] + selves
        targets = [_target(s, eps, damping) for s in sides]   # every update reads the previous iteration
        for s, t in zip(sides, targets):
            s.value = 0.5 * (s.value + t)
    problems = [_Problem(pair) for pair in pairs] + [_Problem((s,)) for s in selves]
    n_iter = final
    eps = eps_list[-1]
    damping = 1.0 if rho is None else 1.0 / (1.0 + eps / rho)
    while True:
        active = [pr for pr in problems if pr.status is None]
        measure = (n_iter - final) % check_every == 0 or n_iter + 1 >= max_iter
        residuals = [pr.step(eps, damping, measure) for pr in active]
        n_iter += 1
        if measure:
            values = torch.stack(residuals).tolist()   # the one host sync of the iteration
            for pr, error in zip(active, values):
                pr.record(error, tol, check_every)
            if all(pr.status is not None for pr in problems):
                error = max(pr.errors[-1] for pr in problems)
                stalled = any(pr.status == "plateau" for pr in problems)
                return n_iter, error, "plateau" if stalled else "converged", eps
        if n_iter >= max_iter:
            return n_iter, max(pr.errors[-1] for pr in problems), "max_iter", eps


def _extrapolate(sides: list[_Side], eps: float, rho: Optional[float], gradient: bool) -> list:
    """A last Jacobi step without averaging (as GeomLoss): the potentials each side's softmin
    gives from the other's, and the softmins' derivatives in their points when asked."""
    damping = 1.0 if rho is None else 1.0 / (1.0 + eps / rho)
    outs = [s.softmin(s.points, s.other, s.other_log_w + s.partner.value / eps, eps, s.p, gradient) for s in sides]
    for s, (f, _) in zip(sides, outs):
        s.value = damping * f
    return [t for _, t in outs]


def _warn_unconverged(what: str, status: str, error: float, tol: float, n_iter: int, dtype,
                      stacklevel: int = 3) -> None:
    if status == "plateau":
        msg = (f"{what}: the marginal error stopped decreasing at {error:.3g} > tol={tol:g} after {n_iter} "
               f"iterations ({str(dtype).replace('torch.', '')} rounding floor); result.converged is False")
    else:
        msg = (f"{what}: not converged after max_iter={n_iter} iterations: marginal error {error:.3g} > "
               f"tol={tol:g}; result.converged is False")
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)


class _Envelope(torch.autograd.Function):
    """value(x, y, a, b) with gradients computed in the forward pass (envelope theorem:
    the potentials are optimal, so only the explicit dependence counts)."""

    @staticmethod
    def forward(ctx, x, y, a, b, value, grad_x, grad_y, grad_a, grad_b):
        ctx.grads = (grad_x, grad_y, grad_a, grad_b)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out):
        out = tuple(None if (g is None or not need) else grad_out * g
                    for g, need in zip(ctx.grads, ctx.needs_input_grad[:4]))
        return out + (None,) * 5


def _needs_grad(*tensors) -> bool:
    """Whether autograd records a gradient to any of ``tensors`` (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pair_envelope(xw, yw, wa, wb, value, f, g, df_x, dg_y, rho: Optional[float]) -> torch.Tensor:
    """OT(a, b) with its envelope gradients: a_i m_i df/dx_i, b_j m_j dg/dy_j, f, g
    (m: the plan's row masses over the weights, 1 when balanced)."""
    grad_x = (wa.detach() * _mass_factor(f, rho))[:, None] * df_x
    grad_y = (wb.detach() * _mass_factor(g, rho))[:, None] * dg_y
    return _Envelope.apply(xw, yw, wa, wb, value, grad_x, grad_y, f, g)


def _divergence_envelope(xw, yw, wa, wb, value, sides: list[_Side], derivatives, rho: Optional[float]) -> torch.Tensor:
    """S(a, b) with its envelope gradients, from the sides [f_ab, g_ab, f_aa, g_bb] of
    ``_sides(..., selves=True)`` and their softmins' derivatives (see sinkhorn_divergence)."""
    f_ab, g_ab, f_aa, g_bb = (s.value for s in sides)
    d_ab, d_ba, d_aa, d_bb = derivatives

    def point_grad(w, f_cross, d_cross, f_self, d_self):
        # OT(a, b) pulls x along -df_ab/dx; -OT(a, a) / 2 (x on both sides: twice) pushes it along df_aa/dx.
        m_cross, m_self = _mass_factor(f_cross, rho), _mass_factor(f_self, rho)
        return w[:, None] * (m_cross * d_cross.T).T - w[:, None] * (m_self * d_self.T).T

    grad_x = point_grad(wa.detach(), f_ab, d_ab, f_aa, d_aa)
    grad_y = point_grad(wb.detach(), g_ab, d_ba, g_bb, d_bb)
    return _Envelope.apply(xw, yw, wa, wb, value, grad_x, grad_y, f_ab - f_aa, g_ab - g_bb)


def _mass_factor(f: torch.Tensor, rho: Optional[float]) -> torch.Tensor | float:
    """Row masses of the plan over the weights, at the fixed point: 1 (balanced) or exp(-f / rho)."""
    return 1.0 if rho is None else torch.exp(-f / rho)


def _unbalanced_term(w: torch.Tensor, f: torch.Tensor, rho: float, eps: float) -> torch.Tensor:
    """(rho + eps / 2) <w, 1 - exp(-f / rho)> (GeomLoss's unbalanced dual value; Sejourne et al. 2019)."""
    return (rho + 0.5 * eps) * (w * -torch.expm1(-f / rho)).sum()


# ====================================================================== public: sinkhorn

def _prepare(what, x, y, a, b, blur, p, reach, cost, whitening):
    x, y = _cloud(x, "x"), _cloud(y, "y")
    _checks.same_device(x=x, y=y)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "y.shape[1]": y.shape[1]})
    p = _check_p(p)
    blur = _positive(blur, "blur")
    rho = _check_reach(reach)
    rho = None if rho is None else rho ** p
    dtype = reference.compute_dtype(x.dtype)
    a_in, b_in = a, b
    a = _weights(a, "a", x.shape[0], x, dtype)
    b = _weights(b, "b", y.shape[0], y, dtype)
    if rho is None:
        _check_balanced(a, b)
    else:
        for w, name in ((a_in, "a"), (b_in, "b")):
            if w is not None and w.requires_grad and torch.is_grad_enabled():
                raise NotImplementedError(f"{what}: no gradient with respect to the weights {name} of unbalanced "
                                          "OT (reach=...); pass it detached")
    xw, yw = _whiten(x.to(dtype), y.to(dtype), cost, whitening)
    return xw, yw, a, b, a_in, b_in, p, blur, rho, dtype


def _check_loop(scaling, tol, max_iter) -> tuple[float, float, int]:
    scaling = _checks.real(scaling, "scaling", positive=True)
    if not scaling < 1:
        raise ValueError(f"scaling must be in (0, 1), got {scaling}")
    return scaling, _positive(tol, "tol"), _checks.integer(max_iter, "max_iter", low=1)


def _log(w: torch.Tensor) -> torch.Tensor:
    return torch.log(w)  # log 0 = -inf: a point without mass, skipped by the softmin


@_arrays.accepts_arrays
def _sinkhorn_arrays(x, y, a, b, blur, p, scaling, tol, max_iter, reach, cost, whitening, f0, g0):
    scaling, tol, max_iter = _check_loop(scaling, tol, max_iter)
    xw, yw, wa, wb, a_in, b_in, p, blur, rho, dtype = _prepare("gencore.ot.sinkhorn", x, y, a, b, blur, p, reach,
                                                               cost, whitening)
    points_x, points_y = xw.detach(), yw.detach()
    wa_d, wb_d = wa.detach(), wb.detach()
    warm = f0 is not None or g0 is not None
    if warm:
        if f0 is None or g0 is None:
            raise ValueError("a warm start needs both f0 and g0")
        for t, name, n in ((f0, "f0", points_x.shape[0]), (g0, "g0", points_y.shape[0])):
            _checks.tensor(t, name, ndim=1)
            if t.shape[0] != n:
                raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
            _checks.same_device(x=points_x, **{name: t})
            if checks_values_of(t):
                _checks.finite(t, name)
        eps_list = [blur ** p]  # a warm start resumes at the target epsilon: no annealing
    else:
        eps_list = epsilon_schedule(p, max(_diameter(points_x, points_y), blur), blur, scaling)
    sides = _sides(points_x, points_y, wa_d, wb_d, p)
    if warm:
        sides[0].value, sides[1].value = f0.detach().to(dtype).clone(), g0.detach().to(dtype).clone()
    else:
        _start(sides, eps_list[0], rho)
    need_grad = _needs_grad(xw, yw, a_in, b_in)
    n_iter, error, status, eps, (df_x, dg_y) = _solve("gencore.ot.sinkhorn", sides, eps_list, rho, tol, max_iter,
                                                      dtype, gradient=need_grad)
    f, g = sides[0].value, sides[1].value
    value = _pair_value(wa_d, f, wb_d, g, rho, eps)
    if need_grad:
        value = _pair_envelope(xw, yw, wa, wb, value, f, g, df_x, dg_y, rho)
    return value, f, g, n_iter, error, status == "converged", status, eps


def sinkhorn(x: torch.Tensor, y: torch.Tensor, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
             blur: float = 0.05, p: int = 2, scaling: float = 0.5, tol: float = 1e-3, max_iter: int = 1000,
             reach: Optional[float] = None, cost: str = "sqeuclidean", whitening: Optional[torch.Tensor] = None,
             f0: Optional[torch.Tensor] = None, g0: Optional[torch.Tensor] = None) -> SinkhornResult:
    """Entropic optimal transport between point clouds, online log-domain Sinkhorn.

        OT_eps(a, b) = min_pi <pi, C> + eps KL(pi | a (x) b),   eps = blur^p,
        C_ij = |x_i - y_j|^2 / 2 (p = 2)  or  |x_i - y_j| (p = 1)

    (GeomLoss's convention: ``cost`` equals ``SamplesLoss("sinkhorn", p=p, blur=blur,
    debias=False)``). Each half-step is the softmin f_i = -eps log sum_j b_j
    exp((g_j - C_ij) / eps), streamed over tiles of y by a fused GEMM + exp kernel
    (the op ``gencore::ot_sinkhorn_softmin``), so nothing of size N x M exists.

    Args:
        x: [N, d] points, float (float32 fast path; float64 natively on the CPU;
            fp16/bf16 computed in float32), or a numpy / CuPy array. N >= 1.
        y: [M, d] points, same dtype and device.
        a, b: [N], [M] weights >= 0, some mass (default uniform 1 / N, 1 / M);
            balanced OT needs a.sum() == b.sum() (relative 1e-4).
        blur: eps = blur^p, > 0 (a length, in the units of x).
        p: 2 (squared Euclidean cost / 2) or 1 (Euclidean cost, eps = blur). For
            p = 1 the kernel takes the square root of the GEMM's expansion of
            |x - y|^2: in float32, distances far below the points' spread carry
            ~ sqrt(ulp) |x'| of rounding (|x'| the distance to the data mean), as
            GeomLoss's tensorized backend; pairs within 16 ulp of coincidence
            count as coincident (distance 0, subgradient 0).
        scaling: epsilon scaling, in (0, 1): eps goes from diameter^p (the
            bounding-box diagonal of both clouds) down to blur^p, divided by
            scaling^p each iteration (symmetric, averaged updates of f and g, as
            GeomLoss), then stays at blur^p until convergence, where f and g
            alternate with an adaptive over-relaxation (measured: a third to a
            quarter of the iterations of averaged updates; see ``_Problem._tune``).
        tol: stop when the marginal error (``SinkhornResult.marginal_error``: the
            fraction of mass the plan misplaces) is <= tol at the final eps. The
            default 1e-3 (0.1% of the mass) is well above float32's rounding
            floor (~1e-6) and gives the cost to about tol * diameter^p / p.
        max_iter: hard cap on iterations (scaling included). Reaching it sets
            ``converged=False`` and warns (RuntimeWarning); the work is returned.
            An error that stops decreasing above tol (PLATEAU_ITERATIONS
            iterations without a new minimum: float32 cannot reach tol) stops
            early the same way, with status "plateau".
        reach: unbalanced OT: KL-relaxed marginals with rho = reach^p (each
            update damped by 1 / (1 + eps / rho), as GeomLoss); None: balanced.
            ``cost`` is then (rho + eps/2) (<a, 1 - e^{-f/rho}> + <b, 1 - e^{-g/rho}>).
        cost: "sqeuclidean" (default: the cost of p above) or "whitened": that cost
            of the distance ((x - y)^T W (x - y))^(1/2), i.e. (x - y)^T W (x - y) / 2
            for p = 2 (TAROT's cost), with ``whitening=W`` [d, d] symmetric positive
            definite, computed by transforming the points by W's Cholesky factor.
        f0, g0: warm start, [N] and [M] potentials (e.g. of a related problem's
            result): iterations start at the final eps from them, no annealing.

    Returns:
        ``SinkhornResult`` (cost, f [N], g [M], n_iter, marginal_error,
        converged, status, eps), in float64 for float64 input, else float32.

    Memory: O((N + M) d) plus the kernel's tiles (per thread about 256 x 1024 floats,
    and O(N) partials when few queries are split over threads), never N x M.
    Gradients: ``cost`` is differentiable w.r.t. x, y (and W) and, balanced, a and b,
    through the envelope theorem: d/dx_i = sum_j pi_ij dC_ij/dx_i = a_i m_i df_i/dx_i
    with m_i the row mass of the plan over a_i (1 when balanced) and, P_ij = pi_ij /
    (a_i m_i), df_i/dx_i = x_i - T(x_i) (p = 2, T the barycentric projection) or
    sum_j P_ij (x_i - y_j) / |x_i - y_j| (p = 1; coincident pairs add 0: a
    subgradient), streamed by the kernel (p = 1: one more pass, its weights
    P_ij / |x_i - y_j|); d/da = f, d/db = g.
    NaN/inf in x, y, a, b raise ValueError (on CUDA only with
    ``gencore.set_check_finite("always")``). Inputs are never modified.
    """
    out = _sinkhorn_arrays(x, y, a, b, blur, p, scaling, tol, max_iter, reach, cost, whitening, f0, g0)
    return SinkhornResult(*out)


# ====================================================================== public: the divergence

@_arrays.accepts_arrays
def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, a: Optional[torch.Tensor] = None,
                        b: Optional[torch.Tensor] = None, blur: float = 0.05, p: int = 2,
                        reach: Optional[float] = None, scaling: float = 0.5, tol: float = 1e-3,
                        max_iter: int = 1000, cost: str = "sqeuclidean",
                        whitening: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The debiased Sinkhorn divergence (Feydy et al. 2019), a 0-d tensor:

        S(a, b) = OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2

    equal to GeomLoss's ``SamplesLoss("sinkhorn", p=p, blur=blur, reach=reach,
    scaling=scaling, debias=True)`` (p = 2: cost |x - y|^2 / 2, p = 1: |x - y|).
    The three problems run together (the
    symmetric ones with one potential each), with the arguments, schedule and
    stopping rule of ``sinkhorn`` (the largest of the marginal errors <= tol);
    non-convergence warns (RuntimeWarning). Unbalanced (reach): the value is
    (rho + eps/2)(<a, e^{-f_aa/rho} - e^{-f_ab/rho}> + <b, e^{-g_bb/rho} - e^{-g_ab/rho}>).

    Gradients (envelope theorem), to x, y (and W) always and to a, b when balanced:
        dS/dx_i = a_i (m^ab_i df_ab/dx_i - m^aa_i df_aa/dx_i)
    with m the row masses of the two plans over a (1 when balanced) and df/dx the
    softmins' derivatives of ``sinkhorn`` (p = 2: x_i - T(x_i), T the barycentric
    projection; p = 1: the plan's mean unit vector from y to x_i);
    dS/da = f_ab - f_aa, dS/db = g_ab - g_bb.
    Memory O((N + M) d) plus the kernel's tiles; NaN policy as ``sinkhorn``.
    """
    scaling, tol, max_iter = _check_loop(scaling, tol, max_iter)
    xw, yw, wa, wb, a_in, b_in, p, blur, rho, dtype = _prepare("gencore.ot.sinkhorn_divergence", x, y, a, b, blur,
                                                               p, reach, cost, whitening)
    px, py = xw.detach(), yw.detach()
    wa_d, wb_d = wa.detach(), wb.detach()
    eps_list = epsilon_schedule(p, max(_diameter(px, py), blur), blur, scaling)
    sides = _sides(px, py, wa_d, wb_d, p, selves=True)
    _start(sides, eps_list[0], rho)
    need_grad = _needs_grad(xw, yw, a_in, b_in)
    _, _, _, eps, (d_ab, d_ba, d_aa, d_bb) = _solve("gencore.ot.sinkhorn_divergence", sides, eps_list, rho, tol,
                                                    max_iter, dtype, gradient=need_grad)
    f_ab, g_ab, f_aa, g_bb = (s.value for s in sides)
    value = _divergence_value(wa_d, wb_d, f_ab, g_ab, f_aa, g_bb, rho, eps)
    if not need_grad:
        return value
    return _divergence_envelope(xw, yw, wa, wb, value, sides, (d_ab, d_ba, d_aa, d_bb), rho)


# ====================================================================== public: the plan's map

@_arrays.accepts_arrays
def barycentric_projection(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, b: Optional[torch.Tensor] = None,
                           blur: float = 0.05, p: int = 2, cost: str = "sqeuclidean",
                           whitening: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The barycentric map of an entropic plan, without the plan: T [N, d] with

        T(x_i) = sum_j pi_ij y_j / sum_j pi_ij = sum_j softmax_j(log b_j + (g_j - C(x_i, y_j)) / eps) y_j

    for the potential ``g`` of y (``sinkhorn(x, y, ...).g``; f cancels out). At the points x
    of the solve it maps each to where its mass goes (domain adaptation's mapping, the OT
    displacement x -> T(x)); any other x extends the map out of sample (the softmin's
    smooth extension, as GeomLoss's potentials). For p = 2, x - T(x) is the gradient of
    the potential f (the envelope gradient's df/dx). Unbalanced plans (reach) have the
    same conditional, so their g works unchanged.

    Args:
        x: [N, d] query points (N = 0 gives [0, d]), float, or a numpy / CuPy array.
        y: [M, d] points of the target, same dtype and device; M >= 1.
        g: [M] the potential on y, finite.
        b: [M] weights of y >= 0 with some mass (default uniform 1 / M), as in the solve.
        blur, p, cost, whitening: as in ``sinkhorn`` (eps = blur^p; use the solve's values).

    Returns T in float64 for float64 input, else float32. Streamed by the Sinkhorn
    softmin's kernel (its weighted-mean output, ``gencore::ot_barycentric_projection``):
    memory O((N + M) d), never N x M. Not differentiable (refused when an input requires
    grad); inputs are never modified.
    """
    _checks.tensor(x, "x", ndim=2)
    if x.shape[1] == 0:
        raise ValueError("x has dimension d = 0")
    y = _cloud(y, "y", finite=False)   # the op checks y's values
    _checks.same_device(x=x, y=y)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "y.shape[1]": y.shape[1]})
    _checks.tensor(g, "g", ndim=1)
    if g.shape[0] != y.shape[0]:
        raise ValueError(f"g must hold one potential per point of y: shape [{y.shape[0]}], got {tuple(g.shape)}")
    _checks.same_device(y=y, g=g)
    if checks_values_of(g):
        _checks.finite(g, "g")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, y, g, b, whitening)):
        raise NotImplementedError("gencore.ot.barycentric_projection is not differentiable; pass detached tensors")
    p = _check_p(p)
    eps = _positive(blur, "blur") ** p
    dtype = reference.compute_dtype(x.dtype)
    wb = _weights(b, "b", y.shape[0], y, dtype)
    points_x, points_y = x.to(dtype), y.to(dtype)
    factor = _whitening_factor(points_x, cost, whitening)
    xw, yw = (points_x, points_y) if factor is None else (points_x @ factor, points_y @ factor)
    mapped = BARYCENTRIC_PROJECTION(xw, yw, _log(wb) + g.to(dtype) / eps, eps, p)
    if factor is None:
        return mapped
    return torch.linalg.solve_triangular(factor, mapped, upper=False, left=False)   # back from x L coordinates


# ====================================================================== public: a given cost matrix

@_arrays.accepts_arrays
def _cost_matrix_arrays(M, a, b, reg, reach, tol, max_iter):
    _checks.tensor(M, "M")
    if M.dim() not in (2, 3):
        raise ValueError(f"M must be a [n, m] cost matrix or a [B, n, m] batch, got shape {tuple(M.shape)}")
    if M.shape[-1] == 0 or M.shape[-2] == 0:
        raise ValueError(f"M is empty (shape {tuple(M.shape)}): both measures need at least one point")
    reg = _positive(reg, "reg")
    rho = _check_reach(reach)
    tol, max_iter = _positive(tol, "tol"), _checks.integer(max_iter, "max_iter", low=1)
    dtype = reference.compute_dtype(M.dtype)
    batched = M.dim() == 3
    cost = (M if batched else M[None]).detach().to(dtype)          # [B, n, m]
    nb, n, m = cost.shape

    def weights(w, name, size):
        if w is None:
            return torch.full((nb, size), 1.0 / size, dtype=dtype, device=M.device)
        _checks.tensor(w, name)
        if w.dim() == 1 and w.shape[0] == size:
            w = w[None].expand(nb, size)
        elif not (w.dim() == 2 and tuple(w.shape) == (nb, size) and batched):
            want = f"[{size}]" + (f" or [{nb}, {size}]" if batched else "")
            raise ValueError(f"{name} must have shape {want} (M is {tuple(M.shape)}), got {tuple(w.shape)}")
        _checks.same_device(M=M, **{name: w})
        if checks_values_of(w):
            _checks.finite(w, name)
        return w.detach().to(dtype)

    wa, wb = weights(a, "a", n), weights(b, "b", m)
    if checks_values_of(wa):
        check_dense_weights("native", cost, wa, wb)   # before the masses are compared
    if rho is None and checks_values_of(wa):
        mass_a, mass_b = wa.sum(-1), wb.sum(-1)
        if bool(((mass_a - mass_b).abs() > 1e-4 * torch.maximum(mass_a, mass_b)).any()):
            raise ValueError("balanced OT needs a.sum() == b.sum() for every problem (or pass reach=)")
    damping = 1.0 if rho is None else 1.0 / (1.0 + reg / rho)
    f, g, n_iters, errors, statuses = SINKHORN_DENSE(cost, wa, wb, reg, damping, tol, max_iter, PLATEAU_ITERATIONS)
    n_iter, error = int(n_iters.max()), float(errors.max())
    codes = set(statuses.tolist())
    status = ("converged" if codes == {reference.DENSE_CONVERGED} else
              reference.DENSE_STATUS_NAMES[reference.DENSE_MAX_ITER if reference.DENSE_MAX_ITER in codes
                                           else reference.DENSE_PLATEAU])
    plan = wa[:, :, None] * wb[:, None, :] * torch.exp((f[:, :, None] + g[:, None, :] - cost) / reg)
    if rho is None:
        value = (wa * f).sum(-1) + (wb * g).sum(-1)
    else:
        value = (rho + 0.5 * reg) * ((wa * -torch.expm1(-f / rho)).sum(-1) + (wb * -torch.expm1(-g / rho)).sum(-1))
    if status != "converged":
        _warn_unconverged("gencore.ot.sinkhorn_cost_matrix", status, error, tol, n_iter, dtype)
    if not batched:
        value, f, g, plan = value[0], f[0], g[0], plan[0]
    return value, f, g, n_iter, error, status == "converged", status, reg, plan


def sinkhorn_cost_matrix(M: torch.Tensor, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None, *,
                         reg: float, reach: Optional[float] = None, tol: float = 1e-6,
                         max_iter: int = 10000) -> SinkhornResult:
    """Log-domain Sinkhorn on a given cost matrix, or a batch of them in one call.

        OT_reg(a, b) = min_pi <pi, M> + reg KL(pi | a (x) b)

    the problem of POT's ``ot.sinkhorn_log(a, b, M, reg)`` (same plan; POT's
    ``sinkhorn2`` reports <pi, M>, here ``cost`` is the dual value <a, f> + <b, g>).

    Args:
        M: [n, m] cost matrix, or [B, n, m] for B independent problems, float,
            finite (any torch device; numpy / CuPy arrays accepted).
        a, b: [n], [m] weights >= 0 (default uniform 1 / n, 1 / m), or [B, n],
            [B, m] per problem; balanced problems need equal masses.
        reg: the entropic regularisation (POT's ``reg``, GeomLoss's eps), > 0.
        reach: None (balanced) or the KL marginal relaxation rho > 0 (the damped
            update of unbalanced OT; POT's ``reg_m``).
        tol: stop when every problem's row-marginal error (as ``sinkhorn``) is <= tol.
        max_iter: iteration cap; reaching it warns and sets ``converged=False``.

    Returns:
        ``SinkhornResult`` with ``plan`` [n, m] ([B, n, m]), f [n] ([B, n]),
        g [m] ([B, m]), cost 0-d ([B]); n_iter and marginal_error are the worst
        problem's; ``status`` "converged" when every problem is, else "max_iter" when
        one reached the cap, else "plateau" (an error that stopped decreasing above tol:
        the rounding floor of float32 is near 1e-7), with a RuntimeWarning.

    The whole loop is one native op (``gencore::ot_sinkhorn_dense``: CPU SIMD
    kernel, threads over problems or over the rows and column blocks of one; on
    CUDA one block per problem, no host synchronisation): alternating updates
    as POT's sinkhorn_log, no epsilon scaling, every problem stopping on its own.
    Memory: M itself plus O(B (n + m)), and the returned plan [B, n, m]; meant for
    small problems (the streamed solver for point clouds is ``sinkhorn``). No
    gradients (computed on detached inputs).
    """
    return SinkhornResult(*_cost_matrix_arrays(M, a, b, reg, reach, tol, max_iter))
