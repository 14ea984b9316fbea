"""Pure-torch reference of the ot family: the specification and the fallback.

Conventions (as GeomLoss): for p = 2 the ground cost is C(x, y) = |x - y|^2 / 2,
for p = 1 it is |x - y|; epsilon = blur^p. Weights a [N], b [M] are
non-negative; balanced problems need sum a = sum b. Every function works on
any device and dtype torch supports; float64 inputs give the oracle.
"""
from __future__ import annotations

import math

import torch

__all__: list = []

# ---------------------------------------------------------------------------
# Sinkhorn (entropic OT): softmin, the Sinkhorn loop, the divergence
# ---------------------------------------------------------------------------
#
# For p = 2, C_ij = |x_i - y_j|^2 / 2; for p = 1, C_ij = |x_i - y_j|. A Sinkhorn
# half-step is the softmin
#
#     f_i = -eps log sum_j exp(h_j - C_ij / eps),    h_j = log b_j + g_j / eps,
#
# and its derivative in its query point, with P_ij = softmax_j(h_j - C_ij / eps),
#
#     p = 2:  df_i/dx_i = sum_j P_ij (x_i - y_j) = x_i - T(x_i)    (T: the barycentric projection)
#     p = 1:  df_i/dx_i = sum_j P_ij (x_i - y_j) / |x_i - y_j|    (a y_j equal to x_i adds 0),
#
# what the envelope gradients of the solvers are made of. With these, the plan is
# pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) and, at convergence of the
# balanced problem, OT_eps(a, b) = <a, f> + <b, g> (GeomLoss's convention).

