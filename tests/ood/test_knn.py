"""gencore.ood.knn: parity with the reference, peers, ties, SIMD levels, code paths,
opcheck/gradcheck/compile/meta, bad input, CUDA.

How results are compared (no flaky exact comparisons of floating-point ranks):
the float64 reference on the same inputs is the oracle. Native values must
match it within a tolerance scaled by the norms; the exact float64 value of
every returned index must equal the reference's value at that rank within the
same tolerance (near-ties may legitimately swap); and wherever the reference's
gap between consecutive ranks is larger than twice the tolerance, the sets of
indices up to that rank must agree. Exact equality is only demanded where the
arithmetic is exact (integer-valued data), which is where ties are tested.

Tile sizes of the CPU kernel (csrc/ood/knn.cpp): bank tiles of 1024 rows,
query blocks of up to 256, the bank split across threads (then merged) when
Q < threads * 64 and threads > 1. The reference streams the bank in tiles of
``reference._BANK_TILE`` rows.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gencore
from gencore import _native
from gencore.ood import knn, reference

from tests.conftest import cuda_only, native_cpu_only, supported_simd_levels, on_a_busy_side_stream

METRICS = ("l2", "sqeuclidean", "ip", "cosine")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
METRIC_CODES = {"sqeuclidean": 0, "ip": 1, "cosine": 2}  # the native module's codes

QS = (0, 1, 3, 65, 257, 600)
NS = (1, 7, 1023, 1025, 3000)
DS = (1, 3, 17, 64, 130)


# ====================================================================== helpers

def randn(rng, *shape, dtype=torch.float32, shift=0.0):
    x = torch.randn(*shape, generator=rng, dtype=torch.float64) + shift
    return x.to(dtype)


def randint(rng, low, high, *shape, dtype=torch.float32):
    return torch.randint(low, high, shape, generator=rng).to(dtype)


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_key(values, metric):
    """Values -> float64 keys where smaller is better (l2 compared squared)."""
    values = values.double()
    if metric == "l2":
        return values.square()
    if reference.LARGER_IS_BETTER[metric]:
        return -values
    return values


def tolerance(x64, y64, metric, dtype):
    """[Q, 1] absolute tolerance on keys, scaled by the norms of the inputs.

    float32 (and fp16/bf16, computed in float32): 1e-4 of the scale, i.e.
    ~800 float32 epsilons; float64: 1e-10. The scale is the size of the terms
    summed: ||x||^2 + max ||y||^2 for squared distances, ||x|| max ||y|| for
    inner products, 1 for cosine.
    """
    c = 1e-10 if compute_dtype(dtype) == torch.float64 else 1e-4
    xs = (x64 * x64).sum(1, keepdim=True)
    ys = (y64 * y64).sum(1).max() if y64.shape[0] else torch.tensor(0.0, dtype=torch.float64)
    if metric in ("l2", "sqeuclidean"):
        scale = xs + ys
    elif metric == "ip":
        scale = xs.sqrt() * ys.sqrt()
    else:
        scale = torch.ones_like(xs)
    return c * scale + 1e-30


def exact_values(x64, y64, indices, metric):
    """float64 metric values of the pairs (i, indices[i, r]), computed directly."""
    x = x64[:, None, :]
    y = y64[indices]
    if metric in ("l2", "sqeuclidean"):
        d = (x - y).square().sum(-1)
        return d.sqrt() if metric == "l2" else d
    if metric == "ip":
        return (x * y).sum(-1)
    return (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)


def best_by_key(key, k, metric):
    """key [Q, N], smaller is better (squared distance or -similarity) -> the k best
    (values, indices) by a stable sort, so ties go to the lower index."""
    order = torch.sort(key, dim=1, stable=True).indices[:, :k]
    values = key.gather(1, order)
    if metric == "l2":
        values = values.sqrt()
    elif reference.LARGER_IS_BETTER[metric]:
        values = -values
    return values, order


def brute_force(x64, y64, k, metric):
    """Full float64 distance matrix + stable sort: the spec, independently of the reference."""
    if metric in ("l2", "sqeuclidean"):
        key = (x64[:, None, :] - y64[None, :, :]).square().sum(-1)
    elif metric == "ip":
        key = -(x64 @ y64.T)
    else:
        key = -(F.normalize(x64, dim=1) @ F.normalize(y64, dim=1).T)
    return best_by_key(key, k, metric)


def check_knn(values, indices, queries, bank, k, metric, *, ref=None, dtype=None, what="gencore"):
    """Asserts (values, indices) is a correct kNN answer; see the module docstring.

    ``ref``: (values, indices) of an oracle, best first, ideally with k + 1
    columns so the gap after rank k is known; defaults to the float64 reference.
    ``dtype``: the dtype the result was computed from (sets the tolerance).
    """
    dtype = dtype or queries.dtype
    x64, y64 = queries.detach().cpu().double(), bank.detach().cpu().double()
    Q, N = x64.shape[0], y64.shape[0]
    values, indices = values.detach().cpu(), indices.detach().cpu()
    ctx = f"{what}: metric={metric} Q={Q} N={N} D={x64.shape[1]} k={k} dtype={dtype}"
    assert tuple(values.shape) == (Q, k) and tuple(indices.shape) == (Q, k), (ctx, values.shape)
    assert indices.dtype == torch.int64, ctx
    if Q == 0:
        return
    assert torch.isfinite(values).all(), f"{ctx}: non-finite values"
    assert ((indices >= 0) & (indices < N)).all(), f"{ctx}: index out of range"
    if k > 1:
        s = indices.sort(1).values
        assert (s[:, 1:] != s[:, :-1]).all(), f"{ctx}: repeated index in a row"
    key = to_key(values, metric)
    assert (key[:, 1:] >= key[:, :-1]).all(), f"{ctx}: values not best-first"

    if ref is None:
        ref = reference.knn(x64, y64, min(k + 1, N), metric)
    ref_key = to_key(ref[0].cpu(), metric)
    ref_idx = ref[1].cpu().long()
    kk = ref_key.shape[1]
    assert kk >= k
    atol = tolerance(x64, y64, metric, dtype)

    err = (key - ref_key[:, :k]).abs()
    worst = int(err.argmax()) if err.numel() else 0
    assert (err <= atol).all(), (
        f"{ctx}: values differ from the oracle; worst at {divmod(worst, k)}: "
        f"{values.reshape(-1)[worst].item()!r} vs {ref[0].reshape(-1)[worst // k * kk + worst % k].item()!r}, "
        f"key error {err.max().item():.3g} > atol {atol.reshape(-1)[worst // k].item():.3g}")

    exact = to_key(exact_values(x64, y64, indices, metric), metric)
    bad = (exact - ref_key[:, :k]).abs() > atol
    assert not bad.any(), (
        f"{ctx}: returned neighbour's true value is not the rank's value at "
        f"{bad.nonzero()[:5].tolist()}")

    # Wherever rank r and r + 1 are clearly separated, the first r + 1 indices
    # must be the oracle's first r + 1 (as sets).
    clear = (ref_key[:, 1:] - ref_key[:, :-1]) > 2 * atol  # [Q, kk - 1]
    rank = torch.full((Q, N), N, dtype=torch.int64)
    rank.scatter_(1, ref_idx, torch.arange(kk).expand(Q, kk).contiguous())
    reach = rank.gather(1, indices).cummax(1).values  # [Q, k]
    m = min(k, kk - 1)
    wrong = clear[:, :m] & (reach[:, :m] > torch.arange(m))
    assert not wrong.any(), (
        f"{ctx}: different neighbours despite a clear gap at (query, rank) {wrong.nonzero()[:5].tolist()}")


def ks_for(n):
    return sorted({k for k in (1, 5, n if n <= 7 else 1) if k <= n})


def tie_data(rng, q, n, d, metric, groups=6):
    """Integer data with only `groups` distinct bank rows (duplicated, interleaved).

    Squared distances and inner products of small integers are exact in
    float32, so every implementation sees bit-equal keys for equal rows (and
    for distinct rows that happen to tie) and the order is fully determined:
    value, then lower index. Cosine keys are rounded, so there the draw is
    redone until the distinct rows' similarities are 1e-5 apart for every
    query; duplicated rows still give bit-equal keys.
    """
    for _ in range(1000):
        base = randint(rng, -3, 4, groups, d)
        queries = randint(rng, -3, 4, q, d)
        if (base.abs().sum(1) == 0).any() or (queries.abs().sum(1) == 0).any():
            continue
        if metric == "cosine":
            if torch.unique(base, dim=0).shape[0] != groups:
                continue
            v = (F.normalize(queries.double(), dim=1) @ F.normalize(base.double(), dim=1).T).sort(1).values
            if not ((v[:, 1:] - v[:, :-1]) > 1e-5).all():
                continue
        which = torch.randint(0, groups, (n,), generator=rng)
        which[:groups] = torch.randperm(groups, generator=rng)  # every group present
        return queries, base[which]
    raise AssertionError("could not draw separated tie data")


def tie_oracle(x, y, k, metric):
    """Exact kNN of integer data: keys from exact integer dot products (cosine
    divides each by the two norms, so equal rows give bit-equal keys), then a
    stable sort. Returns (values, indices) best first, ties to the lower index."""
    x64, y64 = x.double(), y.double()
    dots = x64 @ y64.T  # exact: small integers
    if metric in ("l2", "sqeuclidean"):
        key = (x64 * x64).sum(1, keepdim=True) + (y64 * y64).sum(1) - 2 * dots
    elif metric == "ip":
        key = -dots
    else:
        key = -dots / ((x64 * x64).sum(1, keepdim=True).sqrt() * (y64 * y64).sum(1).sqrt())
    return best_by_key(key, k, metric)


# ====================================================================== parity with the reference



def _shape_params():
    # every D meets every Q and every N (a Latin square over the 6 x 5 grid)
    for iq, q in enumerate(QS):
        for i_n, n in enumerate(NS):
            d = DS[(iq + 2 * i_n) % len(DS)]
            yield pytest.param(q, n, d, id=f"Q{q}-N{n}-D{d}")


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("q,n,d", list(_shape_params()))
def test_parity_shapes(rng, num_threads, q, n, d, threads, metric):
    num_threads(threads)
    x, y = randn(rng, q, d), randn(rng, n, d, shift=0.5)
    ks = ks_for(n)
    # one float64 reference with the most columns serves every k (its prefixes are the answers for smaller k)
    ref = reference.knn(x.double(), y.double(), min(max(ks) + 1, n), metric)
    for k in ks:
        values, indices = knn(x, y, k, metric)
        assert values.dtype == torch.float32
        check_knn(values, indices, x, y, k, metric, ref=ref)


@pytest.mark.parametrize("backend", [
    pytest.param("auto", marks=native_cpu_only), "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("d", [1, 2, 17])
def test_empty_queries(request, monkeypatch, backend, dtype, d):
    monkeypatch.setenv("GENCORE_BACKEND", backend)
    for metric in METRICS:
        values, indices = knn(torch.zeros(0, d, dtype=dtype), torch.ones(7, d, dtype=dtype), 3, metric)
        assert values.shape == (0, 3) and indices.shape == (0, 3)
        assert values.dtype == compute_dtype(dtype) and indices.dtype == torch.int64


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", DS)
def test_parity_feature_dims(rng, num_threads, d, metric):
    num_threads(2)
    x, y = randn(rng, 70, d, shift=-1.0), randn(rng, 1500, d)
    for k in (1, 8):
        check_knn(*knn(x, y, k, metric), x, y, k, metric)


@native_cpu_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q,threads", [(5, 2), (300, 2), (70, 1)], ids=["split-bank", "query-blocks", "one-thread"])
def test_parity_dtypes(rng, num_threads, dtype, metric, q, threads):
    num_threads(threads)
    x, y = randn(rng, q, 33, dtype=dtype), randn(rng, 2100, 33, dtype=dtype, shift=0.3)
    values, indices = knn(x, y, 6, metric)
    assert values.dtype == compute_dtype(dtype)  # fp16/bf16 are computed and returned in float32
    check_knn(values, indices, x, y, 6, metric)


def _padded_rows(t):
    base = torch.full((t.shape[0], t.shape[1] + 5), float("nan"), dtype=t.dtype)
    base[:, : t.shape[1]] = t
    return base[:, : t.shape[1]]  # row stride D + 5, unit column stride, NaN padding


def _column_major(t):
    return t.t().contiguous().t()


def _col_sliced(t):
    base = torch.full((t.shape[0], 2 * t.shape[1]), float("nan"), dtype=t.dtype)
    base[:, ::2] = t
    return base[:, ::2]


def _row_sliced(t):
    base = torch.full((3 * t.shape[0], t.shape[1]), float("nan"), dtype=t.dtype)
    base[::3] = t
    return base[::3]


def _offset(t):
    base = torch.full((t.shape[0] + 4, t.shape[1]), float("nan"), dtype=t.dtype)
    base[4:] = t
    return base[4:]


def _broadcast(t):
    return t[:1].expand_as(t)  # stride 0: every row the same (all ties in a bank)


def _overlapping(t):
    flat = t.reshape(-1)[: t.shape[0] + t.shape[1] - 1].clone()
    return flat.as_strided(t.shape, (1, 1))  # row i = flat[i:i + D]: rows overlap


LAYOUTS = {"contiguous": lambda t: t, "padded_rows": _padded_rows, "column_major": _column_major,
           "col_sliced": _col_sliced, "row_sliced": _row_sliced, "offset": _offset,
           "broadcast": _broadcast, "overlapping": _overlapping}
LAYOUT_PAIRS = [("padded_rows", "contiguous"), ("contiguous", "padded_rows"),
                ("column_major", "column_major"), ("col_sliced", "row_sliced"),
                ("row_sliced", "col_sliced"), ("offset", "offset"), ("broadcast", "contiguous"),
                ("contiguous", "broadcast"), ("padded_rows", "row_sliced"), ("overlapping", "overlapping")]


@native_cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("qlayout,blayout", LAYOUT_PAIRS, ids=["-".join(p) for p in LAYOUT_PAIRS])
def test_parity_non_contiguous(rng, num_threads, qlayout, blayout, metric, dtype):
    num_threads(2)
    for q in (3, 150):  # both code paths
        x = LAYOUTS[qlayout](randn(rng, q, 19, dtype=dtype))
        y = LAYOUTS[blayout](randn(rng, 1100, 19, dtype=dtype, shift=0.2))
        for t, layout in ((x, qlayout), (y, blayout)):  # the layout is what the name says
            assert t.is_contiguous() is (layout in ("contiguous", "offset"))
            assert (t.storage_offset() > 0) is (layout == "offset")
        x_before, y_before = x.clone(), y.clone()
        for k in (1, 7):
            values, indices = knn(x, y, k, metric)
            # A broadcast bank is all ties; with random (inexact) data the GEMM may
            # round equal rows differently, so only the tolerance-aware check applies.
            check_knn(values, indices, x.contiguous(), y.contiguous(), k, metric)
        assert torch.equal(x, x_before) and torch.equal(y, y_before)


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("where", ["one", "just-below", "at", "above"])
def test_code_paths_split_bank_and_query_blocks(rng, num_threads, where, threads, metric):
    # Q < threads * 64 (and threads > 1): the bank is split across threads and
    # merged; otherwise query blocks of up to 256. N spans 3 bank tiles.
    num_threads(threads)
    q = {"one": 1, "just-below": threads * 64 - 1, "at": threads * 64, "above": threads * 64 * 2 + 5}[where]
    x, y = randn(rng, q, 24), randn(rng, 2049 + 77, 24, shift=0.4)
    for k in (1, 10):
        check_knn(*knn(x, y, k, metric), x, y, k, metric)


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q", [3, 130], ids=["split-bank", "query-blocks"])
@pytest.mark.parametrize("k", [1000, 4096])
def test_parity_large_k(rng, num_threads, k, q, metric):
    # N = 5000 with 2 threads and few queries: chunks of 3072 and 1928 rows, so
    # the second chunk has fewer rows than k = 4096 and pads its partial list.
    num_threads(2)
    x, y = randn(rng, q, 8), randn(rng, 5000, 8)
    check_knn(*knn(x, y, k, metric), x, y, k, metric)


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [1024, 1025, 2049])
@pytest.mark.parametrize("q,threads", [(2, 2), (150, 2), (5, 1)], ids=["split-bank", "query-blocks", "one-thread"])
def test_parity_k_equals_n(rng, num_threads, n, metric, q, threads):
    num_threads(threads)
    x, y = randn(rng, q, 5), randn(rng, n, 5)
    values, indices = knn(x, y, n, metric)
    check_knn(values, indices, x, y, n, metric)
    assert torch.equal(indices.sort(1).values, torch.arange(n).expand(q, n))


# ====================================================================== exact ties

@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q,threads", [(3, 2), (1, 3), (200, 2), (40, 1)],
                         ids=["split-bank", "split-bank-3", "query-blocks", "one-thread"])
@pytest.mark.parametrize("k", [1, 7, 700, 3000])
def test_exact_ties_go_to_lower_index(rng, num_threads, metric, q, threads, k):
    num_threads(threads)
    x, y = tie_data(rng, q, 3000, 8, metric)
    values, indices = knn(x, y, k, metric)
    oracle_values, oracle_indices = tie_oracle(x, y, k, metric)
    assert torch.equal(indices, oracle_indices), "ties must go to the lower index"
    check_knn(values, indices, x, y, k, metric, ref=(oracle_values, oracle_indices))
    if metric in ("sqeuclidean", "ip"):  # integer arithmetic: exact values too
        assert torch.equal(values.double(), oracle_values)
    if metric != "cosine":  # the reference is exact here too (see the next test)
        assert torch.equal(indices, reference.knn(x.double(), y.double(), k, metric)[1])


# Cosine is left out on purpose: the reference normalizes rows before its GEMM,
# so duplicated rows are no longer exact integers and BLAS may round equal
# columns differently (it does, at tile edges); its tie order among duplicates
# is then up to rounding, which check_knn's tolerance covers elsewhere.
@pytest.mark.parametrize("metric", ["l2", "sqeuclidean", "ip"])
@pytest.mark.parametrize("tile", [None, 7, 1000], ids=["default-tile", "tile-7", "tile-1000"])
def test_exact_ties_reference_vs_brute_force(rng, monkeypatch, metric, tile):
    if tile is not None:
        monkeypatch.setattr(reference, "_BANK_TILE", tile)
    x, y = tie_data(rng, 5, 4100, 8, metric)  # crosses the default 4096-row tile too
    x64, y64 = x.double(), y.double()
    for k in (1, 9, 1500):
        values, indices = reference.knn(x64, y64, k, metric)
        brute_values, brute_indices = brute_force(x64, y64, k, metric)
        assert torch.equal(indices, brute_indices)
        assert torch.equal(indices, tie_oracle(x, y, k, metric)[1])
        torch.testing.assert_close(values, brute_values, rtol=1e-12, atol=1e-12)


@native_cpu_only
@pytest.mark.parametrize("q,threads", [(3, 2), (130, 2)], ids=["split-bank", "query-blocks"])
def test_cosine_zero_vectors(rng, num_threads, q, threads):
    """A zero vector has cosine similarity 0 with everything (ties by index)."""
    num_threads(threads)
    x, y = randn(rng, q, 6), randn(rng, 1500, 6)
    x[q // 2] = 0
    y[[3, 700, 1200]] = 0
    values, indices = knn(x, y, 1500, "cosine")
    assert torch.equal(values[q // 2], torch.zeros(1500))
    assert torch.equal(indices[q // 2], torch.arange(1500))
    keep = torch.arange(q) != q // 2
    check_knn(values[keep], indices[keep], x[keep], y, 1500, "cosine")
    zero_rows = values[keep].gather(1, (indices[keep] == 3).int().argmax(1, keepdim=True))
    assert (zero_rows == 0).all()


# ====================================================================== SIMD levels

@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q", [3, 200], ids=["split-bank", "query-blocks"])
def test_simd_level_matches_reference(rng, simd_level, num_threads, metric, q):
    num_threads(2)
    # 2111 rows: two full tiles and a tail that is not a multiple of 32 or 64 lanes
    x, y = randn(rng, q, 19), randn(rng, 2111, 19, shift=0.1)
    for k in (1, 9, 100):
        check_knn(*knn(x, y, k, metric), x, y, k, metric, what=f"simd={simd_level}")


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
def test_simd_levels_agree(rng, num_threads, metric):
    levels = supported_simd_levels()
    num_threads(2)
    x, y = randn(rng, 40, 13), randn(rng, 1111, 13)
    xt, yt = tie_data(rng, 40, 1111, 8, metric)
    results, tie_results = {}, {}
    for level in levels:
        assert gencore.set_simd_level(level) == level
        results[level] = knn(x, y, 12, metric)
        tie_results[level] = knn(xt, yt, 12, metric)
        check_knn(*results[level], x, y, 12, metric, what=f"simd={level}")
    first = levels[0]
    for level in levels[1:]:
        # exact arithmetic: bit-identical; random data: the same up to rounding
        assert torch.equal(tie_results[level][1], tie_results[first][1]), level
        assert torch.equal(tie_results[level][0], tie_results[first][0]), level
        atol = tolerance(x.double(), y.double(), metric, torch.float32)
        diff = (to_key(results[level][0], metric) - to_key(results[first][0], metric)).abs()
        assert (diff <= atol).all(), level


# ====================================================================== the native module itself

@native_cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", ["sqeuclidean", "ip", "cosine"])
@pytest.mark.parametrize("q,n,k,threads", [(3, 2500, 7, 2), (3, 2500, 2500, 2), (300, 1100, 17, 2),
                                           (257, 7, 7, 1), (2, 1025, 1025, 4)])
def test_native_writes_every_output(rng, num_threads, dtype, metric, q, n, k, threads):
    """Outputs poisoned before the native call: every element must be written."""
    num_threads(threads)
    x, y = randn(rng, q, 9, dtype=dtype), randn(rng, n, 9, dtype=dtype)
    values = torch.full((q, k), float("nan"), dtype=dtype)
    indices = torch.full((q, k), -1, dtype=torch.int64)
    _native.core.knn(x.numpy(), y.numpy(), k, METRIC_CODES[metric], values.numpy(), indices.numpy(), threads)
    assert not values.isnan().any() and (indices >= 0).all()
    check_knn(values, indices, x, y, k, metric)
    op_values, op_indices = knn(x, y, k, metric)  # same kernel, same threads: bit-identical
    assert torch.equal(values, op_values) and torch.equal(indices, op_indices)


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q,threads", [(3, 2), (200, 2)], ids=["split-bank", "query-blocks"])
def test_deterministic(rng, num_threads, metric, q, threads):
    num_threads(threads)
    x, y = randn(rng, q, 16), randn(rng, 3000, 16)
    first = knn(x, y, 20, metric)
    for _ in range(3):
        again = knn(x, y, 20, metric)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def _native_call(case):
    x, y = torch.randn(4, 6), torch.randn(20, 6)
    v, i = torch.empty(4, 3), torch.empty(4, 3, dtype=torch.int64)
    args = dict(queries=x.numpy(), bank=y.numpy(), k=3, metric=0, values=v.numpy(), indices=i.numpy(),
                num_threads=1)
    if case in ("k_too_large", "k_zero"):  # outputs shaped for k, so the k check itself fires
        args["k"] = 21 if case == "k_too_large" else 0
        args["values"] = torch.empty(4, args["k"]).numpy()
        args["indices"] = torch.empty(4, args["k"], dtype=torch.int64).numpy()
    elif case == "metric_code":
        args["metric"] = 7
    elif case == "values_shape":
        args["values"] = torch.empty(4, 2).numpy()
    elif case == "values_dtype":
        args["values"] = torch.empty(4, 3, dtype=torch.float64).numpy()
    elif case == "indices_dtype":
        args["indices"] = torch.empty(4, 3, dtype=torch.int32).numpy()
    elif case == "values_not_contiguous":
        args["values"] = torch.empty(3, 4).t().numpy()
    elif case == "columns_not_contiguous":
        args["queries"] = torch.randn(4, 12)[:, ::2].numpy()
    elif case == "one_dimensional":
        args["bank"] = torch.randn(20).numpy()
    elif case == "feature_mismatch":
        args["bank"] = torch.randn(20, 5).numpy()
    elif case == "nan_bank":
        y[11, 2] = float("nan")
    _native.core.knn(**args)


@native_cpu_only
@pytest.mark.parametrize("case", ["k_too_large", "k_zero", "metric_code", "values_shape", "values_dtype",
                                  "indices_dtype", "values_not_contiguous", "columns_not_contiguous",
                                  "one_dimensional", "feature_mismatch", "nan_bank"])
def test_native_errors_become_python_exceptions(case):
    """C++ checks raise Python exceptions (never crash) even when called directly."""
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        _native_call(case)


# ====================================================================== reference backend and the spec

@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_forced_reference_backend_matches_native(rng, monkeypatch, metric, dtype):
    x, y = randn(rng, 20, 11, dtype=dtype), randn(rng, 1300, 11, dtype=dtype)
    native = knn(x, y, 5, metric)
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    forced = knn(x, y, 5, metric)
    expected = reference.knn(x, y, 5, metric)
    assert torch.equal(forced[0], expected[0]) and torch.equal(forced[1], expected[1])
    assert forced[0].dtype == native[0].dtype == compute_dtype(dtype)
    check_knn(*native, x, y, 5, metric, what="native")
    check_knn(*forced, x, y, 5, metric, what="forced reference")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tile", [None, 7, 64], ids=["default-tile", "tile-7", "tile-64"])
def test_reference_matches_brute_force(rng, monkeypatch, metric, dtype, tile):
    if tile is not None:
        monkeypatch.setattr(reference, "_BANK_TILE", tile)
    x, y = randn(rng, 9, 6, dtype=dtype), randn(rng, 150, 6, dtype=dtype, shift=0.5)
    brute = brute_force(x.double(), y.double(), 150, metric)
    for k in (1, 4, 150):
        values, indices = reference.knn(x, y, k, metric)
        assert values.dtype == compute_dtype(dtype) and indices.dtype == torch.int64
        check_knn(values, indices, x, y, k, metric, ref=brute, what="reference")


def test_reference_empty_queries():
    values, indices = reference.knn(torch.zeros(0, 3), torch.randn(5, 3), 2)
    assert values.shape == (0, 2) and indices.shape == (0, 2)


# ====================================================================== peers

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_peer_sklearn_brute(rng, num_threads, metric, dtype):
    neighbors = pytest.importorskip("sklearn.neighbors", reason="scikit-learn is not installed")
    num_threads(2)
    q, n, d, k = 40, 1500, 16, 10
    x, y = randn(rng, q, d, dtype=dtype), randn(rng, n, d, dtype=dtype, shift=0.3)
    peer = neighbors.NearestNeighbors(n_neighbors=k + 1, algorithm="brute",
                                      metric="euclidean" if metric == "l2" else "cosine").fit(y.numpy())
    dist, ind = peer.kneighbors(x.numpy())
    peer_values = torch.from_numpy(dist).double()
    if metric == "cosine":
        peer_values = 1.0 - peer_values  # cosine distance -> similarity
    check_knn(*knn(x, y, k, metric), x, y, k, metric, ref=(peer_values, torch.from_numpy(ind)),
              what="gencore vs scikit-learn")


@pytest.mark.parametrize("metric", ["sqeuclidean", "ip"])
@pytest.mark.parametrize("q", [5, 64], ids=["faiss-direct", "faiss-blas"])  # faiss uses BLAS from 20 queries
def test_peer_faiss_flat(rng, num_threads, metric, q):
    faiss = pytest.importorskip("faiss", reason="faiss is not installed")
    num_threads(2)
    n, d, k = 3000, 24, 16
    x, y = randn(rng, q, d), randn(rng, n, d, shift=0.2)
    index = faiss.IndexFlatL2(d) if metric == "sqeuclidean" else faiss.IndexFlatIP(d)
    index.add(y.numpy())
    dist, ind = index.search(x.numpy(), k + 1)  # IndexFlatL2 returns squared L2
    check_knn(*knn(x, y, k, metric), x, y, k, metric,
              ref=(torch.from_numpy(dist).double(), torch.from_numpy(ind)), what="gencore vs faiss")


# ====================================================================== torch integration

OPCHECK_STATIC = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(rng, metric, dtype):
    x = randn(rng, 5, 6, dtype=dtype).requires_grad_()
    y = randn(rng, 30, 6, dtype=dtype).requires_grad_()
    torch.library.opcheck(torch.ops.gencore.ood_knn.default, (x, y, 4, metric), test_utils=OPCHECK_STATIC)


# _checks.same_size() puts queries.shape[1] / bank.shape[1] in a set(); SymInts
# are unhashable ("TypeError: unhashable type: non-nested SymInt").
def test_opcheck_dynamic_shapes(rng):
    x, y = randn(rng, 5, 6).requires_grad_(), randn(rng, 30, 6).requires_grad_()
    torch.library.opcheck(torch.ops.gencore.ood_knn.default, (x, y, 4, "l2"),
                          test_utils=("test_aot_dispatch_dynamic",))


def _well_separated(rng, metric, q=2, n=7, d=4, gap=0.05):
    """float64 inputs whose k-NN order survives finite-difference perturbations."""
    for _ in range(2000):
        x, y = randn(rng, q, d, dtype=torch.float64), randn(rng, n, d, dtype=torch.float64)
        key = to_key(brute_force(x, y, n, metric)[0], metric)
        if (key[:, 1:] - key[:, :-1]).min() > gap and (metric != "l2" or key.min() > 0.01):
            return x, y
    raise AssertionError("could not draw well-separated inputs")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("wrt", ["queries", "bank", "both"])
def test_gradcheck(rng, metric, wrt):
    x, y = _well_separated(rng, metric)
    x.requires_grad_(wrt in ("queries", "both"))
    y.requires_grad_(wrt in ("bank", "both"))
    assert torch.autograd.gradcheck(lambda a, b: knn(a, b, 3, metric)[0], (x, y), eps=1e-6, atol=1e-6, rtol=1e-5)


@native_cpu_only
@pytest.mark.parametrize("metric", METRICS)
def test_backward_float32_matches_float64(rng, metric):
    x, y = _well_separated(rng, metric, q=3, n=9)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        a, b = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
        knn(a, b, 4, metric)[0].sum().backward()
        assert a.grad.dtype == dtype and b.grad.dtype == dtype
        grads[dtype] = (a.grad.double(), b.grad.double())
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        torch.testing.assert_close(g32, g64, rtol=1e-4, atol=1e-4)


def _compile_unavailable(exc: BaseException) -> str | None:
    """A reason to skip when torch.compile failed for environmental reasons, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, text = type(exc).__name__, str(exc)
        if name in ("CppCompileError", "InvalidCxxCompiler") or "C++ compiler" in text \
                or "No working C compiler" in text or "cc1plus" in text:
            return f"torch.compile cannot build kernels here ({name}: {text.splitlines()[0] if text else ''})"
        exc = exc.__cause__ or exc.__context__
    return None


