"""Exact kNN: gencore against faiss, torch, scikit-learn and the bare GEMM.

Groups ``knn-l2-<size>`` and ``knn-ip-<size>`` hold every contender on the
same data (see conftest.SIZES). L2 contenders return squared distances
(gencore runs metric="sqeuclidean"), so values are comparable with faiss.
``bare-gemm`` is the float32 product queries @ bank.T alone, tiled over the
bank, with no top-k: the issue's goal "within 1.2x of GEMM" reads as
gencore's median over bare-gemm's in the same group.

Before a contender is timed, its neighbours on the quick data are checked
against gencore's: the exact (float64) distances of the returned neighbours,
sorted, must agree within 1e-3 relative, which tolerates near-ties that pick
different indices but not wrong neighbours.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gencore

GEMM_TILE = 8192      # bank rows per chunk of bare-gemm and the torch contender
CHECK_RTOL = 1e-3
CONTENDERS = ("gencore", "faiss", "torch", "sklearn", "bare-gemm")
METRICS = ("l2", "ip")  # benchmark groups; gencore runs "sqeuclidean" for l2
GENCORE_METRIC = {"l2": "sqeuclidean", "ip": "ip"}


# --- contenders: make_<name>(problem, metric, threads) -> fn() -> (values, indices) numpy
# Setup (index build, fit) happens in make_*, outside the timed region.

def make_gencore(p, metric, threads):
    m = GENCORE_METRIC[metric]

    def run():
        values, indices = gencore.ood.knn(p.queries, p.bank, p.k, m)
        return values.numpy(), indices.numpy()

    return run


def make_faiss(p, metric, threads):
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install faiss-cpu)")
    index = faiss.IndexFlatL2(p.d) if metric == "l2" else faiss.IndexFlatIP(p.d)
    index.add(p.bank_np)

    def run():
        values, indices = index.search(p.queries_np, p.k)
        return values, indices

    return run


def make_torch(p, metric, threads):
    """matmul + topk, tiled over the bank with a running top-k: memory Q x (tile + k)."""
    x, y, k = p.queries, p.bank, p.k
    largest = metric == "ip"

    def run():
        best_v = x.new_empty((x.shape[0], 0))
        best_i = torch.empty((x.shape[0], 0), dtype=torch.int64)
        for start in range(0, y.shape[0], GEMM_TILE):
            tile = y[start:start + GEMM_TILE]
            if metric == "l2":  # ||y||^2 - 2 x.y in one addmm; ||x||^2 is added at the end
                scores = torch.addmm((tile * tile).sum(1)[None, :], x, tile.T, beta=1, alpha=-2)
            else:
                scores = x @ tile.T
            kk = min(k, tile.shape[0])
            v, i = torch.topk(scores, kk, dim=1, largest=largest, sorted=False)
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i + start], 1)
            best_v, pick = torch.topk(v, min(k, v.shape[1]), dim=1, largest=largest, sorted=True)
            best_i = i.gather(1, pick)
        if metric == "l2":
            best_v = (best_v + (x * x).sum(1, keepdim=True)).clamp_min(0)
        return best_v.numpy(), best_i.numpy()

    return run


def make_sklearn(p, metric, threads):
    neighbors = pytest.importorskip("sklearn.neighbors",
                                    reason="scikit-learn is not installed (pip install scikit-learn)")
    if metric == "ip":
        pytest.skip("scikit-learn NearestNeighbors has no inner-product metric")
    if p.name == "full":
        pytest.skip("scikit-learn brute force is too slow and memory hungry at full size (10k x 100k)")
    nn = neighbors.NearestNeighbors(n_neighbors=p.k, algorithm="brute", metric="euclidean", n_jobs=threads)
    nn.fit(p.bank_np)

    def run():
        dist, indices = nn.kneighbors(p.queries_np, return_distance=True)
        return dist * dist, indices

    return run


def gemm_tiles(queries, bank, tile=GEMM_TILE):
    """Yields (start, queries @ bank[start:start+tile].T) into one reused [Q, tile] buffer."""
    buf = np.empty(queries.shape[0] * min(tile, bank.shape[0]), dtype=np.float32)
    for start in range(0, bank.shape[0], tile):
        chunk = bank[start:start + tile]
        out = buf[:queries.shape[0] * chunk.shape[0]].reshape(queries.shape[0], chunk.shape[0])
        np.matmul(queries, chunk.T, out=out)
        yield start, out


def make_bare_gemm(p, metric, threads):
    def run():
        for _ in gemm_tiles(p.queries_np, p.bank_np):
            pass
        return None

    return run


MAKERS = {
    "gencore": make_gencore,
    "faiss": make_faiss,
    "torch": make_torch,
    "sklearn": make_sklearn,
    "bare-gemm": make_bare_gemm,
}


# --- correctness on the quick data, once per (contender, metric) -------------

def exact_scores(p, indices, metric):
    """float64 squared distance (l2) or inner product (ip) of each returned neighbour: [Q, k]."""
    x = p.queries_np.astype(np.float64)
    y = p.bank_np.astype(np.float64)[indices]          # [Q, k, D]
    if metric == "l2":
        return ((x[:, None, :] - y) ** 2).sum(-1)
    return np.einsum("qd,qkd->qk", x, y)


def assert_same_neighbours(p, indices, ref_indices, metric, who):
    indices = np.asarray(indices)
    assert indices.shape == (p.q, p.k), f"{who}: indices shape {indices.shape}, expected {(p.q, p.k)}"
    assert indices.min() >= 0 and indices.max() < p.n, f"{who}: indices out of range [0, {p.n})"
    rows_sorted = np.sort(indices, axis=1)
    assert (np.diff(rows_sorted, axis=1) != 0).all(), f"{who}: repeated neighbour in a row"
    got = np.sort(exact_scores(p, indices, metric), axis=1)
    want = np.sort(exact_scores(p, ref_indices, metric), axis=1)
    # ip values straddle 0; measure them against the product of norms.
    scale = np.abs(want).max(axis=1, keepdims=True)
    if metric == "ip":
        scale = np.maximum(scale, np.linalg.norm(p.queries_np, axis=1, keepdims=True)
                           * np.linalg.norm(p.bank_np, axis=1).mean())
    err = np.abs(got - want) / scale
    worst = np.unravel_index(np.argmax(err), err.shape)
    kth = -1 if metric == "l2" else 0  # the k-th (worst kept) neighbour after sorting
    assert err.max() <= CHECK_RTOL, (
        f"{who} ({metric}): neighbour scores differ from gencore's by {err.max():.2e} relative at "
        f"query {worst[0]} (sorted position {worst[1]}: {got[worst]:.6g} vs gencore {want[worst]:.6g}; "
        f"k-th neighbour {got[worst[0], kth]:.6g} vs gencore {want[worst[0], kth]:.6g})"
    )
    return float((np.sort(indices, 1) == np.sort(ref_indices, 1)).mean())


def check_gemm(p):
    x = p.queries_np.astype(np.float64)
    for start, block in gemm_tiles(p.queries_np, p.bank_np):
        want = x @ p.bank_np[start:start + block.shape[1]].astype(np.float64).T
        assert np.allclose(block, want, rtol=1e-4, atol=1e-3 * np.abs(want).max()), \
            f"bare-gemm: block at bank row {start} differs from the float64 product"


_verified: dict = {}


def verify(contender, metric, quick, threads):
    """Runs ``contender`` on the quick data and compares it with gencore; cached per session."""
    key = (contender, metric)
    if key not in _verified:
        if contender == "bare-gemm":
            check_gemm(quick)
            _verified[key] = None
        else:
            ref = make_gencore(quick, metric, threads)()
            # sanity of the oracle itself: gencore's values are the exact scores of its indices
            np.testing.assert_allclose(ref[0], exact_scores(quick, ref[1], metric), rtol=1e-3,
                                       atol=1e-3 * float(np.abs(ref[0]).max()))
            got = MAKERS[contender](quick, metric, threads)()
            _verified[key] = assert_same_neighbours(quick, got[1], ref[1], metric, contender)
    return _verified[key]


# --- the benchmarks ----------------------------------------------------------

@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("metric", METRICS)
def test_knn(benchmark, run_timed, bench_data, quick_data, bench_threads, metric, contender):
    p = bench_data
    fn = MAKERS[contender](p, metric, bench_threads)  # may skip: peer missing or size unsupported
    overlap = verify(contender, metric, quick_data, bench_threads)

    benchmark.group = f"knn-{metric}-{p.name}"
    benchmark.extra_info.update(p.sizes())
    benchmark.extra_info.update({
        "contender": contender,
        "metric": GENCORE_METRIC[metric] if contender == "gencore" else metric,
        "threads": bench_threads,
        "backend": gencore.info()["backends"],
        "simd": gencore.info()["simd"]["in_use"],
        "quick_index_overlap": overlap,
    })
    run_timed(fn)
