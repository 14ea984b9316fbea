"""Exact OT and sliced Wasserstein: gencore against POT (``ot.emd``,
``ot.sliced_wasserstein_distance``) on the same data, same threads.

Groups (sizes by ``--bench-size``; ``full`` adds the 4000 x 4000 problem):

* ``emd-<n>x<n>-D<d>``: one problem, squared Euclidean cost of uniform clouds
  in the unit cube, uniform weights; POT runs with ``numItermax`` raised so
  both solve to optimality (POT's default 100 000 pivots stops early at 4000).
* ``emd-batch-<B>x<n>x<n>``: B problems, gencore's batched call (one problem
  per thread) against a Python loop over ``ot.emd``.
* ``sliced-<n>-P<P>-D<d>``: sliced W_2 on the same P projections, float32.

Before timing, every contender's cost is checked against gencore's (EMD:
1e-9 relative; sliced: 1e-4 relative against gencore in float64).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gencore

ot = pytest.importorskip("ot", reason="POT is not installed (pip install pot)")

SEED = 20251201
EMD_SIZES = {"quick": [(300, 8)], "mid": [(1000, 64)], "full": [(1000, 64), (4000, 64)]}
BATCH_SIZES = {"quick": (16, 128), "mid": (64, 256), "full": (64, 256)}
SLICED_SIZES = {"quick": (1000, 100, 16), "mid": (5000, 500, 64), "full": (5000, 500, 64)}
POT_MAX_ITER = 10**9


def emd_problem(n, d, batch=None, seed=SEED):
    """Uniform weights [.., n] and the squared Euclidean cost [.., n, n] of two uniform clouds."""
    rng = np.random.default_rng(seed + n + d + (batch or 0))
    shape = (n, d) if batch is None else (batch, n, d)
    x, y = torch.from_numpy(rng.random(shape)), torch.from_numpy(rng.random(shape))
    M = torch.cdist(x, y).square().numpy()
    a = np.full(M.shape[:-1], 1.0 / n)
    return a, M


def timed(benchmark, bench_size, fn):
    if bench_size != "quick":
        return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    return benchmark(fn)


@pytest.mark.parametrize("contender", ["gencore", "pot"])
@pytest.mark.parametrize("index", [0, 1])
def test_emd(benchmark, bench_size, bench_threads, contender, index):
    sizes = EMD_SIZES[bench_size]
    if index >= len(sizes):
        pytest.skip(f"only {len(sizes)} EMD size(s) at --bench-size {bench_size}")
    n, d = sizes[index]
    a, M = emd_problem(n, d)
    at, Mt = torch.from_numpy(a), torch.from_numpy(M)
    if contender == "gencore":
        def run():
            return float(gencore.ot.emd(at, at, Mt).cost)
    else:
        def run():
            return float((ot.emd(a, a, M, numItermax=POT_MAX_ITER) * M).sum())
    want = float(gencore.ot.emd(at, at, Mt).cost)
    got = run()
    assert abs(got - want) <= 1e-9 * want, (contender, got, want)
    benchmark.group = f"emd-{n}x{n}-D{d}"
    benchmark.extra_info.update({"contender": contender, "n": n, "m": n, "D": d, "threads": bench_threads})
    timed(benchmark, bench_size, run)


@pytest.mark.parametrize("contender", ["gencore", "pot-loop"])
def test_emd_batch(benchmark, bench_size, bench_threads, contender):
    B, n = BATCH_SIZES[bench_size]
    a, M = emd_problem(n, 8, batch=B)
    at, Mt = torch.from_numpy(a), torch.from_numpy(M)
    if contender == "gencore":
        def run():
            return gencore.ot.emd(at, at, Mt).cost.numpy()
    else:
        def run():
            return np.array([(ot.emd(a[k], a[k], M[k], numItermax=POT_MAX_ITER) * M[k]).sum() for k in range(B)])
    want = gencore.ot.emd(at, at, Mt).cost.numpy()
    np.testing.assert_allclose(run(), want, rtol=1e-9)
    benchmark.group = f"emd-batch-{B}x{n}x{n}"
    benchmark.extra_info.update({"contender": contender, "B": B, "n": n, "m": n, "threads": bench_threads})
    timed(benchmark, bench_size, run)


@pytest.mark.parametrize("contender", ["gencore", "pot"])
def test_sliced(benchmark, bench_size, bench_threads, contender):
    n, P, d = SLICED_SIZES[bench_size]
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32) + 0.3
    theta = rng.standard_normal((d, P))
    theta = (theta / np.linalg.norm(theta, axis=0, keepdims=True)).astype(np.float32)
    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(theta)
    if contender == "gencore":
        def run():
            return float(gencore.ot.sliced_wasserstein(xt, yt, projections=tt))
    else:
        def run():
            return float(ot.sliced_wasserstein_distance(x, y, projections=theta))
    want = float(gencore.ot.sliced_wasserstein(xt.double(), yt.double(), projections=tt.double()))
    assert abs(run() - want) <= 1e-4 * want
    benchmark.group = f"sliced-{n}-P{P}-D{d}"
    benchmark.extra_info.update({"contender": contender, "n": n, "m": n, "P": P, "D": d, "threads": bench_threads})
    timed(benchmark, bench_size, run)