@native_cpu_only
def test_torch_compile_fullgraph_matches_eager(rng):
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    torch._dynamo.reset()
    x, y = randn(rng, 11, 7), randn(rng, 1200, 7)

    def fn(a, b):
        return knn(a, b, 5, "l2")

    compiled = torch.compile(fn, fullgraph=True)
    try:
        out = compiled(x, y)
    except Exception as exc:  # noqa: BLE001 - re-raised unless the toolchain is missing
        reason = _compile_unavailable(exc)
        if reason is None:
            raise
        pytest.skip(reason)
    eager = fn(x, y)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


@native_cpu_only
def test_torch_compile_dynamic_shapes(rng):
    torch._dynamo.reset()
    x, y = randn(rng, 11, 7), randn(rng, 1200, 7)
    compiled = torch.compile(lambda a, b: knn(a, b, 5, "l2"), fullgraph=True, dynamic=True)
    out = compiled(x, y)
    eager = knn(x, y, 5, "l2")
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_meta_tensors(dtype, metric):
    x = torch.empty(5, 8, device="meta", dtype=dtype)
    y = torch.empty(20, 8, device="meta", dtype=dtype)
    for values, indices in (knn(x, y, 3, metric), torch.ops.gencore.ood_knn(x, y, 3, metric)):
        assert values.device.type == "meta" and indices.device.type == "meta"
        assert values.shape == (5, 3) and indices.shape == (5, 3)
        assert values.dtype == compute_dtype(dtype) and indices.dtype == torch.int64
    values, indices = knn(x[:0], y, 20, metric)
    assert values.shape == (0, 20) and indices.shape == (0, 20)
    with pytest.raises(ValueError, match=r"\bk\b"):
        knn(x, y, 21, metric)


