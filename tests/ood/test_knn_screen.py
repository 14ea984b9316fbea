"""The bf16-screened CPU path of knn (AVX512-BF16 CPUs): it must give the exact
fp32 answer, so it is checked against the float64 reference and against the
BLAS path on the same inputs, including inputs built to defeat the screen."""
import pytest
import torch

import gencore
from gencore import _native
from gencore.ood import reference

pytestmark = [
    pytest.mark.skipif(_native.core is None, reason="needs the native CPU module gencore._core"),
    pytest.mark.skipif(_native.core is not None and "avx512bf16" not in _native.core.compiled_isas(),
                       reason="this build has no AVX512-BF16 kernels (portable-only or non-x86 build)"),
    pytest.mark.skipif(_native.core is not None and not _native.core.has_avx512_bf16(),
                       reason="the bf16 screen needs a CPU with AVX512-BF16"),
]

METRICS = ("l2", "sqeuclidean", "ip", "cosine")


@pytest.fixture
def threads2():
    before = gencore.get_num_threads()
    gencore.set_num_threads(2)
    yield
    gencore.set_num_threads(before)


def run_path(simd, x, bank, k, metric):
    """knn at a SIMD level; returns (values, indices, path taken)."""
    detected = _native.core.detected_simd_level()
    gencore.set_simd_level(simd)
    try:
        v, i = gencore.ood.knn(x, bank, k, metric)
        return v, i, _native.core.last_knn_path()
    finally:
        gencore.set_simd_level(detected)


def exact_key(x, bank, idx, metric):
    """float64 value of each returned (query, index) pair."""
    x, y = x.double(), bank.double()[idx]
    if metric in ("l2", "sqeuclidean"):
        d = ((x[:, None, :] - y) ** 2).sum(-1)
        return d.sqrt() if metric == "l2" else d
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=-1)
    return (x[:, None, :] * y).sum(-1)


def tolerance(x, bank, metric):
    scale = {"l2": 1e-3, "cosine": 1e-5}.get(metric)
    if scale is None:  # squared distances and inner products scale with the norms
        scale = 1e-5 * float((x.double().norm(dim=1).max() + bank.double().norm(dim=1).max()) ** 2)
    return scale


def assert_exact(x, bank, k, metric, values, indices):
    ref_v, _ = reference.knn(x.double(), bank.double(), k, metric)
    tol = tolerance(x, bank, metric)
    # every returned neighbour is as good as the reference's at the same rank
    torch.testing.assert_close(exact_key(x, bank, indices, metric), ref_v, atol=tol, rtol=0)
    torch.testing.assert_close(values.double(), ref_v, atol=tol, rtol=0)
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "duplicate neighbours"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("Q,N,D,k", [(128, 4096, 32, 1), (300, 5000, 33, 10), (257, 16000, 100, 64),
                                     (130, 4100, 64, 500)])
def test_screen_matches_reference_and_blas_path(threads2, metric, Q, N, D, k):
    g = torch.Generator().manual_seed(Q * 7919 + N + D + k)
    x = torch.randn(Q, D, generator=g)
    bank = torch.randn(N, D, generator=g)
    v, i, path = run_path("avx512", x, bank, k, metric)
    assert path == "bf16-screen"
    assert_exact(x, bank, k, metric, v, i)
    v2, i2, path2 = run_path("avx2", x, bank, k, metric)
    assert path2 == "blas"
    tol = tolerance(x, bank, metric)
    torch.testing.assert_close(v.double(), v2.double(), atol=tol, rtol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_screen_exact_ties_go_to_lower_index(threads2, metric):
    # Integer data: every product and sum is exact in fp32 and in bf16, so ties
    # are real ties and the order must be exactly the reference's.
    g = torch.Generator().manual_seed(11)
    base = torch.randint(-3, 4, (1500, 40), generator=g).float()
    bank = torch.cat([base, base, base.flip(0)], 0)  # every row appears 3 times
    x = torch.randint(-3, 4, (200, 40), generator=g).float()
    v, i, path = run_path("avx512", x, bank, 25, metric)
    assert path == "bf16-screen"
    rv, ri = reference.knn(x.double(), bank.double(), 25, metric)
    if metric in ("ip", "sqeuclidean"):
        assert torch.equal(i, ri)
    torch.testing.assert_close(v.double(), rv, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("metric", ("sqeuclidean", "ip"))
def test_screen_survives_near_equal_distances(threads2, metric):
    # Bank rows on a sphere around each query direction differ by far less than
    # the bf16 error bound: nearly everything passes the screen and must be
    # refined, and the answer must still be exact.
    g = torch.Generator().manual_seed(5)
    D = 64
    center = torch.randn(D, generator=g)
    bank = center + 1e-3 * torch.nn.functional.normalize(torch.randn(5000, D, generator=g), dim=1)
    x = center + 1e-4 * torch.randn(130, D, generator=g)
    v, i, path = run_path("avx512", x, bank, 20, metric)
    assert path == "bf16-screen"
    v2, i2, _ = run_path("avx2", x, bank, 20, metric)
    # Both paths are exact up to fp32 rounding; compare in float64 on the chosen rows.
    torch.testing.assert_close(exact_key(x, bank, i, metric), exact_key(x, bank, i2, metric),
                               atol=tolerance(x, bank, metric), rtol=0)


@pytest.mark.parametrize("scale", (1e-19, 1e16))
def test_screen_extreme_magnitudes(threads2, scale):
    # Tiny values reach bf16's subnormal range (flushed by the hardware, covered
    # by the absolute slack); huge values make squared norms exceed 1e30 and
    # must fall back to the BLAS path. Either way the answer is exact.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 48, generator=g) * scale
    bank = torch.randn(4096, 48, generator=g) * scale
    v, i, path = run_path("avx512", x, bank, 5, "ip")
    assert path == ("bf16-screen" if scale < 1 else "blas")
    ref_v, _ = reference.knn(x.double(), bank.double(), 5, "ip")
    torch.testing.assert_close(exact_key(x, bank, i, "ip"), ref_v, rtol=1e-5, atol=0)


def test_screen_rejects_nan_in_one_bank_row(threads2):
    x = torch.randn(128, 40)
    bank = torch.randn(6000, 40)
    bank[4321, 7] = float("nan")
    with pytest.raises(ValueError, match=r"bank contains NaN or inf \(row 4321\)"):
        run_path("avx512", x, bank, 3, "l2")
