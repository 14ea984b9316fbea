"""Sinkhorn on a given dense cost matrix: one problem, and a batch of small ones.

The problem of ``gencore.ot.sinkhorn_cost_matrix`` and POT's ``ot.bregman.sinkhorn_log``
(log domain, alternating updates): n vs n points uniform in [0, 1]^3, cost
C = |x - y|^2 / 2 in float32, reg = REG, uniform weights, each contender to the
same tolerance (gencore: L1 marginal error <= TOL; POT: stopThr = TOL / sqrt(n)
on its L2 marginal error, which implies it), computing OT_reg = <a, f> + <b, g>:

* ``gencore``: ``sinkhorn_cost_matrix(C, reg=REG, tol=TOL)`` (the native loop;
  a [B, n, m] batch in one call);
* ``pot-log-numpy`` / ``pot-log-torch``: ``ot.bregman.sinkhorn_log`` on numpy
  arrays / torch tensors (a Python loop over the problems of a batch: POT has no
  batched dense solver);
* ``torch``: the same alternating iteration in composed torch on the whole batch
  (``gencore.ot.reference.sinkhorn_dense``, torch.logsumexp over the dense matrix),
  what ``sinkhorn_cost_matrix`` ran before its native kernel.

Groups ``sinkhorn-dense-<size>-single`` (one n x n problem) and
``sinkhorn-dense-<size>-batch`` (B problems of s x s, an OT-CFM-sized minibatch
coupling). Every contender's value is checked against gencore's float64 answer
before it is timed.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import gencore
from gencore.ot import reference

REG = 0.01
TOL = 1e-4
SINGLE = {"quick": 200, "mid": 1000, "full": 2000}
BATCH = {"quick": (8, 32), "mid": (64, 128), "full": (256, 128)}
CONTENDERS = ("gencore", "pot-log-numpy", "pot-log-torch", "torch")


def costs(B: int, n: int, seed: int = 20240611) -> np.ndarray:
    rng = np.random.default_rng(seed + 7 * n + B)
    x, y = rng.random((B, n, 3), dtype=np.float32), rng.random((B, n, 3), dtype=np.float32)
    return (0.5 * ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)).astype(np.float32)   # [B, n, n]


def pot_values(pot, C: np.ndarray, as_torch: bool) -> list[float]:
    """OT_reg of each problem from POT's log-domain potentials: f = reg (log_u - log a)."""
    B, n, m = C.shape
    values = []
    for k in range(B):
        a = np.full(n, 1.0 / n, dtype=np.float32)
        b = np.full(m, 1.0 / m, dtype=np.float32)
        args = (a, b, C[k]) if not as_torch else tuple(torch.from_numpy(t) for t in (a, b, C[k]))
        _, log = pot.bregman.sinkhorn_log(*args, REG, numItermax=20_000, stopThr=TOL / math.sqrt(n), log=True,
                                          warn=False)
        lu, lv = (np.asarray(t.numpy() if as_torch else t, dtype=np.float64) for t in (log["log_u"], log["log_v"]))
        values.append(float((REG * (lu - math.log(1.0 / n))).mean() + (REG * (lv - math.log(1.0 / m))).mean()))
    return values


def torch_values(C: torch.Tensor) -> list[float]:
    B, n, m = C.shape
    a, b = torch.full((B, n), 1.0 / n), torch.full((B, m), 1.0 / m)
    f, g, *_ = reference.sinkhorn_dense(C, a, b, REG, 1.0, TOL, 20_000, 40)
    return ((a * f).sum(-1) + (b * g).sum(-1)).tolist()


def contender_fn(contender: str, C: np.ndarray):
    tensor = torch.from_numpy(C)
    if contender == "gencore":
        return lambda: torch.atleast_1d(gencore.ot.sinkhorn_cost_matrix(tensor, reg=REG, tol=TOL,
                                                                        max_iter=20_000).cost).tolist()
    if contender == "torch":
        return lambda: torch_values(tensor)
    pot = pytest.importorskip("ot", reason="POT is the peer of this benchmark")
    return lambda: pot_values(pot, C, contender == "pot-log-torch")


@pytest.mark.parametrize("layout", ["single", "batch"])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_sinkhorn_dense(benchmark, run_timed, bench_size, bench_threads, layout, contender):
    B, n = (1, SINGLE[bench_size]) if layout == "single" else BATCH[bench_size]
    C = costs(B, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.atleast_1d(gencore.ot.sinkhorn_cost_matrix(torch.from_numpy(C).double(), reg=REG, tol=1e-9,
                                                                max_iter=50_000).cost).tolist()
    fn = contender_fn(contender, C)
    benchmark.group = f"sinkhorn-dense-{bench_size}-{layout}"
    benchmark.extra_info.update(B=B, n=n, m=n, reg=REG, tol=TOL, contender=contender, threads=bench_threads,
                                simd=gencore.info()["simd"]["in_use"])
    values = []

    def timed():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values.append(fn())

    run_timed(timed)
    error = max(abs(g - w) / abs(w) for g, w in zip(values[-1], want))
    benchmark.extra_info.update(relative_error=error)
    assert error < 1e-3, f"{contender}: worst relative error {error:.3g} against float64"