# ====================================================================== bad input

_X, _Y = torch.randn(4, 8), torch.randn(20, 8)


def _nan_at(t, index, value=float("nan")):
    t = t.clone()
    t[index] = value
    return t


BAD_INPUTS = [
    pytest.param(lambda: knn(_X.tolist(), _Y, 3), TypeError, "queries", id="queries-list"),
    pytest.param(lambda: knn(_X, _Y.numpy(), 3), TypeError, "bank", id="bank-ndarray"),
    pytest.param(lambda: knn(_X[0], _Y, 3), ValueError, "queries", id="queries-1d"),
    pytest.param(lambda: knn(_X, _Y[None], 3), ValueError, "bank", id="bank-3d"),
    pytest.param(lambda: knn(_X.int(), _Y, 3), TypeError, "queries", id="queries-int32"),
    pytest.param(lambda: knn(_X, _Y.long(), 3), TypeError, "bank", id="bank-int64"),
    pytest.param(lambda: knn(_X.bool(), _Y.bool(), 3), TypeError, "queries", id="bool"),
    pytest.param(lambda: knn(_X.to(torch.complex64), _Y.to(torch.complex64), 3), TypeError, "queries",
                 id="complex"),
    pytest.param(lambda: knn(_X, _Y.double(), 3), TypeError, "queries.*bank", id="dtype-mismatch"),
    pytest.param(lambda: knn(_X.half(), _Y, 3), TypeError, "queries.*bank", id="dtype-mismatch-half"),
    pytest.param(lambda: knn(_X, _Y[:, :5], 3), ValueError, r"queries\.shape\[1\].*bank\.shape\[1\]",
                 id="feature-mismatch"),
    pytest.param(lambda: knn(_X[:, :0], _Y[:, :0], 1), ValueError, "feature dimension", id="zero-features"),
    pytest.param(lambda: knn(_X, _Y[:0], 1), ValueError, "bank", id="empty-bank"),
    pytest.param(lambda: knn(_X, _Y, 0), ValueError, r"\bk\b", id="k-zero"),
    pytest.param(lambda: knn(_X, _Y, -2), ValueError, r"\bk\b", id="k-negative"),
    pytest.param(lambda: knn(_X, _Y, 21), ValueError, r"\bk\b", id="k-above-n"),
    pytest.param(lambda: knn(_X, _Y, 2.0), TypeError, r"\bk\b", id="k-float"),
    pytest.param(lambda: knn(_X, _Y, "2"), TypeError, r"\bk\b", id="k-str"),
    pytest.param(lambda: knn(_X, _Y, True), TypeError, r"\bk\b", id="k-bool"),
    pytest.param(lambda: knn(_X, _Y, 3, "manhattan"), ValueError, "metric", id="metric-unknown"),
    pytest.param(lambda: knn(_X, _Y, 3, "L2"), ValueError, "metric", id="metric-case"),
    pytest.param(lambda: knn(_X, _Y, 3, None), TypeError, "metric", id="metric-none"),
    pytest.param(lambda: knn(_nan_at(_X, (1, 2)), _Y, 3), ValueError, "queries", id="nan-queries"),
    pytest.param(lambda: knn(_X, _nan_at(_Y, (0, 0), float("inf")), 3), ValueError, "bank", id="inf-bank"),
    pytest.param(lambda: knn(_nan_at(_X, (3, 7), -float("inf")), _Y, 3), ValueError, "queries",
                 id="neg-inf-queries"),
    pytest.param(lambda: knn(_nan_at(_X.half(), (0, 1)), _Y.half(), 3), ValueError, "queries", id="nan-half"),
    pytest.param(lambda: knn(_X.double(), _nan_at(_Y.double(), (19, 7)), 3), ValueError, "bank",
                 id="nan-float64-last-row"),
    pytest.param(lambda: knn(_X.to("meta"), _Y, 3), ValueError, "device", id="device-meta-cpu"),
    pytest.param(lambda: knn(_X, _Y.to("meta"), 3), ValueError, "device", id="device-cpu-meta"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("call,exc,match", BAD_INPUTS)
def test_bad_input(monkeypatch, backend, call, exc, match):
    monkeypatch.setenv("GENCORE_BACKEND", backend)
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("q,threads", [(3, 2), (300, 2)], ids=["split-bank", "query-blocks"])
def test_nan_in_one_bank_row_of_a_large_bank(rng, monkeypatch, num_threads, backend, q, threads):
    monkeypatch.setenv("GENCORE_BACKEND", backend)
    num_threads(threads)
    x, y = randn(rng, q, 16), randn(rng, 5000, 16)
    y[2500, 9] = float("nan")
    with pytest.raises(ValueError, match="bank"):
        knn(x, y, 5)
    y[2500, 9] = float("inf")
    with pytest.raises(ValueError, match="bank"):
        knn(x, y, 5, "cosine")


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "padded_rows", "row_sliced"])
def test_inputs_untouched_and_outputs_fresh(rng, monkeypatch, backend, dtype, layout):
    monkeypatch.setenv("GENCORE_BACKEND", backend)
    x = LAYOUTS[layout](randn(rng, 10, 12, dtype=dtype))
    y = LAYOUTS[layout](randn(rng, 40, 12, dtype=dtype))
    x_before, y_before = x.clone(), y.clone()
    x_storage, y_storage = x.untyped_storage(), y.untyped_storage()
    storage_before = (bytes(x_storage), bytes(y_storage))  # the padding too
    for metric in METRICS:
        for k in (1, 40):
            values, indices = knn(x, y, k, metric)
            assert torch.equal(x, x_before) and torch.equal(y, y_before)
            assert (bytes(x_storage), bytes(y_storage)) == storage_before
            assert values.is_contiguous() and indices.is_contiguous()
            out_ptrs = {values.untyped_storage().data_ptr(), indices.untyped_storage().data_ptr()}
            assert len(out_ptrs) == 2
            assert not out_ptrs & {x_storage.data_ptr(), y_storage.data_ptr()}, "output aliases an input"


