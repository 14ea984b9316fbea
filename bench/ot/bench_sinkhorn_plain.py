"""POT's plain (scaling-domain) ``ot.sinkhorn``: where it converges, and where it fails.

POT's ``ot.sinkhorn`` (method "sinkhorn") iterates u = a / (K v), v = b / (K^T u)
on the dense kernel K = exp(-C / eps): cheaper per iteration than a log-domain
solver, and fine while eps is large next to the costs. At small eps, K
underflows to 0 in float32 (C / eps > ~87), the scalings overflow, and the
answer is NaN or garbage with only a warning. gencore's online log-domain
solver has no such regime.

Group ``sinkhorn-plain-<size>-blur<blur>``: n vs n points uniform in [0, 1]^3,
float32, cost |x - y|^2 / 2, eps = blur^2; each contender computes OT_eps(a, b) =
<a, f> + <b, g> to the same tolerance (gencore: L1 marginal error <= TOL; POT:
stopThr = TOL / sqrt(n) on its L2 marginal error, which implies it):

* ``gencore``: ``gencore.ot.sinkhorn(x, y, blur=blur, tol=TOL).cost``;
* ``pot-plain``: ``ot.sinkhorn(a, b, C, eps, method="sinkhorn")`` on the dense
  float32 cost, the transport cost <P, C> + eps KL from its plan's scalings.

blur 0.5 is the easy regime (POT converges in a few iterations); at 0.05 the
float32 kernel has underflowed far from each point but every row keeps
neighbours, so POT still converges; at 0.005 (cost / eps > 87 beyond 13 blur)
rows lose all their mass and POT returns a wrong value (0 here) with at most a
warning. Every run is timed all the same, its value recorded in ``extra_info``
(``finite``, ``relative_error`` against gencore's float64 answer), and the test
asserts that gencore's answer is the right one.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import gencore

TOL = 1e-3
BLURS = (0.5, 0.05, 0.005)
SIZES = {"quick": 300, "mid": 2000, "full": 5000}
CONTENDERS = ("gencore", "pot-plain")


def clouds(n: int, seed: int = 20240611):
    rng = np.random.default_rng(seed + n)
    return rng.random((n, 3), dtype=np.float32), rng.random((n, 3), dtype=np.float32)


def pot_plain_cost(pot, x, y, eps):
    """OT_eps from POT's plain Sinkhorn: <a, f> + <b, g> with P = diag(u) K diag(v) =
    a_i b_j exp((f_i + g_j - C_ij) / eps), i.e. f = eps log(u / a), g = eps log(v / b)."""
    n = x.shape[0]
    a = np.full(n, 1.0 / n, dtype=np.float32)
    cost = (0.5 * pot.dist(x, y, metric="sqeuclidean")).astype(np.float32)
    _, log = pot.sinkhorn(a, a, cost, eps, method="sinkhorn", numItermax=20_000, stopThr=TOL / math.sqrt(n),
                          log=True, warn=False)
    with np.errstate(all="ignore"):
        f = eps * (np.log(log["u"].astype(np.float64)) - np.log(a.astype(np.float64)))
        g = eps * (np.log(log["v"].astype(np.float64)) - np.log(a.astype(np.float64)))
        return float((a * f).sum() + (a * g).sum())


@pytest.mark.parametrize("blur", BLURS, ids=lambda b: f"blur{b}")
@pytest.mark.parametrize("contender", CONTENDERS)
def test_sinkhorn_plain_domain(benchmark, run_timed, bench_size, bench_threads, blur, contender):
    n = SIZES[bench_size]
    x, y = clouds(n)
    eps = blur ** 2
    if contender == "gencore":
        fn = lambda: float(gencore.ot.sinkhorn(torch.from_numpy(x), torch.from_numpy(y), blur=blur,  # noqa: E731
                                               tol=TOL).cost)
    else:
        pot = pytest.importorskip("ot", reason="POT is the peer of this benchmark")
        fn = lambda: pot_plain_cost(pot, x, y, eps)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = float(gencore.ot.sinkhorn(torch.from_numpy(x).double(), torch.from_numpy(y).double(), blur=blur,
                                         tol=1e-6, max_iter=20_000).cost)
    benchmark.group = f"sinkhorn-plain-{bench_size}-blur{blur}"
    benchmark.extra_info.update(N=n, D=3, blur=blur, eps=eps, tol=TOL, contender=contender, threads=bench_threads,
                                simd=gencore.info()["simd"]["in_use"])
    values = []

    def timed():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT's overflow warnings: the failure is recorded below
            values.append(fn())

    run_timed(timed)
    got = values[-1]
    error = abs(got - want) / abs(want) if math.isfinite(got) else math.inf
    benchmark.extra_info.update(value=got, finite=math.isfinite(got), relative_error=error)
    if contender == "gencore":
        assert error < 0.01, f"gencore: OT = {got:.6g}, float64 {want:.6g}"
