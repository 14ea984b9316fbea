"""Exact optimal transport (network simplex), sliced Wasserstein, minibatch OT coupling."""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Optional

import torch

from .. import _arrays, _checks, _dispatch, _op
from . import reference
from .ops._emd import EMD
from .ops._sliced import SLICED_1D

__all__ = ["EMDResult", "emd", "emd2", "sliced_wasserstein", "ot_coupling", "default_max_iter"]


def default_max_iter(n: int, m: int) -> int:
    """The default pivot limit for an n x m problem: 10 n m (at least 100 000).

    Grows with the problem (the pivots a network simplex needs grow faster than
    n + m), so it is a guard against a runaway solve, not a hidden early stop
    (POT's fixed 100 000 stops 4000 x 4000 problems 1.6-2.7% above the optimum).
    """
    return max(100_000, 10 * n * m)


@dataclasses.dataclass
class EMDResult:
    """The result of :func:`emd`; a leading batch dimension B when M was [B, n, m].

    Attributes:
        cost: [] / [B] float64, sum_ij P_ij M_ij.
        index: [2, K] / [B, 2, K] int64, rows then columns of the plan's entries
            (K = n + m - 1), sorted by (row, column), padded with -1.
        mass: [K] / [B, K] float64, the entries' mass (> 0), padded with 0.
        nnz: [] / [B] int64, the entries used (<= n + m - 1).
        duals: (u [n] / [B, n], v [m] / [B, m]) float64, u_i + v_j <= M_ij with
            equality on the plan's support, shifted so that a.u = b.v (= cost / 2).
        n_iter: [] / [B] int64, pivots made.
        status: [] / [B] int64: 0 optimal, 1 pivot limit reached (the plan is
            feasible but not proven optimal, the duals are those of the last
            basis), 2 infeasible (mass left on the artificial arcs).
        shape: (n, m).
    """

    cost: torch.Tensor
    index: torch.Tensor
    mass: torch.Tensor
    nnz: torch.Tensor
    duals: tuple
    n_iter: torch.Tensor
    status: torch.Tensor
    shape: tuple

    @property
    def converged(self):
        """True (or a [B] bool tensor) where the solve reached a proven optimum."""
        ok = self.status == reference.EMD_OPTIMAL
        return bool(ok) if ok.dim() == 0 else ok

    @property
    def plan(self):
        """The plan as a torch sparse COO tensor [n, m] (unbatched results only)."""
        if self.nnz.dim() != 0:
            raise ValueError("plan: a batched result holds B plans; use result.dense() or index/mass per problem")
        k = int(self.nnz)
        return torch.sparse_coo_tensor(self.index[:, :k], self.mass[:k], self.shape).coalesce()

    def dense(self) -> torch.Tensor:
        """The plan as a dense [n, m] (or [B, n, m]) float64 tensor."""
        n, m = self.shape
        lead = tuple(self.cost.shape)
        out = torch.zeros(lead + (n * m,), dtype=torch.float64, device=self.mass.device)
        flat = (self.index[..., 0, :] * m + self.index[..., 1, :]).clamp_min(0)
        out.scatter_add_(-1, flat, self.mass)  # padding adds 0 at entry 0
        return out.reshape(lead + (n, m))

    to_dense = dense


def _uniform(size: int, like: torch.Tensor, lead: tuple) -> torch.Tensor:
    return torch.full(lead + (size,), 1.0 / size, dtype=torch.float64, device=like.device)