# ====================================================================== cosine with tiny norms

def _with_tiny_parallel_row(rng, side, dtype, scale):
    """Queries [4, 8] and bank [50, 8] where one row is a tiny multiple of a row on the other side."""
    x, y = randn(rng, 4, 8, dtype=dtype), randn(rng, 50, 8, dtype=dtype)
    if side == "bank":
        y[17] = x[0] * scale  # parallel to query 0
    else:
        x[2] = y[30] * scale  # parallel to bank row 30
    return x, y


@native_cpu_only
@pytest.mark.parametrize("side", ["bank", "queries"])
@pytest.mark.parametrize("dtype,scale", [
    pytest.param(torch.float32, 1e-6, id="float32-1e-6"),
    pytest.param(torch.float64, 1e-6, id="float64-1e-6"),
    pytest.param(torch.float32, 1e-13, id="float32-1e-13"),
    # The squared norm underflows to 0; norms are clamped at 1e-12 (F.normalize's eps).
    pytest.param(torch.float32, 1e-25, id="float32-1e-25"),
    pytest.param(torch.float64, 1e-170, id="float64-1e-170"),
])
def test_cosine_values_bounded_for_tiny_rows(rng, side, dtype, scale):
    """Cosine similarity is in [-1, 1] for every finite input, however small its norm."""
    x, y = _with_tiny_parallel_row(rng, side, dtype, scale)
    values, _ = knn(x, y, 5, "cosine")
    assert (values.abs() <= 1 + 1e-5).all(), values


