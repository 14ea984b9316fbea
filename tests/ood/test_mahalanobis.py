"""gencore.ood.mahalanobis / relative_mahalanobis: parity with a direct per-class
float64 formula and with the reference, factor structures, dtypes, layouts,
threads, SIMD levels, scikit-learn, opcheck/gradcheck/compile/meta, the
reference backend, bad input, CUDA.

The oracle is ``direct``: (x - mu_c)^T (L L^T) (x - mu_c) in float64, one class
at a time, with no expansion, no centring and no whitening, so it shares no
arithmetic with the kernels. Tolerances scale with what a GEMM-based distance
can promise: float32 results within 1e-4 of ((||x - mu_bar|| + ||mu_c - mu_bar||) ||L||_2)^2
(mu_bar = mean of the means, the kernels' centre), float64 within 1e-10 of it.

Tiles of the CPU kernel (csrc/ood/mahalanobis.cpp): blocks of up to 256
queries (fewer when Q / threads is smaller), class tiles of 1024, factor
panels of 16-64 rows. The reference streams queries in blocks of 4096.

Inputs are drawn from a generator seeded by the test's node id, so each test
sees fresh inputs yet a failure reproduces (GENCORE_TEST_SEED shifts them all).
"""
from __future__ import annotations

import math

import pytest
import torch

import gencore
from gencore import _native
from gencore.ood import mahalanobis, reference, relative_mahalanobis

from tests.conftest import cuda_only, native_cpu_only, supported_simd_levels  # noqa: E402

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
REDUCES = ("none", "min")

# The rng fixture and the restoring of threads / SIMD level come from tests/conftest.py.


# ====================================================================== inputs and oracle

def randn(rng, *shape):
    return torch.randn(*shape, generator=rng, dtype=torch.float64)


def spd(rng, d):
    """A well-conditioned random SPD matrix [d, d]."""
    a = randn(rng, d, d)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