@_arrays.accepts_arrays
def emd(a: Optional[torch.Tensor], b: Optional[torch.Tensor], M: torch.Tensor,
        max_iter: Optional[int] = None) -> EMDResult:
    """Exact optimal transport (earth mover's distance) by the network simplex.

    Solves min_P sum_ij P_ij M_ij over P >= 0 with P 1 = a and P^T 1 = b
    (Kantorovich), for one problem or a batch of B problems solved in parallel
    on the threads of ``gencore.set_num_threads`` (one problem per thread).

    Args:
        a: [n] (or [B, n]) non-negative weights, or None for uniform 1/n.
        b: [m] (or [B, m]) non-negative weights with the total of ``a`` (relative
            tolerance 1e-6; b is then rescaled to a's total), or None for uniform.
        M: [n, m] (or [B, n, m]) cost, any floating dtype, any strides; computed
            in float64 (float32 costs are read as float32 and widened).
        max_iter: pivot limit per problem; None: ``default_max_iter(n, m)`` = 10 n m.

    Returns:
        EMDResult: ``.cost``, the sparse ``.plan`` (``.index`` [2, K], ``.mass`` [K],
        ``.nnz``; ``.dense()``), ``.duals`` (u, v), ``.converged``, ``.status``,
        ``.n_iter``. Numpy inputs are accepted; the result holds torch tensors.

    Algorithm: primal network simplex on the bipartite graph with an artificial
    root (initial tree: every row ships to the root, the root feeds every
    column), block-search pricing (blocks of ~sqrt(n m) arcs, the most negative
    reduced cost of the first block that has one), strongly feasible trees (the
    leaving arc is the last blocking arc from the apex), so degenerate problems
    (uniform weights, ties) cannot cycle. Memory O(n m) (a float64 copy of the
    cost and one byte per arc). Rows and columns of zero mass take no part; their
    duals are the largest feasible ones. The plan is a basic solution: at most
    n + m - 1 entries.

    When the pivot limit is reached: ``converged`` is False, status 1, a
    RuntimeWarning, and the plan is still feasible (mass the tree had not yet
    routed is spread north-west-corner style). Never raises for it.

    NaN/inf in M, a or b, negative weights, totals that differ, empty problems:
    ValueError naming the argument. No gradients (use the duals: d cost / d a = u,
    d cost / d M = P). CUDA tensors are solved by the CPU kernel on host copies
    (the network simplex is sequential pointer chasing, with no good GPU form):
    one device-to-host copy and a host synchronisation; results come back on the device
    (also where gencore._cuda is missing or not built for the GPU).

    The reference (``gencore.ot.reference.emd``) runs the same algorithm in pure
    Python (small problems only); POT's ``ot.emd`` is the independent oracle of the tests.
    """
    _checks.tensor(M, "M")
    lead = tuple(M.shape[:-2]) if M.dim() == 3 else ()
    if M.dim() not in (2, 3):
        raise ValueError(f"M must be 2-D [n, m] or 3-D [B, n, m], got shape {tuple(M.shape)}")
    n, m = M.shape[-2], M.shape[-1]
    if a is None:
        a = _uniform(n, M, lead)
    if b is None:
        b = _uniform(m, M, lead)
    if max_iter is None:
        max_iter = default_max_iter(n, m)
    args = EMD._check(a, b, M, max_iter)
    if M.device.type == "cuda" and EMD.backend(args, warn=False) == _dispatch.REFERENCE \
            and not _dispatch.forced_reference():
        # No usable gencore._cuda: the CPU kernel on host copies still beats the pure-Python reference.
        outputs = EMD(a.cpu(), b.cpu(), M.cpu(), max_iter)
        outputs = tuple(t.to(M.device) for t in outputs)
    else:
        outputs = EMD(*args)
    cost, index, mass, nnz, u, v, n_iter, status = outputs
    result = EMDResult(cost, index, mass, nnz, (u, v), n_iter, status, (n, m))
    limited = status == reference.EMD_ITERATION_LIMIT
    if bool(limited.any()):
        count = int(limited.sum())
        warnings.warn(f"emd: the pivot limit max_iter={max_iter} was reached in {count} problem(s): the plan is "
                      "feasible but not proven optimal (result.converged is False); raise max_iter",
                      RuntimeWarning, stacklevel=3)
    infeasible = status == reference.EMD_INFEASIBLE
    if bool(infeasible.any()):
        warnings.warn("emd: mass left on the artificial arcs (the totals of a and b disagree beyond rounding)",
                      RuntimeWarning, stacklevel=3)
    return result