@native_cpu_only
@pytest.mark.parametrize("side", ["bank", "queries"])
@pytest.mark.parametrize("dtype,scale", [
    pytest.param(torch.float32, 1e-6, id="float32-1e-6"),
    pytest.param(torch.float64, 1e-6, id="float64-1e-6"),
    # Below eps=1e-12 the similarity shrinks with the norm, identically in every backend.
    pytest.param(torch.float64, 1e-13, id="float64-1e-13"),
])
def test_cosine_tiny_rows_match_reference(rng, side, dtype, scale):
    x, y = _with_tiny_parallel_row(rng, side, dtype, scale)
    check_knn(*knn(x, y, 5, "cosine"), x, y, 5, "cosine")


# ====================================================================== CUDA



@cuda_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64,
                                   torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q,n,d", [(1, 7, 3), (65, 1025, 17), (600, 3000, 130), (5000, 300, 8)])
def test_cuda_matches_cpu(rng, metric, dtype, q, n, d):
    x, y = randn(rng, q, d, dtype=dtype), randn(rng, n, d, dtype=dtype, shift=0.3)
    k = min(5, n)
    values, indices = knn(x.cuda(), y.cuda(), k, metric)
    assert values.device.type == "cuda" and indices.device.type == "cuda"
    assert values.dtype == compute_dtype(dtype) and indices.dtype == torch.int64
    # the CUDA kernel computes in float32 whatever the input dtype
    check_knn(values, indices, x, y, k, metric, dtype=torch.float32, what="cuda")
    cpu_values, cpu_indices = knn(x, y, k, metric)
    atol = tolerance(x.double(), y.double(), metric, torch.float32)
    assert ((to_key(values.cpu(), metric) - to_key(cpu_values, metric)).abs() <= 2 * atol).all()