def make_factor(rng, d, kind):
    """L [d, R] with L L^T a precision; ``kind`` picks the structure the kernel sees."""
    if kind == "dense":
        return randn(rng, d, d) / math.sqrt(d)
    if kind == "lowrank":  # eigendecomposition of a covariance, top R directions kept
        ev, v = torch.linalg.eigh(spd(rng, d))
        r = max(1, d // 3)
        return v[:, -r:] * ev[-r:].rsqrt()
    if kind == "lower":  # Cholesky factor of the precision
        return torch.linalg.cholesky(spd(rng, d))
    if kind == "upper":  # inverse-transposed Cholesky factor of the covariance
        return torch.linalg.inv(torch.linalg.cholesky(spd(rng, d))).T.contiguous()
    if kind == "holes":  # zero leading/trailing rows per column, and an all-zero first panel
        f = randn(rng, d, d) / math.sqrt(d)
        f[: d // 3] = 0
        f[-(d // 4):, d // 2:] = 0
        f[:, : min(64, d // 2)] = 0
        return f
    raise ValueError(kind)


def problem(rng, q, c, d, kind="dense", offset=3.0):
    """float64 (features [q, d], means [c, d], factor [d, R]); features sit around the
    means, away from the origin (as ReLU features do), so centring matters."""
    means = randn(rng, c, d) + offset
    pick = torch.randint(0, c, (q,), generator=rng)
    features = means[pick] + randn(rng, q, d)
    return features, means, make_factor(rng, d, kind)


def direct(features, means, factor):
    """[Q, C] float64: (x - mu_c)^T (L L^T) (x - mu_c), one class at a time."""
    x, mu, f = (t.detach().cpu().double() for t in (features, means, factor))
    p = f @ f.T
    return torch.stack([(((x - m) @ p) * (x - m)).sum(1) for m in mu], 1)


def tolerance(features, means, factor, dtype):
    """[Q, C] absolute tolerance (see the module docstring)."""
    x, mu, f = (t.detach().cpu().double() for t in (features, means, factor))
    center = mu.mean(0)
    norm = torch.linalg.matrix_norm(f, 2)
    scale = (((x - center).norm(dim=1)[:, None] + (mu - center).norm(dim=1)[None, :]) * norm) ** 2
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    return rel * scale + 1e-30


def assert_distances(got, features, means, factor, reduce, dtype, what=""):
    """got is reduce's output; compared with the direct oracle on the same (cast) inputs."""
    want = direct(features, means, factor)
    atol = tolerance(features, means, factor, dtype)
    q, c = want.shape
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.dtype == out_dtype, (what, got.dtype)
    if reduce == "min":
        assert tuple(got.shape) == (q,), (what, got.shape)
        want, atol = want.min(1).values, atol.max(1).values
    else:
        assert tuple(got.shape) == (q, c), (what, got.shape)
    got = got.detach().cpu().double()
    assert torch.isfinite(got).all(), what
    err = (got - want).abs()
    worst = int(err.argmax()) if err.numel() else 0
    assert (err <= atol).all(), (
        f"{what}: reduce={reduce} dtype={dtype}: error {err.flatten()[worst]:.3g} > tol "
        f"{atol.flatten()[worst]:.3g} at flat index {worst} (got {got.flatten()[worst]:.8g}, "
        f"want {want.flatten()[worst]:.8g})")


def assert_nearest(nearest, features, means, factor):
    """nearest == the oracle's argmin wherever the two closest classes are further
    apart than twice the float32 tolerance (elsewhere either is right)."""
    want = direct(features, means, factor)
    top2 = want.topk(2, dim=1, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance(features, means, factor, torch.float32).max(1).values
    assert clear.float().mean() > 0.5, "too few clear-cut queries to test anything"
    assert torch.equal(nearest.cpu()[clear], want.argmin(1)[clear])


def cast(dtype, *ts):
    return tuple(t.to(dtype) for t in ts)


# ====================================================================== parity

@pytest.mark.parametrize("kind", ["dense", "lowrank"])
@pytest.mark.parametrize("d", [1, 7, 64, 130])
@pytest.mark.parametrize("c", [1, 3, 100])
@pytest.mark.parametrize("q", [0, 1, 7, 257, 600])
def test_parity_shapes(rng, q, c, d, kind):
    features, means, factor = problem(rng, q, c, d, kind)
    for dtype in (torch.float32, torch.float64):
        x, mu, f = cast(dtype, features, means, factor)
        for reduce in REDUCES:
            got = mahalanobis(x, mu, f, reduce)
            assert_distances(got, x, mu, f, reduce, dtype, f"gencore q={q} c={c} d={d} {kind}")
    ref = reference.mahalanobis(features, means, factor, "none")
    assert_distances(ref, features, means, factor, "none", torch.float64, "reference")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("q,c", [(1, 3), (300, 7), (1000, 100)])
def test_parity_threads(rng, threads, q, c):
    gencore.set_num_threads(threads)
    features, means, factor = problem(rng, q, c, 33)
    x, mu, f = cast(torch.float32, features, means, factor)
    for reduce in REDUCES:
        assert_distances(mahalanobis(x, mu, f, reduce), x, mu, f, reduce, torch.float32, f"threads={threads}")


@pytest.mark.parametrize("kind", ["lower", "upper", "holes", "dense", "lowrank"])
@pytest.mark.parametrize("d", [7, 130, 200])
def test_factor_structures(rng, kind, d):
    # Triangular and sparse factors take the panel path; the result must not care.
    features, means, factor = problem(rng, 150, 5, d, kind)
    for dtype in (torch.float32, torch.float64):
        x, mu, f = cast(dtype, features, means, factor)
        for reduce in REDUCES:
            assert_distances(mahalanobis(x, mu, f, reduce), x, mu, f, reduce, dtype, kind)


def test_zero_factor_gives_zero(rng):
    x, mu, _ = problem(rng, 20, 3, 9)
    out = mahalanobis(x, mu, torch.zeros(9, 4, dtype=torch.float64), "none")
    assert torch.equal(out, torch.zeros(20, 3, dtype=torch.float64))


@pytest.mark.parametrize("c", [1023, 1025, 2100])
def test_many_classes(rng, c):
    # More classes than one class tile (1024): the running min crosses tiles.
    features, means, factor = problem(rng, 40, c, 6)
    x, mu, f = cast(torch.float32, features, means, factor)
    for reduce in REDUCES:
        assert_distances(mahalanobis(x, mu, f, reduce), x, mu, f, reduce, torch.float32, f"c={c}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_parity_dtypes(rng, dtype):
    features, means, factor = problem(rng, 70, 4, 16)
    x, mu, f = cast(dtype, features, means, factor)
    for reduce in REDUCES:
        got = mahalanobis(x, mu, f, reduce)
        # fp16/bf16 are computed in float32: compare on the rounded inputs
        assert_distances(got, x, mu, f, reduce, dtype, str(dtype))


def test_float32_accuracy_far_from_origin(rng):
    # Features and means far from the origin but close to each other: without
    # centring, float32 ||z||^2 + ||m||^2 - 2 z.m would cancel catastrophically.
    features, means, factor = problem(rng, 200, 5, 64, "lower", offset=0.0)
    shift = 1e3 * torch.ones(64, dtype=torch.float64)
    x, mu, f = cast(torch.float32, features + shift, means + shift, factor)
    got = mahalanobis(x, mu, f, "none").double()
    want = direct(x, mu, f)
    scale = direct(x, mu.mean(0, keepdim=True), f) + want  # the spread, not the offset
    assert ((got - want).abs() <= 1e-4 * scale).all()


@pytest.mark.parametrize("layout", ["column_slice", "transposed", "row_step", "factor_colmajor"])
def test_parity_non_contiguous(rng, layout):
    features, means, factor = problem(rng, 90, 6, 20)
    x, mu, f = cast(torch.float32, features, means, factor)
    if layout == "column_slice":  # row stride > D
        x = torch.cat([x, x[:, :5]], 1)[:, :20]
        mu = torch.cat([mu, mu], 1)[:, :20]
    elif layout == "transposed":  # column stride != 1
        x, mu = x.T.contiguous().T, mu.T.contiguous().T
    elif layout == "row_step":
        x = torch.repeat_interleave(x, 2, 0)[::2]
    else:  # what torch.linalg.cholesky returns: column-major
        f = f.T.contiguous().T
    assert not (x.is_contiguous() and mu.is_contiguous() and f.is_contiguous())
    for reduce in REDUCES:
        assert_distances(mahalanobis(x, mu, f, reduce), x, mu, f, reduce, torch.float32, layout)


@native_cpu_only
@pytest.mark.parametrize("level", supported_simd_levels())
def test_simd_levels(rng, level):
    # The kernel's own loops are portable; the shared row-norm pass it uses to
    # check means/factor (and to name a bad feature row) dispatches per level.
    assert gencore.set_simd_level(level) == level
    features, means, factor = problem(rng, 100, 4, 37)
    x, mu, f = cast(torch.float32, features, means, factor)
    for reduce in REDUCES:
        assert_distances(mahalanobis(x, mu, f, reduce), x, mu, f, reduce, torch.float32, level)
    x[55, 3] = float("nan")
    with pytest.raises(ValueError, match=r"features.*row 55"):
        mahalanobis(x, mu, f)


@native_cpu_only
def test_min_is_row_min_of_none_and_nearest(rng):
    # Both reductions round identically in the kernel, so equality is exact; the
    # nearest class is the argmin of the float64 oracle wherever the gap is clear.
    features, means, factor = problem(rng, 500, 30, 24, "lower")
    x, mu, f = cast(torch.float32, features, means, factor)
    d_none, n_none = torch.ops.gencore.ood_mahalanobis(x, mu, f, "none")
    d_min, n_min = torch.ops.gencore.ood_mahalanobis(x, mu, f, "min")
    assert torch.equal(d_min, d_none.min(1).values)
    assert torch.equal(n_min, n_none)
    assert_nearest(n_min, x, mu, f)


@native_cpu_only
def test_native_writes_every_output(rng):
    # Poisoned outputs: every element must be overwritten by the kernel.
    features, means, factor = problem(rng, 300, 1030, 5)
    x, mu, f = (t.float().contiguous() for t in (features, means, factor))
    for code, cols in ((0, 1030), (1, 1)):
        out = torch.full((300, cols), float("nan"))
        nearest = torch.full((300, 1), -1, dtype=torch.int64)
        _native.core.mahalanobis(x.numpy(), mu.numpy(), f.numpy(), code, out.numpy(), nearest.numpy(), 2)
        assert torch.isfinite(out).all() and (nearest >= 0).all() and (nearest < 1030).all()


def test_single_class_is_exact_quadratic_form(rng):
    # C = 1: the centre is the mean itself, so there is no expansion to cancel.
    features, means, factor = problem(rng, 50, 1, 10, "lower")
    x, mu, f = cast(torch.float32, features, means, factor)
    got = mahalanobis(x, mu, f).double()
    want = direct(x, mu, f)[:, 0]
    assert torch.allclose(got, want, rtol=1e-5, atol=0)


def test_sklearn_empirical_covariance(rng):
    covariance = pytest.importorskip("sklearn.covariance", reason="scikit-learn is not installed")
    train = randn(rng, 400, 12) @ randn(rng, 12, 12) + 2.0
    test = randn(rng, 60, 12) @ randn(rng, 12, 12) + 2.0
    est = covariance.EmpiricalCovariance().fit(train.numpy())
    want = torch.from_numpy(est.mahalanobis(test.numpy()))
    mean = torch.from_numpy(est.location_)[None, :]
    factor = torch.linalg.cholesky(torch.from_numpy(est.get_precision()))
    got64 = mahalanobis(test, mean, factor)
    assert torch.allclose(got64, want, rtol=1e-9, atol=0)
    got32 = mahalanobis(*cast(torch.float32, test, mean, factor))
    assert torch.allclose(got32.double(), want, rtol=1e-4, atol=0)


def test_reference_backend_agrees(rng, monkeypatch):
    features, means, factor = problem(rng, 300, 7, 20, "lower")
    x, mu, f = cast(torch.float32, features, means, factor)
    native = {r: mahalanobis(x, mu, f, r) for r in REDUCES}
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    assert gencore.info()["ops"]["ood.mahalanobis"]["cpu"]["float32"] == "reference"
    for reduce in REDUCES:
        got = mahalanobis(x, mu, f, reduce)
        assert_distances(got, x, mu, f, reduce, torch.float32, "reference backend")
        assert torch.allclose(got, native[reduce], rtol=1e-4, atol=1e-4 * float(native[reduce].max()))
    with pytest.raises(ValueError, match="features contains NaN"):
        mahalanobis(torch.full_like(x, float("nan")), mu, f)


def test_inputs_unchanged(rng):
    features, means, factor = problem(rng, 40, 3, 9)
    for dtype in (torch.float32, torch.float16):
        x, mu, f = (t.requires_grad_() for t in cast(dtype, features, means, factor))
        before = [t.detach().clone() for t in (x, mu, f)]
        for reduce in REDUCES:
            mahalanobis(x, mu, f, reduce).sum().backward()
            relative_mahalanobis(x, mu, f, mu[0].detach(), f.detach(), reduce).sum().backward()
        for t, b in zip((x, mu, f), before):
            assert torch.equal(t.detach(), b)


def test_empty_queries_shapes():
    for dtype in FLOAT_DTYPES:
        x, mu, f = torch.zeros(0, 5, dtype=dtype), torch.ones(3, 5, dtype=dtype), torch.eye(5, dtype=dtype)
        out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        none, mn = mahalanobis(x, mu, f, "none"), mahalanobis(x, mu, f, "min")
        assert none.shape == (0, 3) and mn.shape == (0,)
        assert none.dtype == out_dtype and mn.dtype == out_dtype


# ====================================================================== relative Mahalanobis

@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relative_mahalanobis(rng, reduce, dtype):
    features, means, factor = problem(rng, 120, 6, 15, "lower")
    bg_mean = means.mean(0) + 0.3 * randn(rng, 15)
    bg_factor = make_factor(rng, 15, "lowrank")
    x, mu, f, bm, bf = cast(dtype, features, means, factor, bg_mean, bg_factor)
    got = relative_mahalanobis(x, mu, f, bm, bf, reduce).double()
    d, d_bg = direct(x, mu, f), direct(x, bm[None], bf)
    atol = tolerance(x, mu, f, dtype) + tolerance(x, bm[None], bf, dtype)
    if reduce == "min":
        d, atol = d.min(1).values[:, None], atol.max(1, keepdim=True).values
        got = got[:, None]
    assert got.shape == d.shape
    assert ((got - (d - d_bg)).abs() <= atol).all()
    ref = reference.relative_mahalanobis(x, mu, f, bm, bf, reduce).double()
    assert torch.allclose(ref.reshape(got.shape), got, rtol=0, atol=float(atol.max()) * 2)


def test_relative_mahalanobis_bad_background(rng):
    features, means, factor = problem(rng, 10, 3, 6)
    with pytest.raises(ValueError, match="background_mean"):
        relative_mahalanobis(features, means, factor, means, factor)  # 2-D mean
    with pytest.raises(ValueError, match="background_factor.shape\\[0\\]=5"):
        relative_mahalanobis(features, means, factor, means[0], factor[:5])
    with pytest.raises(TypeError, match="background_factor"):
        relative_mahalanobis(features, means, factor, means[0], factor.float())
    bad = means[0].clone()
    bad[2] = float("inf")
    with pytest.raises(ValueError, match="background.*NaN or inf"):
        relative_mahalanobis(features, means, factor, bad, factor)


# ====================================================================== torch integration

@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(rng, reduce, dtype):
    features, means, factor = problem(rng, 9, 4, 6)
    x, mu, f = (t.requires_grad_() for t in cast(dtype, features, means, factor[:, :4]))
    torch.library.opcheck(torch.ops.gencore.ood_mahalanobis.default, (x, mu, f, reduce))


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_gradcheck(rng, reduce, kind):
    features, means, factor = problem(rng, 12, 4, 6, kind, offset=0.0)
    # distinct nearest classes by a margin, so "min" is smooth around the inputs
    x, mu, f = (t.clone().requires_grad_() for t in (features, means, factor))
    assert torch.autograd.gradcheck(lambda a, b, c: mahalanobis(a, b, c, reduce), (x, mu, f))


def test_gradgradcheck_none(rng):
    features, means, factor = problem(rng, 5, 3, 4, offset=0.0)
    x, mu, f = (t.clone().requires_grad_() for t in (features, means, factor))
    assert torch.autograd.gradgradcheck(lambda a, b, c: mahalanobis(a, b, c, "none"), (x, mu, f))


def test_gradcheck_relative(rng):
    features, means, factor = problem(rng, 8, 3, 5, offset=0.0)
    bm, bf = means.mean(0), make_factor(rng, 5, "dense")
    args = [t.clone().requires_grad_() for t in (features, means, factor, bm, bf)]
    assert torch.autograd.gradcheck(lambda *a: relative_mahalanobis(*a, reduce="none"), args)


def test_gradient_matches_direct_formula(rng):
    # float32 input: the op's backward against autograd of the direct formula.
    features, means, factor = problem(rng, 30, 5, 8)
    x, mu, f = (t.float().requires_grad_() for t in (features, means, factor))
    w = torch.rand(30, 5, generator=rng).float()
    (mahalanobis(x, mu, f, "none") * w).sum().backward()
    x64, mu64, f64 = (t.detach().double().requires_grad_() for t in (x, mu, f))
    diff = x64[:, None, :] - mu64[None]
    ((((diff @ f64) ** 2).sum(-1)) * w.double()).sum().backward()
    for got, want in ((x.grad, x64.grad), (mu.grad, mu64.grad), (f.grad, f64.grad)):
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


@pytest.mark.parametrize("reduce", REDUCES)
def test_torch_compile_fullgraph(rng, reduce):
    features, means, factor = problem(rng, 50, 4, 8)
    x, mu, f = cast(torch.float32, features, means, factor)
    fn = torch.compile(lambda a, b, c: mahalanobis(a, b, c, reduce) + 1, fullgraph=True, backend="eager")
    assert torch.equal(fn(x, mu, f), mahalanobis(x, mu, f, reduce) + 1)
    rel = torch.compile(lambda a, b, c: relative_mahalanobis(a, b, c, b[0], c, reduce),
                        fullgraph=True, backend="eager")
    assert torch.equal(rel(x, mu, f), relative_mahalanobis(x, mu, f, mu[0], f, reduce))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_meta_tensors(dtype):
    x, mu, f = (torch.empty(s, dtype=dtype, device="meta") for s in ((11, 6), (4, 6), (6, 3)))
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for reduce, shape in (("none", (11, 4)), ("min", (11,))):
        out = mahalanobis(x, mu, f, reduce)
        assert out.device.type == "meta" and tuple(out.shape) == shape and out.dtype == out_dtype
    with pytest.raises(ValueError, match="means.shape\\[1\\]=5"):
        mahalanobis(x, mu[:, :5], f)


# ====================================================================== bad input

def _good(dtype=torch.float32):
    return torch.zeros(5, 6, dtype=dtype), torch.ones(3, 6, dtype=dtype), torch.eye(6, dtype=dtype)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_bad_input(monkeypatch, backend):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    x, mu, f = _good()
    cases = [
        (TypeError, "features is a numpy.ndarray but means is a torch.Tensor", lambda: mahalanobis(x.numpy(), mu, f)),
            (TypeError, "features must be a torch.Tensor", lambda: mahalanobis(x.tolist(), mu, f)),
        (TypeError, "features must have dtype", lambda: mahalanobis(x.int(), mu, f)),
        (TypeError, "means must have the dtype of features", lambda: mahalanobis(x, mu.double(), f)),
        (TypeError, "precision_factor must have the dtype", lambda: mahalanobis(x, mu, f.half())),
        (ValueError, "features must be 2-D", lambda: mahalanobis(x[0], mu, f)),
        (ValueError, "means must be 2-D", lambda: mahalanobis(x, mu[None], f)),
        (ValueError, "precision_factor must be 2-D", lambda: mahalanobis(x, mu, f[0])),
        (ValueError, r"means.shape\[1\]=5", lambda: mahalanobis(x, mu[:, :5], f)),
        (ValueError, r"precision_factor.shape\[0\]=5", lambda: mahalanobis(x, mu, f[:5])),
        (ValueError, r"features.shape\[1\]=4", lambda: mahalanobis(x[:, :4], mu, f)),
        (ValueError, "means is empty", lambda: mahalanobis(x, mu[:0], f)),
        (ValueError, "precision_factor has no columns", lambda: mahalanobis(x, mu, f[:, :0])),
        (ValueError, "feature dimension 0", lambda: mahalanobis(x[:, :0], mu[:, :0], f[:0])),
        (ValueError, "reduce must be one of", lambda: mahalanobis(x, mu, f, "max")),
        (TypeError, "reduce must be a str", lambda: mahalanobis(x, mu, f, None)),
        (ValueError, "one device", lambda: mahalanobis(x, mu.to("meta"), f)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["features", "means", "precision_factor"])
def test_non_finite_refused(monkeypatch, backend, value, where):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    x, mu, f = torch.zeros(600, 6), torch.ones(3, 6), torch.eye(6)
    bad = {"features": x, "means": mu, "precision_factor": f}[where]
    bad[-1, 2] = value  # in the last query block when it is the features
    for reduce in REDUCES:
        with pytest.raises(ValueError, match=f"{where} contains"):
            mahalanobis(x, mu, f, reduce)


# ====================================================================== CUDA

@cuda_only
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("q,c,d", [(1, 1, 1), (300, 7, 33), (5000, 130, 64), (70, 20000, 8)])
def test_cuda_parity(rng, reduce, q, c, d):
    features, means, factor = problem(rng, q, c, d, "lower")
    x, mu, f = (t.float().cuda() for t in (features, means, factor))
    got = mahalanobis(x, mu, f, reduce)
    assert got.device.type == "cuda"
    assert_distances(got, x, mu, f, reduce, torch.float32, "cuda")
    d_none, n_none = torch.ops.gencore.ood_mahalanobis(x, mu, f, "none")
    d_min, n_min = torch.ops.gencore.ood_mahalanobis(x, mu, f, "min")
    assert torch.equal(d_min, d_none.min(1).values) and torch.equal(n_min, n_none)


@cuda_only
def test_cuda_dtypes_and_grad(rng):
    features, means, factor = problem(rng, 64, 5, 12)
    for dtype in FLOAT_DTYPES:  # float64: the float64 reference, on the GPU
        x, mu, f = (t.to(dtype).cuda().requires_grad_() for t in (features, means, factor))
        out = mahalanobis(x, mu, f, "min")
        assert_distances(out, x, mu, f, "min", dtype, f"cuda {dtype}")
        out.sum().backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@cuda_only
def test_cuda_non_finite_propagates_without_sync(rng):
    # No finiteness check on CUDA (it would synchronise the host): the bad row is NaN/inf.
    features, means, factor = problem(rng, 20, 3, 6)
    x, mu, f = (t.float().cuda() for t in (features, means, factor))
    x[7, 2] = float("nan")
    for reduce in REDUCES:
        out = mahalanobis(x, mu, f, reduce).cpu()
        assert not torch.isfinite(out[7]).any() and torch.isfinite(out[:7]).all()


@pytest.mark.parametrize("reduce", REDUCES)
def test_cuda_python_glue_with_fake_kernel(rng, monkeypatch, reduce):
    from gencore import _native_call
    from gencore.ood.ops import _mahalanobis as ops

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(ops, "_CUDA_SLAB_ELEMENTS", 64 * (12 + 12))  # 64 queries a slab
    features, means, factor = problem(rng, 300, 5, 12, "lower")
    x, mu, f = cast(torch.float32, features, means, factor)
    out, nearest = ops.MAHALANOBIS.implementation("native-cuda")(x, mu, f, reduce)
    assert fake.calls["mahalanobis"] == 5  # ceil(300 / 64) slabs
    assert_distances(out, x, mu, f, reduce, torch.float32, "cuda glue")
    assert_nearest(nearest, x, mu, f)