@_arrays.accepts_arrays
def emd2(a: Optional[torch.Tensor], b: Optional[torch.Tensor], M: torch.Tensor,
         max_iter: Optional[int] = None) -> torch.Tensor:
    """The optimal cost of :func:`emd` alone ([] or [B] float64), as POT's ``ot.emd2``."""
    return emd(a, b, M, max_iter).cost


def _random_projections(d: int, count: int, seed, dtype, device) -> torch.Tensor:
    """[d, count] unit columns, Gaussian directions (uniform on the sphere), drawn on the CPU."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(_checks.integer(seed, "seed", low=0))
    theta = torch.randn(d, count, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return theta.to(dtype=dtype, device=device)


def _sliced_weights(w, size, name, like):
    if w is None:
        return torch.full((size,), 1.0 / size, dtype=torch.float64, device=like.device)
    _checks.tensor(w, name, ndim=1)
    if w.shape[0] != size:
        raise ValueError(f"{name} must have {size} weights (one per point), got {w.shape[0]}")
    if w.device.type != "meta":
        _checks.finite(w, name)
        if bool((w < 0).any()):
            raise ValueError(f"{name} has negative weights")
        if not float(w.double().sum()) > 0:
            raise ValueError(f"{name} must have a positive total")
    return w.detach().double() / w.detach().double().sum()


@_arrays.accepts_arrays
def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, a: Optional[torch.Tensor] = None,
                       b: Optional[torch.Tensor] = None, n_projections: int = 50, p: float = 2,
                       projections: Optional[torch.Tensor] = None, seed: Optional[int] = None) -> torch.Tensor:
    """Sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015), as POT's
    ``ot.sliced_wasserstein_distance``:

        SW_p = ( (1/P) sum_k W_p^p(theta_k # mu, theta_k # nu) )^(1/p)

    with mu = sum_i a_i delta(x_i), nu = sum_j b_j delta(y_j) and W_p^p the 1-D
    Wasserstein distance between the projections on the unit direction theta_k,
    integrated exactly over the merged quantile functions.

    Args:
        x: [n, D], y: [m, D] points (float32/float64; fp16/bf16 in float32).
        a: [n], b: [m] non-negative weights (normalised to total 1), None: uniform.
        n_projections: P random directions (ignored when ``projections`` is given).
        p: the order, > 0 (default 2).
        projections: [D, P] given directions (used as given, not normalised: POT's convention).
        seed: seed of the CPU generator that draws the directions (Gaussian columns
            normalised to unit length); None draws a fresh seed.

    Returns a scalar in x's dtype (float32 for fp16/bf16). Cost: the GEMMs
    [P, D] x [D, n + m]; then, parallel over projections, a stable radix sort of
    each projected row and the merge of the two cumulative weight sequences,
    O(P (n + m)) (native CPU kernel; on CUDA torch's segmented sort, then
    gencore's integration kernel, a block per projection, deterministic).
    Memory O(P (n + m)).

    Gradients flow to x and y (through the sort's matching: almost everywhere the
    exact gradient), not to a, b or the projections. NaN/inf in x or y: ValueError
    on the CPU.
    """
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(y, "y", ndim=2)
    _checks.same_device(x=x, y=y)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("feature dimension", **{"x.shape[1]": x.shape[1], "y.shape[1]": y.shape[1]})
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"x and y must be non-empty, got {x.shape[0]} and {y.shape[0]} points")
    p = _checks.real(p, "p", positive=True)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if _op.checks_values_of(x):  # the finiteness policy of the ops (not on CUDA unless "always")
        _checks.finite(x, "x")
        _checks.finite(y, "y")
    if projections is None:
        count = _checks.integer(n_projections, "n_projections", low=1)
        theta = _random_projections(x.shape[1], count, seed, dtype, x.device)
    else:
        _checks.tensor(projections, "projections", ndim=2)
        if projections.shape[0] != x.shape[1] or projections.shape[1] == 0:
            raise ValueError(f"projections must be [D={x.shape[1]}, P >= 1], got shape {tuple(projections.shape)}")
        theta = projections.detach().to(dtype=dtype, device=x.device)
    wa = _sliced_weights(a, x.shape[0], "a", x)
    wb = _sliced_weights(b, y.shape[0], "b", y)
    # theta^T x^T gives the projections as contiguous rows [P, n], the layout the kernel sorts.
    xp = theta.T @ x.to(dtype).T
    yp = theta.T @ y.to(dtype).T
    per_projection = SLICED_1D(xp, yp, wa, wb, p)
    return per_projection.mean().pow(1.0 / p)


@_arrays.accepts_arrays
def ot_coupling(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", *, blur: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Minibatch OT coupling for flow matching (OT-CFM, Tong et al. 2023; Pooladian et al. 2023).

    Given equal-size batches x0 [N, ...] and x1 [N, ...] with uniform weights and
    the squared Euclidean cost between flattened samples, returns ``perm`` [N]
    int64: train on the pairs ``x0, x1[perm]``.

    method:
        ``"exact"``: an optimal assignment, solved as the N x N EMD with the
            network simplex (uniform square problems have a permutation as an
            optimal vertex: each row's mass lies on one column). ``perm`` is a
            permutation.
        ``"sinkhorn"``: a draw from the entropic plan pi (``gencore.ot.sinkhorn``
            at ``blur``; by default blur^2 = 0.05 max_ij |x0_i - x1_j|^2 / 2, the
            regularisation OT-CFM uses on its max-normalised cost): each x0[i]
            gets x1[j] with probability pi_ij / a_i. Rows are drawn independently,
            so ``perm`` may repeat a column (as OT-CFM's sampler, which draws pairs
            from pi with replacement); smaller blur approaches the exact coupling.
            ``generator`` seeds the draw.

    Cost: the [N, N] distance matrix of the minibatch (one GEMM, float64) plus
    the EMD, or the Sinkhorn loop plus one [N, N] row draw.
    Not differentiable (indices). NaN/inf: ValueError.
    """
    _checks.choice(method, "method", ("exact", "sinkhorn"))
    _checks.tensor(x0, "x0")
    _checks.tensor(x1, "x1")
    _checks.same_device(x0=x0, x1=x1)
    if x0.dim() == 0 or x1.dim() == 0 or x0.shape[0] != x1.shape[0]:
        raise ValueError(f"x0 and x1 must be batches of the same size, got shapes {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x0 and x1 samples must have one shape, got {tuple(x0.shape[1:])} and "
                         f"{tuple(x1.shape[1:])}")
    if blur is not None and not (isinstance(blur, (int, float)) and math.isfinite(blur) and blur > 0):
        raise ValueError(f"blur must be a positive finite number or None, got {blur!r}")
    n = x0.shape[0]
    if n == 0:
        raise ValueError("x0 and x1 are empty batches")
    u = x0.detach().reshape(n, -1).to(torch.float64)
    w = x1.detach().reshape(n, -1).to(torch.float64)
    _checks.finite(u, "x0")
    _checks.finite(w, "x1")
    cost = torch.cdist(u, w).square()
    if method == "exact":
        return emd(None, None, cost).dense().argmax(1)
    from .sinkhorn import sinkhorn

    half_cost = cost / 2  # gencore.ot.sinkhorn's C = |x - y|^2 / 2
    if blur is None:
        blur = math.sqrt(max(0.05 * float(half_cost.max()), 1e-300))
    result = sinkhorn(u, w, blur=blur)
    eps = result.eps
    # pi_ij / a_i = b_j exp((f_i + g_j - C_ij) / eps): f_i only normalises row i.
    logits = (result.g.to(torch.float64)[None, :] - half_cost) / eps
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).flatten()