@cuda_only
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_large_k(rng, metric):
    x, y = randn(rng, 3, 8), randn(rng, 5000, 8)
    values, indices = knn(x.cuda(), y.cuda(), 4096, metric)
    check_knn(values, indices, x, y, 4096, metric, what="cuda")


@cuda_only
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("q", [3, 200])
def test_cuda_exact_ties(rng, metric, q):
    x, y = tie_data(rng, q, 3000, 8, metric)
    values, indices = knn(x.cuda(), y.cuda(), 700, metric)
    assert torch.equal(indices.cpu(), tie_oracle(x, y, 700, metric)[1])


@cuda_only
def test_cuda_runs_on_the_callers_stream(rng):
    # The side stream is kept busy first (torch.cuda._sleep), then fills the
    # queries, then runs knn. A kernel launched on any other stream would read
    # the queries before they are written and return the neighbours of zeros.
    x, y = randn(rng, 300, 32).cuda(), randn(rng, 20000, 32).cuda()
    expected = knn(x, y, 10, "l2")
    values, indices = on_a_busy_side_stream(x, lambda queries: knn(queries, y, 10, "l2"))
    assert torch.equal(values, expected[0]) and torch.equal(indices, expected[1])


@cuda_only
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_cuda_multi_slab_multi_chunk_merge(rng, metric):
    # 4100 queries = two slabs of <= 4096; 20000 bank rows = two chunks of
    # 16384 at that slab size (knn.cu): the running top-k merge across chunks
    # and the slab offsets both run.
    x, y = randn(rng, 4100, 8), randn(rng, 20000, 8)
    values, indices = knn(x.cuda(), y.cuda(), 37, metric)
    check_knn(values.cpu(), indices.cpu(), x, y, 37, metric, dtype=torch.float32, what="cuda merge")