_SOFTMIN_TILE = 2048  # y rows per tile: memory N x tile, never N x M


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs are computed (and returned) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ground_cost(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """C [N, M]: |x_i - y_j|^2 / 2 (p = 2) or |x_i - y_j| (p = 1), from direct differences
    (exactly 0 for equal points; autograd gives a zero subgradient there)."""
    distance = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    return 0.5 * distance.square() if p == 2 else distance


def sinkhorn_softmin(x: torch.Tensor, y: torch.Tensor, log_weights: torch.Tensor, eps: float, p: int,
                     gradient: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(f [N], df/dx [N, d] or [N, 0]): the softmin above and, when ``gradient``, its
    derivative in the query points.

    x [N, d], y [M, d], log_weights h [M] (may hold -inf, not every entry),
    eps > 0, p 1 or 2. An online log-sum-exp over tiles of y with distances
    computed directly (no expansion), so memory is O(N tile).
    """
    return _streamed_softmax(x, y, log_weights, eps, p, "gradient" if gradient else None)


def barycentric_projection(x: torch.Tensor, y: torch.Tensor, log_weights: torch.Tensor, eps: float,
                           p: int) -> torch.Tensor:
    """T [N, d]: T(x_i) = sum_j P_ij y_j, P_ij = softmax_j(h_j - C_ij / eps) (arguments as
    ``sinkhorn_softmin``): with h = log b + g / eps the plan's conditional mean of y given
    x_i, the barycentric map of the entropic plan, defined for any x (p = 2: x - df/dx).
    Streamed like the softmin, O(N tile) memory."""
    return _streamed_softmax(x, y, log_weights, eps, p, "barycentre")[1]


def _streamed_softmax(x, y, log_weights, eps, p, moment):
    """(f, M): f the softmin, M a mean under P_ij = softmax_j(h_j - C_ij / eps) by one online
    pass over tiles of y: "gradient" sum_j w_ij (x_i - y_j) (w = P for p = 2, P / |x_i - y_j|
    for p = 1, 0 at distance 0), "barycentre" sum_j P_ij y_j, None an [N, 0] tensor."""
    dtype = compute_dtype(x.dtype)
    x, y, h = x.to(dtype), y.to(dtype), log_weights.to(dtype)
    n, d = x.shape
    running_max = torch.full((n,), -math.inf, dtype=dtype, device=x.device)
    total = torch.zeros(n, dtype=dtype, device=x.device)
    acc = torch.zeros(n, 0 if moment is None else d, dtype=dtype, device=x.device)   # unnormalised
    for start in range(0, y.shape[0], _SOFTMIN_TILE):
        tile = y[start:start + _SOFTMIN_TILE]
        cost = ground_cost(x, tile, p)
        logits = h[start:start + _SOFTMIN_TILE] - cost / eps   # [N, T]
        new_max = torch.maximum(running_max, logits.amax(1))
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        numer = torch.exp(logits - shift[:, None])
        rescale = torch.exp(running_max - shift)
        total = total * rescale + numer.sum(1)
        if moment == "gradient":
            w = numer if p == 2 else torch.where(cost > 0, numer / cost, torch.zeros_like(numer))
            acc = acc * rescale[:, None] + w.sum(1)[:, None] * x - w @ tile
        elif moment == "barycentre":
            acc = acc * rescale[:, None] + numer @ tile
        running_max = new_max
    f = -eps * (running_max + torch.log(total))
    return f, (acc if moment is None else acc / total[:, None])


def sinkhorn_softmin_dense(x: torch.Tensor, y: torch.Tensor, log_weights: torch.Tensor, eps: float,
                           p: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (f, df/dx), in float64, from the dense [N, M] cost and autograd of the dense
    logsumexp: the tests' oracle, sharing no arithmetic with the streamed forms."""
    x = x.detach().double().requires_grad_()
    with torch.enable_grad():
        f = -eps * torch.logsumexp(log_weights.double() - ground_cost(x, y.double(), p) / eps, 1)
        (grad,) = torch.autograd.grad(f.sum(), x)   # f_i depends on x_i only
    return f.detach(), grad

# ---------------------------------------------------------------------------
# Exact OT (network simplex), sliced Wasserstein
# ---------------------------------------------------------------------------

#: Dense Sinkhorn status codes (the native kernel's, csrc/ot/sinkhorn_dense.h).
DENSE_CONVERGED, DENSE_MAX_ITER, DENSE_PLATEAU = 0, 1, 2
DENSE_STATUS_NAMES = {DENSE_CONVERGED: "converged", DENSE_MAX_ITER: "max_iter", DENSE_PLATEAU: "plateau"}
#: exp((f - f~) / eps) is clamped here in the marginal error: a huge error, never inf * 0.
ERROR_MAX_EXPONENT = 60.0


def sinkhorn_dense(M: torch.Tensor, a: torch.Tensor, b: torch.Tensor, reg: float, damping: float, tol: float,
                   max_iter: int, plateau: int):
    """Log-domain Sinkhorn on B given cost matrices, each problem stopping on its own.

    M [B, n, m], a [B, n], b [B, m] (weights >= 0, some positive per problem);
    from f = g = 0, each iteration is

        f~_i  = -reg damping log sum_j exp(log b_j + g_j / reg - M_ij / reg)
        error = sum_i a_i |1 - exp(min((f_i - f~_i) / reg, 60))| / sum_i a_i,   f = f~
        g_j   = -reg damping log sum_i exp(log a_i + f_i / reg - M_ij / reg)

    (POT's sinkhorn_log alternation; damping = 1 / (1 + reg / rho) for KL-relaxed
    marginals, 1 balanced). A problem stops once error <= tol (status 0), when
    its error has not improved on its best for ``plateau`` iterations (2: the
    rounding floor of the dtype), or after max_iter iterations (1).

    Returns (f [B, n], g [B, m], n_iter [B] int64, error [B], status [B] int64), f, g
    and error in ``compute_dtype(M.dtype)`` (the error is summed in float64).
    """
    dtype = compute_dtype(M.dtype)
    cost, a, b = M.to(dtype), a.to(dtype), b.to(dtype)
    B, n, m = cost.shape
    log_a, log_b = torch.log(a), torch.log(b)
    scaled = cost / reg
    f = cost.new_zeros(B, n)
    g = cost.new_zeros(B, m)
    n_iter = torch.zeros(B, dtype=torch.int64, device=M.device)
    error = torch.full((B,), math.inf, dtype=torch.float64, device=M.device)
    status = torch.full((B,), DENSE_MAX_ITER, dtype=torch.int64, device=M.device)
    best = torch.full((B,), math.inf, dtype=torch.float64, device=M.device)
    since_best = torch.zeros(B, dtype=torch.int64, device=M.device)
    active = torch.ones(B, dtype=torch.bool, device=M.device)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        f_new = -reg * damping * torch.logsumexp(log_b[:, None, :] + g[:, None, :] / reg - scaled, dim=2)
        ratio = torch.exp(((f - f_new) / reg).clamp(max=ERROR_MAX_EXPONENT)).double()
        err = (a.double() * (1 - ratio).abs()).sum(-1) / a.double().sum(-1)
        f = torch.where(active[:, None], f_new, f)
        g_new = -reg * damping * torch.logsumexp(log_a[:, :, None] + f[:, :, None] / reg - scaled, dim=1)
        g = torch.where(active[:, None], g_new, g)
        error = torch.where(active, err, error)
        n_iter = n_iter + active
        converged = active & (err <= tol)
        improved = active & ~converged & (err < best)
        stalled = active & ~converged & ~improved
        best = torch.where(improved, err, best)
        since_best = torch.where(improved, 0, since_best + stalled)
        plateaued = stalled & (since_best >= plateau)
        status = torch.where(converged, DENSE_CONVERGED, torch.where(plateaued, DENSE_PLATEAU, status))
        active = active & ~converged & ~plateaued
    return f, g, n_iter, error.to(dtype), status


#: EMD status codes (the native kernel's, csrc/ot/emd.h).
EMD_OPTIMAL, EMD_ITERATION_LIMIT, EMD_INFEASIBLE = 0, 1, 2
EMD_STATUS_NAMES = {EMD_OPTIMAL: "optimal", EMD_ITERATION_LIMIT: "iteration limit", EMD_INFEASIBLE: "infeasible"}
_EMD_COST_TOLERANCE = 1e-12  # x max|C|
_EMD_MASS_TOLERANCE = 1e-10  # x total mass


class _NetworkSimplex:
    """The network simplex of csrc/ot/emd.cpp, step for step, on Python floats.

    It is the readable specification of the native kernel (same initial tree,
    same block search, same leaving-arc rule, same potential recomputation),
    so on float64 data both give bit-identical plans, duals and pivot counts.
    Pure Python: O(pivots * (n m / block + tree)) interpreted steps, meant for
    problems of at most a few hundred arcs.
    """

    def __init__(self, supply, demand, cost, big, tolerance):
        n, m = len(supply), len(demand)
        self.n, self.m, self.root = n, m, n + m
        self.cost, self.big, self.tolerance = cost, big, tolerance
        nodes = n + m + 1
        self.parent = [-1] * nodes
        self.first_child = [-1] * nodes
        self.next_sibling = [-1] * nodes
        self.prev_sibling = [-1] * nodes
        self.depth = [0] * nodes
        self.pred = [-1] * nodes  # -1: the artificial arc to the root
        self.up = [False] * nodes
        self.flow = [0.0] * nodes
        self.phi = [0.0] * nodes
        self.in_tree = [False] * (n * m)
        for x in range(n + m):
            source = x < n
            self.pred[x], self.depth[x], self.up[x] = -1, 1, source
            self.flow[x] = supply[x] if source else demand[x - n]
            self.phi[x] = -big if source else big
            self._link(x, self.root)
        self.block = max(10, math.ceil(math.sqrt(n * m)))
        self.next_arc = 0

    def run(self, max_iter):
        pivots = 0
        while True:
            entering = self._find_entering()
            if entering < 0:
                self.recompute_potentials()
                entering = self._find_entering()
                if entering < 0:
                    return EMD_OPTIMAL, pivots
            if pivots >= max_iter:
                return EMD_ITERATION_LIMIT, pivots
            self._pivot(entering)
            pivots += 1

    def _find_entering(self):
        n, m, cost, phi, in_tree = self.n, self.m, self.cost, self.phi, self.in_tree
        best, best_arc, in_block = -self.tolerance, -1, 0
        e = self.next_arc
        for _ in range(n * m):
            if not in_tree[e]:
                i, j = divmod(e, m)
                r = cost[e] + phi[i] - phi[n + j]
                if r < best:
                    best, best_arc = r, e
            e = e + 1 if e + 1 < n * m else 0
            in_block += 1
            if in_block == self.block:
                in_block = 0
                if best_arc >= 0:
                    break
        self.next_arc = e
        return best_arc

    def _link(self, child, parent):
        self.parent[child] = parent
        self.prev_sibling[child] = -1
        self.next_sibling[child] = self.first_child[parent]
        if self.first_child[parent] != -1:
            self.prev_sibling[self.first_child[parent]] = child
        self.first_child[parent] = child

    def _unlink(self, child):
        prev, nxt = self.prev_sibling[child], self.next_sibling[child]
        if prev != -1:
            self.next_sibling[prev] = nxt
        else:
            self.first_child[self.parent[child]] = nxt
        if nxt != -1:
            self.prev_sibling[nxt] = prev

    def _subtree(self, top):
        x = top
        yield x
        while True:
            if self.first_child[x] != -1:
                x = self.first_child[x]
            else:
                while x != top and self.next_sibling[x] == -1:
                    x = self.parent[x]
                if x == top:
                    return
                x = self.next_sibling[x]
            yield x

    def _pivot(self, entering):
        n, parent, depth, up, flow = self.n, self.parent, self.depth, self.up, self.flow
        i, j = divmod(entering, self.m)
        source, sink = i, n + j
        d = self.cost[entering] + self.phi[i] - self.phi[n + j]
        x, y = source, sink
        while x != y:
            if depth[x] > depth[y]:
                x = parent[x]
            elif depth[y] > depth[x]:
                y = parent[y]
            else:
                x, y = parent[x], parent[y]
        apex = x
        delta_source = delta_sink = math.inf
        leave_source = leave_sink = -1
        x = source
        while x != apex:
            if up[x] and flow[x] < delta_source:
                delta_source, leave_source = flow[x], x
            x = parent[x]
        x = sink
        while x != apex:
            if not up[x] and flow[x] <= delta_sink:
                delta_sink, leave_sink = flow[x], x
            x = parent[x]
        sink_side = delta_sink <= delta_source
        delta = delta_sink if sink_side else delta_source
        leaving = leave_sink if sink_side else leave_source
        if delta > 0:
            x = source
            while x != apex:
                flow[x] += -delta if up[x] else delta
                x = parent[x]
            x = sink
            while x != apex:
                flow[x] += delta if up[x] else -delta
                x = parent[x]
        q, hook = (sink, source) if sink_side else (source, sink)
        if self.pred[leaving] != -1:
            self.in_tree[self.pred[leaving]] = False
        path = []
        x = q
        while x != leaving:
            path.append(x)
            x = parent[x]
        path.append(leaving)
        self._unlink(leaving)
        for t in range(len(path) - 1):
            self._unlink(path[t])
        for t in range(len(path) - 1, 0, -1):
            node, below = path[t], path[t - 1]
            self.pred[node], up[node], flow[node] = self.pred[below], not up[below], flow[below]
            self._link(node, below)
        self.pred[q], up[q], flow[q] = entering, not sink_side, delta
        self._link(q, hook)
        self.in_tree[entering] = True
        shift = d if sink_side else -d
        for node in self._subtree(q):
            depth[node] = depth[parent[node]] + 1
            self.phi[node] += shift

    def recompute_potentials(self):
        c = self.first_child[self.root]
        while c != -1:
            for node in self._subtree(c):
                e = self.pred[node]
                if e == -1:
                    self.phi[node] = -self.big if node < self.n else self.big
                elif node >= self.n:
                    self.phi[node] = self.cost[e] + self.phi[self.parent[node]]
                else:
                    self.phi[node] = self.phi[self.parent[node]] - self.cost[e]
            c = self.next_sibling[c]


def _emd_one(a, b, C, max_iter):
    """One problem on Python lists: a [n], b [m], C [n][m] -> the kernel's outputs (lists)."""
    n, m = len(a), len(b)
    for i, row in enumerate(C):
        if not all(math.isfinite(c) for c in row):
            raise ValueError(f"M contains NaN or inf (row {i}); inputs must be finite")
    cmax = max(max(abs(c) for c in row) for row in C)
    total_a = total_b = 0.0
    for w in a:
        total_a += w
    for w in b:
        total_b += w
    rescale = total_a / total_b
    rows = [i for i in range(n) if a[i] > 0]
    cols = [j for j in range(m) if b[j] > 0]
    supply = [a[i] for i in rows]
    demand = [b[j] * rescale for j in cols]
    nk, mk = len(rows), len(cols)
    cost = [C[i][j] for i in rows for j in cols]
    scale = cmax if cmax > 0 else 1.0
    solver = _NetworkSimplex(supply, demand, cost, 3.0 * scale, _EMD_COST_TOLERANCE * scale)
    status, pivots = solver.run(max_iter)

    entries, excess, deficit, artificial = [], [], [], 0.0
    for x in range(nk + mk):
        f = solver.flow[x]
        if solver.pred[x] != -1:
            if f > 0:
                entries.append((solver.pred[x], f))
        elif f > 0:
            artificial += f
            (excess if x < nk else deficit).append([x if x < nk else x - nk, f])
    if status == EMD_OPTIMAL and artificial > _EMD_MASS_TOLERANCE * total_a:
        status = EMD_INFEASIBLE
    if status != EMD_OPTIMAL:  # north-west corner spread of what the pivot limit left unrouted
        s = t = 0
        while s < len(excess) and t < len(deficit):
            moved = min(excess[s][1], deficit[t][1])
            if moved > 0:
                entries.append((excess[s][0] * mk + deficit[t][0], moved))
            excess[s][1] -= moved
            deficit[t][1] -= moved
            if excess[s][1] <= 0:
                s += 1
            else:
                t += 1
    entries.sort()
    plan_rows, plan_cols, plan_mass, total_cost = [], [], [], 0.0
    for e, mass in entries:
        r, c = rows[e // mk], cols[e % mk]
        if plan_rows and plan_rows[-1] == r and plan_cols[-1] == c:
            plan_mass[-1] += mass
        else:
            plan_rows.append(r)
            plan_cols.append(c)
            plan_mass.append(mass)
        total_cost += mass * cost[e]

    u, v = [math.inf] * n, [math.inf] * m
    for i in range(nk):
        u[rows[i]] = -solver.phi[i]
    for j in range(mk):
        v[cols[j]] = solver.phi[nk + j]
    for i in range(n):
        if u[i] == math.inf:
            u[i] = min(C[i][j] - v[j] for j in cols)
    for j in range(m):
        if v[j] == math.inf:
            v[j] = min(C[i][j] - u[i] for i in range(n))
    au = bv = total_b_kept = 0.0
    for i in range(n):
        au += a[i] * u[i]
    for j in range(mk):
        bv += demand[j] * v[cols[j]]
        total_b_kept += demand[j]
    shift = (bv - au) / (total_a + total_b_kept)
    u = [x + shift for x in u]
    v = [x - shift for x in v]
    return total_cost, plan_rows, plan_cols, plan_mass, u, v, pivots, status


def emd(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, max_iter: int):
    """Exact OT by the network simplex (the specification of gencore.ot.emd's kernel).

    a [n] / [B, n], b [m] / [B, m] (non-negative, equal totals per problem; b is
    rescaled to a's total), M [n, m] / [B, n, m]; computed in float64. Returns
    (cost [B], index [B, 2, K], mass [B, K], nnz [B], u [B, n], v [B, m],
    n_iter [B], status [B]) with K = n + m - 1 and the leading B dropped for 2-D M:
    the plan's entries sorted by (row, col), padded with index -1 and mass 0;
    duals shifted so that a.u = b.v. Pure Python (see _NetworkSimplex): small problems only.
    """
    batched = M.dim() == 3
    A = a.reshape(-1, a.shape[-1]).double().tolist()
    Bw = b.reshape(-1, b.shape[-1]).double().tolist()
    Ms = M.reshape(-1, M.shape[-2], M.shape[-1]).double().tolist()
    n, m = M.shape[-2], M.shape[-1]
    K = n + m - 1
    outs = [[] for _ in range(8)]
    for ak, bk, Ck in zip(A, Bw, Ms):
        total, rows, cols, mass, u, v, pivots, status = _emd_one(ak, bk, Ck, max_iter)
        pad = K - len(rows)
        outs[0].append(total)
        outs[1].append([rows + [-1] * pad, cols + [-1] * pad])
        outs[2].append(mass + [0.0] * pad)
        outs[3].append(len(rows))
        outs[4].append(u)
        outs[5].append(v)
        outs[6].append(pivots)
        outs[7].append(status)
    dtypes = (torch.float64, torch.int64, torch.float64, torch.int64, torch.float64, torch.float64, torch.int64,
              torch.int64)
    result = tuple(torch.tensor(o, dtype=dt, device=M.device) for o, dt in zip(outs, dtypes))
    return result if batched else tuple(t[0] for t in result)


def wasserstein_1d(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, p: float) -> torch.Tensor:
    """W_p^p between 1-D weighted empirical measures, one per row of sorted points.

    x [P, n], y [P, m] ascending rows; wx [P, n] or [n], wy [P, m] or [m], each
    summing to 1. W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt over the quantile
    functions, integrated exactly on the merged cumulative weights. Differentiable
    in x and y (through the gather). Returns [P] in x's dtype.
    """
    P, n = x.shape
    wx = wx.to(torch.float64).expand(P, n)
    wy = wy.to(torch.float64).expand(P, y.shape[1])
    cx, cy = wx.cumsum(1), wy.cumsum(1)
    levels = torch.cat([cx, cy], 1).sort(1).values
    left = torch.cat([levels.new_zeros(P, 1), levels[:, :-1]], 1)
    step = (levels - left).clamp_min(0)
    ix = torch.searchsorted(cx, left, right=True).clamp_max(n - 1)
    iy = torch.searchsorted(cy, left, right=True).clamp_max(y.shape[1] - 1)
    d = x.gather(1, ix).to(torch.float64) - y.gather(1, iy).to(torch.float64)
    return (step * d.abs().pow(p)).sum(1).to(x.dtype)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       projections: torch.Tensor, p: float) -> torch.Tensor:
    """(mean_k W_p^p(theta_k . x, theta_k . y))^(1/p), as POT's sliced_wasserstein_distance.

    x [n, D], y [m, D], weights a [n], b [m] (normalised here), projections [D, P].
    """
    xp, yp = (x @ projections).T, (y @ projections).T  # [P, n], [P, m]
    xs, ox = xp.sort(1)
    ys, oy = yp.sort(1)
    wa = (a / a.sum()).to(torch.float64)[ox]
    wb = (b / b.sum()).to(torch.float64)[oy]
    return wasserstein_1d(xs, ys, wa, wb, p).mean().pow(1.0 / p)
