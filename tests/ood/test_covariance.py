"""gencore.ood.covariance: class statistics against scikit-learn and float64 sums,
streaming and merging, classes as label values, NaN detection from the
accumulators, the float32 fast path's stated accuracy, estimators, the
precision factor and its singular fallback.

scikit-learn is the oracle: the tied covariance is compared with its
estimators fitted on the class residuals x - μ_y held in memory, the
background covariance with its estimators on the raw features. Inputs come
from the ``rng`` fixture (tests/conftest.py).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

sk = pytest.importorskip("sklearn.covariance")

from gencore.ood import MahalanobisDetector, covariance as cv  # noqa: E402


def gaussian_classes(rng, n, d, c, *, offset=0.0, spread=5.0, dtype=torch.float64):
    """Labelled data whose classes have different means and anisotropic covariances."""
    labels = torch.arange(n) % c
    labels = labels[torch.randperm(n, generator=rng)]
    mixes = torch.randn(c, d, d, generator=rng, dtype=torch.float64) / d ** 0.5
    scales = torch.linspace(0.5, 2.0, c, dtype=torch.float64)
    z = torch.randn(n, d, generator=rng, dtype=torch.float64)
    x = torch.empty_like(z)
    for k in range(c):                       # one mixing matrix per class (no [N, D, D] tensor)
        x[labels == k] = z[labels == k] @ mixes[k] * scales[k]
    x = x + spread * torch.randn(c, d, generator=rng, dtype=torch.float64)[labels] + offset
    return x.to(dtype), labels


def residuals(x, labels):
    """(x - μ_y as numpy float64, μ [C, D] in sorted-label order) from float64 sums."""
    x = x.double()
    classes = torch.unique(labels)
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    return (x - means[torch.searchsorted(classes, labels)]).numpy(), means


def stream(x, labels, chunks, num_classes=None, fourth_moments=True):
    stats = cv.ClassStatistics(num_classes, fourth_moments=fourth_moments)
    start = 0
    for size in chunks:
        stats.update(x[start:start + size], labels[start:start + size])
        start += size
    assert start == x.shape[0]
    return stats


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ---------------------------------------------------------------- vs scikit-learn

SK_ESTIMATORS = {
    "mle": (lambda: sk.EmpiricalCovariance(), {}),
    "shrunk": (lambda: sk.ShrunkCovariance(shrinkage=0.3), {"shrinkage": 0.3}),
    "ledoit_wolf": (lambda: sk.LedoitWolf(), {}),
    "oas": (lambda: sk.OAS(), {}),
}


@pytest.mark.parametrize("estimator", sorted(SK_ESTIMATORS))
@pytest.mark.parametrize("n,d,c", [(300, 1, 3), (400, 6, 4), (120, 30, 3), (20, 40, 2), (700, 300, 5)])
def test_one_shot_matches_sklearn(estimator, n, d, c, rng):
    x, labels = gaussian_classes(rng, n, d, c)
    stats = cv.ClassStatistics(fourth_moments=estimator in cv.FOURTH_MOMENT_ESTIMATORS).update(x, labels)
    r, means = residuals(x, labels)
    make, kwargs = SK_ESTIMATORS[estimator]

    torch.testing.assert_close(stats.class_means(), means, rtol=1e-12, atol=1e-12)
    tied = cv.estimate(stats.tied_moments(), estimator, **kwargs)
    np.testing.assert_allclose(tied.numpy(), make().fit(r).covariance_, rtol=1e-9, atol=1e-12)
    background = cv.estimate(stats.background_moments(), estimator, **kwargs)
    np.testing.assert_allclose(background.numpy(), make().fit(x.numpy()).covariance_, rtol=1e-9, atol=1e-10)


def test_shrinkage_intensities_match_sklearn(rng):
    x, labels = gaussian_classes(rng, 500, 12, 4)
    stats = cv.ClassStatistics(fourth_moments=True).update(x, labels)
    r, _ = residuals(x, labels)
    m = stats.tied_moments()
    assert cv.ledoit_wolf_shrinkage(m) == pytest.approx(sk.ledoit_wolf_shrinkage(r), rel=1e-9)
    assert cv.oas_shrinkage(m) == pytest.approx(sk.OAS().fit(r).shrinkage_, rel=1e-9)
    assert 0 < cv.ledoit_wolf_shrinkage(m) < 1


def test_ridge_adds_lambda_identity(rng):
    x, labels = gaussian_classes(rng, 200, 5, 2)
    m = cv.ClassStatistics().update(x, labels).tied_moments()
    r, _ = residuals(x, labels)
    expected = sk.EmpiricalCovariance().fit(r).covariance_ + 0.25 * np.eye(5)
    np.testing.assert_allclose(cv.ridge(m, 0.25).numpy(), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="ridge lambda"):
        cv.ridge(m, -1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        cv.shrunk(m, 1.5)
    with pytest.raises(ValueError, match="estimator"):
        cv.estimate(m, "graphical_lasso")


def test_fourth_moments_only_when_asked(rng):
    x, labels = gaussian_classes(rng, 300, 7, 3)
    plain = cv.ClassStatistics().update(x, labels)
    full = cv.ClassStatistics(fourth_moments=True).update(x, labels)
    assert set(plain.state_dict()) == {"classes", "counts", "means", "within"}
    assert set(full.state_dict()) > set(plain.state_dict())
    for name in plain.state_dict():
        assert torch.equal(plain.state_dict()[name], full.state_dict()[name]), name
    assert plain.tied_moments().fourth is None and plain.background_moments().fourth is None
    with pytest.raises(ValueError, match="fourth_moments=True"):
        cv.ledoit_wolf(plain.tied_moments())
    for estimator in ("mle", "ridge", "shrunk", "oas"):
        assert torch.equal(cv.estimate(plain.tied_moments(), estimator), cv.estimate(full.tied_moments(), estimator))
    assert MahalanobisDetector(estimator="ledoit_wolf").statistics.fourth_moments
    assert not any(MahalanobisDetector(estimator=e).statistics.fourth_moments for e in ("mle", "oas", "shrunk"))


# ---------------------------------------------------------------- the float32 fast path

def float64_statistics(x, labels):
    """Counts, means and pooled scatter of the exact float32 values, in float64 (the oracle)."""
    r, means = residuals(x, labels)
    r = torch.from_numpy(r)
    return means, r.T @ r


@pytest.mark.parametrize("order", ["shuffled", "by-class"])   # centres from the first block / from all rows
@pytest.mark.parametrize("n,d,c", [(5000, 3, 2), (20000, 64, 10), (9000, 300, 7), (17000, 257, 1),
                                   (300, 513, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_rows_meet_the_stated_accuracy(n, d, c, dtype, order, rng):
    """ClassStatistics.update's docstring: means within ~eps32 σ (tested at 1e-5 σ);
    scatter entries within 4096 eps32 of sqrt(W_aa W_bb) at worst, ~sqrt(4096) eps32
    for random roundings (tested at 2e-5 for float32, 2e-4 for the quantized
    fp16 / bf16 values, whose roundings are coherent)."""
    x, labels = gaussian_classes(rng, n, d, c, offset=300.0, spread=20.0, dtype=dtype)
    if order == "by-class":
        order_ = labels.argsort(stable=True)
        x, labels = x[order_], labels[order_]
    stats = stream(x, labels, [n // 3, n - n // 3], fourth_moments=False)
    means, within = float64_statistics(x, labels)
    sigma = torch.sqrt(within.diagonal() / n)                 # per-feature within-class spread
    assert bool(((stats.means - means).abs() <= 1e-5 * sigma).all())
    scale = torch.sqrt(within.diagonal()[:, None] * within.diagonal()[None, :])
    assert float(((stats.within - within).abs() / scale).max()) <= (2e-5 if dtype == torch.float32 else 2e-4)
    assert torch.equal(stats.within, stats.within.T)


def test_float32_means_are_accurate_relative_to_the_spread_not_the_offset(rng):
    # Offset 1e4 with unit spread: a float32 sum would put the means off by
    # ~1e4 sqrt(n) eps32 ~ 1e-1; centring first keeps them within ~eps32.
    x, labels = gaussian_classes(rng, 30000, 8, 3, offset=1e4, spread=3.0, dtype=torch.float32)
    stats = cv.ClassStatistics().update(x, labels)
    means, within = float64_statistics(x, labels)
    sigma = torch.sqrt(within.diagonal() / x.shape[0])
    assert bool(((stats.means - means).abs() <= 1e-5 * sigma).all())
    torch.testing.assert_close(stats.within, within, rtol=2e-5, atol=0)


@pytest.mark.parametrize("chunks", [[6000], [2500, 3500]])
def test_float32_fourth_moments_of_skewed_data_far_from_the_origin(chunks, rng):
    """Ledoit-Wolf's Σ ||r||^4 from float32 rows centred at float32-rounded means: the
    re-centring by the rounding (first order in it for skewed data) must be exact."""
    labels = torch.randint(0, 3, (6000,), generator=rng)
    skewed = -torch.log(torch.rand(6000, 6, generator=rng, dtype=torch.float64))   # Exp(1): third moment 2
    x = (skewed + 1e5 + 10.0 * labels[:, None]).float()   # float32 rounds the means by ~4e-3
    stats = stream(x, labels, chunks)
    r, _ = residuals(x, labels)
    xc = x.double() - x.double().mean(0)
    tied, total = ((r * r).sum(1) ** 2).sum(), float(((xc * xc).sum(1) ** 2).sum())
    assert stats.tied_moments().fourth == pytest.approx(tied, rel=1e-5 if len(chunks) == 1 else 1e-3)
    assert stats.background_moments().fourth == pytest.approx(total, rel=1e-5)


def test_float32_squares_that_overflow_are_redone_in_float64(rng):
    x, labels = gaussian_classes(rng, 400, 5, 3, dtype=torch.float64)
    big = (x * 1e20).float()                                  # finite in float32, squares are not
    assert bool(torch.isfinite(big).all())
    stats = cv.ClassStatistics().update(big, labels)
    means, within = float64_statistics(big, labels)
    torch.testing.assert_close(stats.means, means, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.within, within, rtol=1e-10, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_anywhere_is_found_from_the_accumulators(bad, dtype, rng):
    x, labels = gaussian_classes(rng, 20000, 300, 6, dtype=dtype)
    for _ in range(3):
        row = int(torch.randint(0, x.shape[0], (1,), generator=rng))
        col = int(torch.randint(0, x.shape[1], (1,), generator=rng))
        poisoned = x.clone()
        poisoned[row, col] = bad
        stats = cv.ClassStatistics().update(x[:100], labels[:100])
        before = stats.state_dict()
        with pytest.raises(ValueError, match=rf"features contains NaN or inf \(row {row}\)"):
            stats.update(poisoned, labels)
        assert all(torch.equal(before[k], v) for k, v in stats.state_dict().items())


# ---------------------------------------------------------------- classes

@pytest.mark.parametrize("values", [[0, 2], [3, 3_000_000], [-5, 7, 2**50], [9]])
def test_classes_are_the_sorted_unique_labels(values, rng):
    values = torch.tensor(values)
    x, positions = gaussian_classes(rng, 200, 4, len(values))
    labels = values[positions]
    stats = cv.ClassStatistics().update(x, labels)
    assert torch.equal(stats.classes, values.sort().values)
    assert stats.means.shape == (len(values), 4)
    _, means = residuals(x, labels)
    torch.testing.assert_close(stats.class_means(), means, rtol=1e-12, atol=1e-12)
    assert torch.equal(stats.counts, torch.stack([(labels == v).sum() for v in values.sort().values]))


def test_fixed_num_classes_refuses_other_labels_first(rng):
    x, labels = gaussian_classes(rng, 50, 3, 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=2\), got a label 2"):
        cv.ClassStatistics(2).update(x, labels + 1)
    with pytest.raises(ValueError, match=r"got a label -1"):
        cv.ClassStatistics(2).update(x, labels - 1)
    stats = cv.ClassStatistics(5).update(x, labels)
    assert torch.equal(stats.classes, torch.arange(5)) and stats.counts[2:].sum() == 0
    with pytest.raises(ValueError, match=r"no samples of classes \[2, 3, 4\] \(num_classes=5"):
        stats.class_means()


# ---------------------------------------------------------------- streaming and merging

CHUNKINGS = {
    "one": lambda n: [n],
    "singletons-then-rest": lambda n: [1, 1, 1, 2, n - 5],
    "sevens": lambda n: [7] * (n // 7) + ([n % 7] if n % 7 else []),
    "halves": lambda n: [n // 2, n - n // 2],
}


@pytest.mark.parametrize("label_values", ["dense", "sparse"])
@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
def test_streamed_statistics_equal_one_shot(chunking, label_values, rng):
    x, labels = gaussian_classes(rng, 700, 10, 5)
    if label_values == "sparse":
        labels = torch.tensor([40, -2, 7, 10**9, 3])[labels]     # not in sorted order either
    order = labels.argsort(stable=True)     # classes arrive one after another: classes appear late
    x, labels = x[order], labels[order]
    one = cv.ClassStatistics(fourth_moments=True).update(x, labels)
    chunked = stream(x, labels, CHUNKINGS[chunking](x.shape[0]))

    assert torch.equal(one.classes, chunked.classes)
    assert torch.equal(one.counts, chunked.counts)
    assert rel_err(chunked.means, one.means) < 1e-12
    assert rel_err(chunked.tied_covariance(), one.tied_covariance()) < 1e-12
    assert rel_err(chunked.background_covariance(), one.background_covariance()) < 1e-12
    assert rel_err(chunked.class_sq, one.class_sq) < 1e-12
    # The background fourth moment re-centres exactly; the per-class one
    # approximates the running side's scatter (see ClassStatistics): its
    # error grows like log(n) / (n D) per class: ~3e-3 here (chunks of 7 rows
    # of one class at a time in 10 dimensions), ~1e-4 in the next test.
    assert rel_err(chunked.background_moments().fourth, one.background_moments().fourth) < 1e-12
    assert rel_err(chunked.tied_moments().fourth, one.tied_moments().fourth) < 1e-2
    for estimator in ("mle", "ridge", "shrunk", "oas"):
        assert rel_err(cv.estimate(chunked.tied_moments(), estimator),
                       cv.estimate(one.tied_moments(), estimator)) < 1e-11
    assert cv.ledoit_wolf_shrinkage(chunked.tied_moments()) == pytest.approx(
        cv.ledoit_wolf_shrinkage(one.tied_moments()), rel=2e-2)


def test_streamed_ledoit_wolf_matches_sklearn_at_realistic_chunk_sizes(rng):
    x, labels = gaussian_classes(rng, 6000, 32, 4)
    chunked = stream(x, labels, [500] * 12)
    r, _ = residuals(x, labels)
    # Tied: within the documented approximation (~1e-4 here, far below the
    # estimator's own sampling error ~1/sqrt(n)). Background: exact.
    assert cv.ledoit_wolf_shrinkage(chunked.tied_moments()) == pytest.approx(sk.ledoit_wolf_shrinkage(r), rel=1e-3)
    assert cv.ledoit_wolf_shrinkage(chunked.background_moments()) == pytest.approx(
        sk.ledoit_wolf_shrinkage(x.numpy()), rel=1e-10)


@pytest.mark.parametrize("fourth_moments", [False, True])
def test_merge_equals_one_shot_and_joins_classes(fourth_moments, rng):
    x, labels = gaussian_classes(rng, 600, 6, 4)
    first = labels < 2                       # the first worker only ever sees classes 0 and 1
    a = cv.ClassStatistics(fourth_moments=fourth_moments).update(x[first], labels[first])
    b = stream(x[~first], labels[~first], [50] * 6, fourth_moments=fourth_moments)
    assert a.classes.tolist() == [0, 1] and b.classes.tolist() == [2, 3]
    merged = cv.ClassStatistics(fourth_moments=fourth_moments).merge(a).merge(b)
    one = cv.ClassStatistics(fourth_moments=fourth_moments).update(x, labels)
    assert torch.equal(merged.classes, one.classes) and torch.equal(merged.counts, one.counts)
    assert rel_err(merged.means, one.means) < 1e-12
    assert rel_err(merged.tied_covariance(), one.tied_covariance()) < 1e-12
    assert rel_err(merged.background_covariance(), one.background_covariance()) < 1e-12
    if fourth_moments:
        assert rel_err(merged.background_moments().fourth, one.background_moments().fourth) < 1e-12
        assert rel_err(merged.tied_moments().fourth, one.tied_moments().fourth) < 1e-2
    else:
        with pytest.raises(ValueError, match="without fourth moments"):
            cv.ClassStatistics(fourth_moments=True).merge(a)
    # merge() leaves its argument alone
    assert a.classes.tolist() == [0, 1] and int(a.counts.sum()) == int(first.sum())
    with pytest.raises(ValueError, match="outside num_classes=2"):
        cv.ClassStatistics(2).merge(b)


def test_state_dict_round_trip_and_continue(rng):
    x, labels = gaussian_classes(rng, 300, 5, 3)
    a = stream(x[:100], labels[:100], [100])
    b = cv.ClassStatistics(fourth_moments=True).load_state_dict(a.state_dict())
    a.update(x[100:], labels[100:])
    b.update(x[100:], labels[100:])
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_load_state_dict_names_the_bad_field(rng):
    x, labels = gaussian_classes(rng, 60, 3, 2)
    lw = cv.ClassStatistics(fourth_moments=True).update(x, labels).state_dict()
    with pytest.raises(ValueError, match=r"state\['class_fourth'\].*do not keep.*ledoit_wolf"):
        cv.ClassStatistics().load_state_dict(lw)
    plain = cv.ClassStatistics().update(x, labels).state_dict()
    with pytest.raises(ValueError, match=r"missing.*state\['class_fourth'\]"):
        cv.ClassStatistics(fourth_moments=True).load_state_dict(plain)
    with pytest.raises(ValueError, match=r"state\['within'\] must have shape \[3, 3\]"):
        cv.ClassStatistics().load_state_dict(dict(plain, within=torch.zeros(2, 2, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"state\['counts'\] must be a int64"):
        cv.ClassStatistics().load_state_dict(dict(plain, counts=plain["counts"].double()))
    with pytest.raises(ValueError, match=r"strictly increasing"):
        cv.ClassStatistics().load_state_dict(dict(plain, classes=plain["classes"].flip(0)))
    with pytest.raises(ValueError, match=r"state\['x.means'\] contains NaN"):
        cv.ClassStatistics().load_state_dict(dict(plain, means=plain["means"] * float("nan")), field_prefix="x.")
    with pytest.raises(ValueError, match="num_classes=3"):
        cv.ClassStatistics(3).load_state_dict(plain)


def test_statistics_bad_input(rng):
    x, labels = gaussian_classes(rng, 20, 3, 2)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        cv.ClassStatistics().update(x, labels.float())
    with pytest.raises(ValueError, match=r"labels must be \[N\] with N=20"):
        cv.ClassStatistics().update(x, labels[:5])
    with pytest.raises(ValueError, match="features must be a floating"):
        cv.ClassStatistics().update(x.long(), labels)
    stats = cv.ClassStatistics().update(x, labels)
    with pytest.raises(ValueError, match="D=4"):
        stats.update(torch.randn(3, 4, dtype=torch.float64), labels[:3])
    with pytest.raises(ValueError, match=r"fewer than 2 samples: 2 \(n=1\)"):
        cv.ClassStatistics().update(x[:5], torch.tensor([0, 0, 1, 1, 2])).tied_moments()
    # Labels {0, 2}: two classes, both with samples (no class 1 "with 0 samples").
    assert cv.ClassStatistics().update(x[:4], torch.tensor([0, 0, 2, 2])).tied_moments().n == 4
    with pytest.raises(RuntimeError, match="no samples"):
        cv.ClassStatistics().tied_moments()
    assert cv.ClassStatistics().update(x[:0], labels[:0]).counts is None   # an empty batch adds nothing
    with pytest.raises(ValueError, match="merge statistics with D=3"):
        cv.ClassStatistics().update(torch.randn(4, 2, dtype=torch.float64), labels[:4]).merge(stats)
    with pytest.raises(ValueError, match="num_classes"):
        cv.ClassStatistics(0)


# ---------------------------------------------------------------- precision factor

def spd(d, cond, rng):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=rng, dtype=torch.float64))
    evals = torch.logspace(0, -np.log10(cond), d, dtype=torch.float64)
    return (q * evals) @ q.T


@pytest.mark.parametrize("d", [1, 2, 17, 64])
def test_precision_factor_well_conditioned(d, rng):
    cov = spd(d, 1e4, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # no fallback warning here
        factor = cv.precision_factor(cov)
    assert factor.shape == (d, d) and factor.dtype == torch.float64
    torch.testing.assert_close(factor @ factor.T, torch.linalg.inv(cov), rtol=1e-8, atol=1e-8)
    assert torch.equal(factor, factor.triu())  # C^-ᵀ of a lower Cholesky factor


@pytest.mark.parametrize("rank", [0, 1, 5])
def test_precision_factor_singular_falls_back_to_pseudo_inverse(rank, rng):
    d = 8
    if rank == 0:
        cov = torch.zeros(d, d, dtype=torch.float64)
        with pytest.raises(ValueError, match="no positive eigenvalue"):
            cv.precision_factor(cov)
        return
    a = torch.randn(d, rank, generator=rng, dtype=torch.float64)
    cov = a @ a.T
    with pytest.warns(RuntimeWarning, match="singular or ill-conditioned"):
        factor = cv.precision_factor(cov)
    assert factor.shape == (d, rank)
    torch.testing.assert_close(factor @ factor.T, torch.linalg.pinv(cov, hermitian=True), rtol=1e-7, atol=1e-9)


def test_precision_factor_ill_conditioned_warns(rng):
    with pytest.warns(RuntimeWarning, match="singular or ill-conditioned"):  # Cholesky fails or cond >= 1/rtol
        factor = cv.precision_factor(spd(6, 1e17, rng))
    assert factor.shape[1] < 6
    with pytest.raises(ValueError, match="square"):
        cv.precision_factor(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        cv.precision_factor(torch.full((2, 2), float("nan"), dtype=torch.float64))


def test_singular_covariance_warns_and_still_scores(rng):
    # 10 samples in 32 dimensions: the tied covariance has rank <= 8.
    x, labels = gaussian_classes(rng, 10, 32, 2, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="pseudo-inverse"):
        detector = MahalanobisDetector().fit(x, labels)
    scores = detector.score(torch.cat([x, x + 50]))
    assert torch.isfinite(scores).all()
    assert scores[:10].min() > scores[10:].max()


def test_large_offset_keeps_precision(rng):
    # Features around 1e6 with unit spread: a raw Σ x xᵀ in float64 would lose
    # ~12 of 16 digits; the central-moment merge must not.
    x, labels = gaussian_classes(rng, 2000, 4, 2, offset=1e6, spread=3.0)
    chunked = stream(x, labels, [100] * 20)
    r, _ = residuals(x, labels)
    expected = (r.T @ r) / len(r)
    assert rel_err(chunked.tied_covariance(), torch.from_numpy(expected)) < 1e-8
    assert math.isfinite(chunked.tied_moments().fourth)