@cuda_only
def test_cuda_k_above_kernel_limit_falls_back_with_a_warning(rng, monkeypatch):
    from gencore import _dispatch
    monkeypatch.setattr(_dispatch, "_warned", set())
    limit = gencore._native.cuda.knn_max_k()
    x, y = randn(rng, 3, 4), randn(rng, limit + 10, 4)
    with pytest.warns(RuntimeWarning, match="largest k"):
        values, indices = knn(x.cuda(), y.cuda(), limit + 1, "l2")
    check_knn(values.cpu(), indices.cpu(), x, y, limit + 1, "l2", what="cuda fallback")


@cuda_only
def test_cuda_device_mix_raises():
    x, y = torch.randn(4, 8), torch.randn(20, 8)
    with pytest.raises(ValueError, match="device"):
        knn(x.cuda(), y, 3)
    with pytest.raises(ValueError, match="device"):
        knn(x, y.cuda(), 3)


@cuda_only
def test_cuda_bad_input(rng):
    x, y = randn(rng, 4, 8).cuda(), randn(rng, 20, 8).cuda()
    y[7, 3] = float("nan")
    values, indices = knn(x, y, 3)  # not checked on CUDA (no host sync): the NaN row ranks last
    assert not (indices == 7).any()
    gencore.set_check_finite("always")
    try:
        with pytest.raises(ValueError, match="bank"):
            knn(x, y, 3)
    finally:
        gencore.set_check_finite("auto")
    with pytest.raises(ValueError, match=r"\bk\b"):
        knn(x, y, 21)