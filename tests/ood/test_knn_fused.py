"""The fused small-query CPU path of knn (few float32 queries: hand-written dot
tiles instead of a BLAS GEMM, at every SIMD level). It must give the same exact
answer as the BLAS path, so it is checked against the float64 reference and
against the BLAS path on the same queries, over the tails of every kernel:
query counts around each level's crossover, feature dimensions around the
vector widths, bank sizes around the 4-row groups, strided rows, split banks."""
import pytest
import torch

import gencore
from gencore import _native
from tests.conftest import supported_simd_levels
from tests.ood.test_knn import check_knn

pytestmark = pytest.mark.skipif(_native.core is None, reason="needs the native CPU module gencore._core")

METRICS = ("l2", "sqeuclidean", "ip", "cosine")


def at_level(level, threads, fn):
    """fn() at a SIMD level and thread count; returns (fn's result, path taken)."""
    detected, before = _native.core.detected_simd_level(), gencore.get_num_threads()
    gencore.set_simd_level(level)
    gencore.set_num_threads(threads)
    try:
        result = fn()
        return result, _native.core.last_knn_path()
    finally:
        gencore.set_simd_level(detected)
        gencore.set_num_threads(before)


def max_fused(level):
    return at_level(level, 1, lambda: _native.core.knn_fused_max_queries(False))[0]


@pytest.mark.parametrize("level", supported_simd_levels())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", (1, 7, 16, 17, 33, 256))
def test_fused_matches_reference_at_every_level(level, metric, d):
    limit = max_fused(level)
    if limit == 0:
        pytest.skip(f"no fused path at simd={level}")
    g = torch.Generator().manual_seed(1000 * d + len(metric))
    for q in sorted(q for q in {1, 2, 3, 5, limit - 1, limit} if 1 <= q <= limit):
        for n in (1, 3, 5, 257):
            x, bank = torch.randn(q, d, generator=g), torch.randn(n, d, generator=g)
            k = min(4, n)
            (v, i), path = at_level(level, 1, lambda: gencore.ood.knn(x, bank, k, metric))
            assert path == "fused", (level, q, n, d)
            check_knn(v, i, x, bank, k, metric, what=f"fused simd={level} q={q} n={n}")


@pytest.mark.parametrize("level", supported_simd_levels())
def test_crossover_switches_to_blas(level):
    limit = max_fused(level)
    if limit == 0:
        pytest.skip(f"no fused path at simd={level}")
    g = torch.Generator().manual_seed(7)
    x, bank = torch.randn(limit + 1, 24, generator=g), torch.randn(300, 24, generator=g)
    (v, i), path = at_level(level, 1, lambda: gencore.ood.knn(x, bank, 5, "l2"))
    assert path == "blas"
    (v2, i2), path2 = at_level(level, 1, lambda: gencore.ood.knn(x[:limit], bank, 5, "l2"))
    assert path2 == "fused"
    check_knn(v2, i2, x[:limit], bank, 5, "l2")


@pytest.mark.parametrize("level", supported_simd_levels())
@pytest.mark.parametrize("metric", ("sqeuclidean", "ip"))
def test_fused_equals_blas_exactly_on_integer_data(level, metric):
    # Small integers: every product and partial sum is exact in float32 in any
    # order, so both paths must return the very same values and indices (ties
    # included, lower index first).
    limit = max_fused(level)
    if limit == 0:
        pytest.skip(f"no fused path at simd={level}")
    g = torch.Generator().manual_seed(3)
    bank = torch.randint(-3, 4, (700, 37), generator=g).float()
    bank = torch.cat([bank, bank.flip(0)])  # every row twice: real ties
    x = torch.randint(-3, 4, (limit, 37), generator=g).float()
    padded = torch.cat([x, torch.zeros(64, 37)])  # more queries than the crossover: BLAS
    (fused, path), (blas, path_b) = (at_level(level, 2, lambda: gencore.ood.knn(x, bank, 9, metric)),
                                     at_level(level, 2, lambda: gencore.ood.knn(padded, bank, 9, metric)))
    assert (path, path_b) == ("fused", "blas")
    assert torch.equal(fused[0], blas[0][:limit]) and torch.equal(fused[1], blas[1][:limit])


@pytest.mark.parametrize("level", supported_simd_levels())
@pytest.mark.parametrize("threads", (1, 2))
def test_fused_strided_rows_and_split_bank(level, threads):
    limit = max_fused(level)
    if limit == 0:
        pytest.skip(f"no fused path at simd={level}")
    g = torch.Generator().manual_seed(11 + threads)
    # Row strides that are not the row length (every other column), and a bank
    # large enough for two threads to take a chunk each.
    x = torch.randn(min(limit, 3), 2 * 45, generator=g)[:, ::2]
    bank = torch.randn(20_011, 2 * 45, generator=g)[:, ::2]
    (v, i), path = at_level(level, threads, lambda: gencore.ood.knn(x, bank, 17, "cosine"))
    assert path == "fused"
    check_knn(v, i, x, bank, 17, "cosine", what=f"fused simd={level} threads={threads}")


def test_float64_stays_on_blas():
    assert _native.core.knn_fused_max_queries(True) == 0
    g = torch.Generator().manual_seed(5)
    x, bank = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.randn(50, 16, generator=g,
                                                                              dtype=torch.float64)
    v, i = gencore.ood.knn(x, bank, 3)
    assert _native.core.last_knn_path() == "blas"
    check_knn(v, i, x, bank, 3, "l2")
