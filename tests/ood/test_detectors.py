"""gencore.ood detectors: the shared protocol (fit vs chunked partial_fit, state_dict
round trip, threshold calibration, ID above far OOD, bad input) for every
detector, then each detector's math against a brute-force float64 oracle.
"""
from __future__ import annotations

import math

import pytest
import torch

from gencore.ood import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                         RelativeMahalanobisDetector, ViMDetector)


C, D = 4, 12


def gaussians(n, *, seed, shift=0.0, dtype=torch.float32):
    """C well-separated isotropic classes in D dimensions; ``shift`` moves all of them (far OOD)."""
    g = torch.Generator().manual_seed(1234)   # the class means are the same in every call
    means = 4.0 * torch.randn(C, D, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    x = means[labels] + torch.randn(n, D, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), labels


def classifier():
    """A linear head for the logit-based detectors: nearest-mean logits of ``gaussians``."""
    g = torch.Generator().manual_seed(1234)
    means = 4.0 * torch.randn(C, D, generator=g, dtype=torch.float64)
    return means.float(), (-0.5 * (means * means).sum(1)).float()


def logits_of(x):
    weight, bias = classifier()
    return x @ weight.T + bias


# name -> factory
DETECTORS = {
    "mahalanobis-mle": lambda: MahalanobisDetector(),
    "mahalanobis-ridge": lambda: MahalanobisDetector(estimator="ridge", ridge_lambda=0.1),
    "mahalanobis-shrunk": lambda: MahalanobisDetector(estimator="shrunk", shrinkage=0.2),
    "mahalanobis-oas": lambda: MahalanobisDetector(estimator="oas"),
    "mahalanobis-lw": lambda: MahalanobisDetector(estimator="ledoit_wolf"),
    "relative-mahalanobis": lambda: RelativeMahalanobisDetector(),
    "relative-mahalanobis-lw": lambda: RelativeMahalanobisDetector(estimator="ledoit_wolf"),
    "knn": lambda: KNNDetector(k=5),
    "knn-subsample-int": lambda: KNNDetector(k=5, subsample=300, seed=3),
    "knn-subsample-float": lambda: KNNDetector(k=5, subsample=0.5, seed=4),
    "knn-raw": lambda: KNNDetector(k=5, normalize=False),
    "vim": lambda: ViMDetector(*classifier(), dim=6),
    "energy": lambda: EnergyDetector(temperature=2.0),
    "msp": lambda: MSPDetector(),
    "max-logit": lambda: MaxLogitDetector(),
}


def detector_params(filter_=lambda name: True):
    return [name for name in DETECTORS if filter_(name)]


def make(name):
    return DETECTORS[name]()


def fit_args(x, labels):
    return {"features": x, "labels": labels, "logits": logits_of(x)}


def score_args(x):
    return {"features": x, "logits": logits_of(x)}


def is_logit_only(name):
    return name in ("energy", "msp", "max-logit")


# ---------------------------------------------------------------- the protocol, every detector

@pytest.mark.parametrize("name", detector_params())
def test_partial_fit_in_chunks_equals_fit(name):
    x, labels = gaussians(900, seed=1)
    queries, _ = gaussians(200, seed=2)
    queries = torch.cat([queries, queries + 3.0])
    # ViM's fit() makes a second pass for the paper's α, which a stream cannot
    # (see ViMDetector); the stream is compared with a one-batch stream.
    one = make(name).partial_fit(**fit_args(x, labels)) if name == "vim" else make(name).fit(**fit_args(x, labels))
    chunked = make(name)
    for start, size in ((0, 1), (1, 250), (251, 7), (258, 642)):
        chunked.partial_fit(**fit_args(x[start:start + size], labels[start:start + size]))
    expected, got = one.score(**score_args(queries)), chunked.score(**score_args(queries))
    # Float32 scores of float64 statistics that agree to ~1e-12 (Ledoit-Wolf's
    # streamed fourth moment to ~1e-4, see covariance.ClassStatistics).
    tol = 1e-3 if name.endswith("-lw") else 1e-5
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().mean()))


@pytest.mark.parametrize("name", detector_params())
def test_state_dict_round_trip_is_exact(name):
    x, labels = gaussians(600, seed=3)
    calibration, _ = gaussians(100, seed=4)
    queries, _ = gaussians(50, seed=5, shift=1.0)
    detector = make(name).fit(**fit_args(x, labels)).calibrate(**score_args(calibration))
    state = detector.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    restored = make(name).load_state_dict(state)
    assert torch.equal(restored.score(**score_args(queries)), detector.score(**score_args(queries)))
    assert restored.threshold(0.9) == detector.threshold(0.9)
    again = restored.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)


@pytest.mark.parametrize("name", detector_params(lambda n: not is_logit_only(n)))
def test_state_dict_mid_stream_then_continue(name):
    x, labels = gaussians(600, seed=6)
    queries, _ = gaussians(50, seed=7)
    uninterrupted = make(name).partial_fit(**fit_args(x[:300], labels[:300]))
    uninterrupted.partial_fit(**fit_args(x[300:], labels[300:]))
    resumed = make(name).load_state_dict(make(name).partial_fit(**fit_args(x[:300], labels[:300])).state_dict())
    resumed.partial_fit(**fit_args(x[300:], labels[300:]))
    assert torch.equal(resumed.score(**score_args(queries)), uninterrupted.score(**score_args(queries)))


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("name", detector_params())
def test_threshold_keeps_the_stated_fraction_of_id(name, tpr):
    x, labels = gaussians(800, seed=8)
    calibration, _ = gaussians(401, seed=9)
    detector = make(name).fit(**fit_args(x, labels)).calibrate(**score_args(calibration))
    t = detector.threshold(tpr)
    scores = detector.score(**score_args(calibration))
    kept = float((scores >= t).double().mean())
    m = calibration.shape[0]
    n_ties = int((scores == t).sum())
    assert tpr <= kept < tpr + n_ties / m + 1e-12
    assert torch.equal(detector.is_in_distribution(**score_args(calibration), tpr=tpr), scores >= t)
    if n_ties > 1:
        return  # e.g. MSP saturating at 1.0 in float32: the fraction kept is only bounded
    # Fresh ID data from the same distribution: the same fraction up to sampling noise.
    fresh, _ = gaussians(2000, seed=10)
    fresh_kept = float((detector.score(**score_args(fresh)) >= t).double().mean())
    assert abs(fresh_kept - tpr) < 4 * math.sqrt(tpr * (1 - tpr) / m) + 0.01


@pytest.mark.parametrize("name", detector_params())
def test_id_scores_higher_than_far_ood(name):
    x, labels = gaussians(800, seed=11)
    detector = make(name).fit(**fit_args(x, labels))
    id_x, _ = gaussians(300, seed=12)
    # Far OOD for feature detectors: shifted far from every class. For the
    # logit-only scores, "far" must be far in logit space: midpoints between
    # two classes, where the two top logits tie and are small.
    if is_logit_only(name):
        means = classifier()[0]
        g = torch.Generator().manual_seed(13)
        pairs = torch.stack([torch.randperm(C, generator=g)[:2] for _ in range(300)])
        ood_x = means[pairs].mean(1) + 0.1 * torch.randn(300, D, generator=g)
    else:
        ood_x, _ = gaussians(300, seed=13, shift=25.0)
    s_id, s_ood = detector.score(**score_args(id_x)), detector.score(**score_args(ood_x))
    auroc = float((s_id[:, None] > s_ood[None, :]).double().mean()
                  + 0.5 * (s_id[:, None] == s_ood[None, :]).double().mean())
    assert auroc > 0.95
    torch.testing.assert_close(detector.ood_score(**score_args(ood_x)), -s_ood)


@pytest.mark.parametrize("name", detector_params(lambda n: not is_logit_only(n)))
def test_bad_input(name):
    x, labels = gaussians(100, seed=14)
    fresh = make(name)
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(**score_args(x))
    with pytest.raises(RuntimeError, match="no calibration"):
        make(name).fit(**fit_args(x, labels)).threshold()
    detector = make(name).fit(**fit_args(x, labels))
    with pytest.raises(ValueError, match=f"D=5 but {type(detector).__name__} was fitted on D={D}"):
        detector.score(torch.randn(3, 5), logits=torch.randn(3, C))
    for bad, what in ((float("nan"), "NaN"), (float("inf"), "inf")):
        poisoned = x.clone()
        poisoned[3, 2] = bad
        with pytest.raises(ValueError, match=f"features contains {what}"):
            make(name).fit(**fit_args(poisoned, labels))
        with pytest.raises(ValueError, match=f"features contains {what}"):
            detector.score(**score_args(poisoned))
    with pytest.raises(ValueError, match="tpr"):
        detector.threshold(1.5)
    with pytest.raises(ValueError, match="features"):
        make(name).fit(features=None, labels=labels)
    with pytest.raises(ValueError, match="D=0"):
        make(name).fit(torch.empty(4, 0), labels[:4])


@pytest.mark.parametrize("name", detector_params(lambda n: n.startswith(("mahalanobis", "relative"))))
def test_bad_labels(name):
    x, labels = gaussians(100, seed=15)
    with pytest.raises(ValueError, match="needs labels"):
        make(name).fit(x)
    with pytest.raises(ValueError, match="integer dtype, got float32"):
        make(name).fit(x, labels.float())
    with pytest.raises(ValueError, match=">= 0, got a label -1"):
        make(name).fit(x, labels - 1)
    with pytest.raises(ValueError, match=r"labels must be \[N\] with N=100"):
        make(name).fit(x, labels[:50])
    with pytest.raises(ValueError, match="num_classes=4, got a label 5"):
        type(make(name))(num_classes=C).fit(x, torch.where(labels == 0, 5, labels))
    few = labels.clone()
    few[few == 2] = 1
    few[0] = 2                                  # class 2 has one sample
    with pytest.raises(ValueError, match=r"fewer than 2 samples: 2 \(n=1\)"):
        make(name).fit(x, few)
    # Streaming: a class may be short mid-stream; the check runs when the detector is used.
    detector = make(name).partial_fit(x[:1], labels[:1])
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        detector.score(x)


@pytest.mark.parametrize("name", detector_params(is_logit_only))
def test_logit_only_detectors(name):
    logits = torch.randn(50, 7, dtype=torch.float64)
    detector = make(name)
    scores = detector.score(logits=logits)           # nothing to fit
    assert scores.shape == (50,)
    expected = {
        "energy": 2.0 * torch.logsumexp(logits / 2.0, 1),
        "msp": torch.softmax(logits, 1).max(1).values,
        "max-logit": logits.max(1).values,
    }[name]
    torch.testing.assert_close(scores.double(), expected, rtol=1e-6, atol=1e-9)
    assert torch.equal(detector.fit(logits=logits).score(logits=logits), scores)
    with pytest.raises(ValueError, match="needs logits"):
        detector.score(torch.randn(3, 4))
    with pytest.raises(ValueError, match="logits contains NaN"):
        detector.score(logits=torch.full((2, 3), float("nan")))
    with pytest.raises(RuntimeError, match="no calibration"):
        detector.threshold()


# ---------------------------------------------------------------- each detector's math

def brute_mahalanobis(x, means, cov):
    diff = x.double()[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, torch.linalg.inv(cov), diff)


def test_mahalanobis_math_against_brute_force():
    x, labels = gaussians(500, seed=16, dtype=torch.float64)
    queries, _ = gaussians(40, seed=17, shift=2.0, dtype=torch.float64)
    means = torch.stack([x[labels == c].mean(0) for c in range(C)])
    r = x - means[labels]
    tied = r.T @ r / len(x)
    expected = -brute_mahalanobis(queries, means, tied).min(1).values
    torch.testing.assert_close(MahalanobisDetector().fit(x, labels).score(queries), expected, rtol=1e-9, atol=1e-9)

    xc = x - x.mean(0)
    background = brute_mahalanobis(queries, x.mean(0)[None], xc.T @ xc / len(x))[:, 0]
    expected_rel = -(brute_mahalanobis(queries, means, tied).min(1).values - background)
    got = RelativeMahalanobisDetector().fit(x, labels).score(queries)
    torch.testing.assert_close(got, expected_rel, rtol=1e-9, atol=1e-9)


def kth_distance(queries, bank, k):
    q, b = torch.nn.functional.normalize(queries.double(), dim=1), torch.nn.functional.normalize(bank.double(), dim=1)
    return torch.cdist(q, b).sort(1).values[:, k - 1]


def test_knn_k4096_on_bank_of_5000():
    g = torch.Generator().manual_seed(18)
    bank, queries = torch.randn(5000, 16, generator=g), torch.randn(20, 16, generator=g)
    detector = KNNDetector(k=4096).fit(bank)
    assert detector.bank.shape == (5000, 16)
    torch.testing.assert_close(detector.score(queries).double(), -kth_distance(queries, bank, 4096),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k=5001 exceeds the bank size 5000"):
        KNNDetector(k=5001).fit(bank).score(queries)


def test_knn_subsampling():
    x, _ = gaussians(3000, seed=19)
    exact = KNNDetector(k=3, subsample=500, seed=1).fit(x)
    assert exact.bank.shape == (500, D)
    # The same rows, in training order, whatever the chunking; a different seed picks others.
    streamed = KNNDetector(k=3, subsample=500, seed=1)
    for chunk in x.split(333):
        streamed.partial_fit(chunk)
    assert torch.equal(streamed.bank, exact.bank)
    assert not torch.equal(KNNDetector(k=3, subsample=500, seed=2).fit(x).bank, exact.bank)
    normalized = torch.nn.functional.normalize(x, dim=1)
    positions = exact.state_dict()["fit.positions"]
    assert bool((positions[1:] > positions[:-1]).all())
    assert torch.equal(exact.bank, normalized[positions])

    fraction = KNNDetector(k=3, subsample=0.25, seed=1).fit(x)
    assert abs(fraction.bank.shape[0] - 750) < 4 * math.sqrt(3000 * 0.25 * 0.75)
    assert KNNDetector(k=3, subsample=10_000).fit(x).bank.shape == (3000, D)
    assert KNNDetector(k=3, subsample=1.0).fit(x).bank.shape == (3000, D)
    for bad in (0, -1, 0.0, 1.5, True, "all"):
        with pytest.raises(ValueError, match="subsample"):
            KNNDetector(subsample=bad)


def test_knn_bank_does_not_alias_the_training_tensor():
    x, _ = gaussians(50, seed=23)
    detector = KNNDetector(k=1, normalize=False).fit(x)
    before = detector.bank.clone()
    x.add_(100.0)
    assert torch.equal(detector.bank, before)


def test_knn_partial_fit_appends_and_float64():
    x, _ = gaussians(200, seed=20, dtype=torch.float64)
    detector = KNNDetector(k=1).partial_fit(x[:100])
    assert detector.bank.shape == (100, D)
    detector.partial_fit(x[100:])
    assert detector.bank.shape == (200, D) and detector.bank.dtype == torch.float64
    # A training point's nearest neighbour is itself: distance 0.
    torch.testing.assert_close(detector.score(x), torch.zeros(200, dtype=torch.float64), rtol=0, atol=1e-6)


def test_vim_math_against_brute_force_and_vim_fit():
    from gencore.ood import vim_fit

    x, _ = gaussians(700, seed=21, dtype=torch.float64)
    weight, bias = (t.double() for t in classifier())
    queries, _ = gaussians(30, seed=22, shift=1.0, dtype=torch.float64)
    logits = x @ weight.T + bias
    q_logits = queries @ weight.T + bias
    origin = -torch.linalg.pinv(weight) @ bias
    z = x - origin
    evals, evecs = torch.linalg.eigh(z.T @ z / len(x))
    principal = evecs[:, -5:]

    def residual(v):
        v = v - origin
        return (v - v @ principal @ principal.T).norm(dim=1)

    # fit(): the paper's α = Σ max logit / Σ residual norm, as the logits branch's vim_fit.
    detector = ViMDetector(weight, bias, dim=5).fit(x)
    alpha = logits.max(1).values.sum() / residual(x).sum()
    expected = torch.logsumexp(q_logits, 1) - alpha * residual(queries)
    torch.testing.assert_close(detector.score(queries), expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(detector.score(queries, logits=q_logits), expected, rtol=1e-7, atol=1e-7)
    center, fitted_principal, fitted_alpha = vim_fit(x, None, weight, bias, 5)
    assert detector.alpha == pytest.approx(fitted_alpha, rel=1e-10)
    torch.testing.assert_close(detector.principal @ detector.principal.T, fitted_principal @ fitted_principal.T,
                               rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(detector.center, center.double(), rtol=1e-12, atol=1e-12)

    # partial_fit: α from the RMS residual of the streamed statistics.
    streamed = ViMDetector(weight, bias, dim=5)
    for chunk in x.split(100):
        streamed.partial_fit(chunk)
    rms_alpha = logits.max(1).values.mean() / evals[:-5].sum().sqrt()
    torch.testing.assert_close(streamed.score(queries), torch.logsumexp(q_logits, 1) - rms_alpha * residual(queries),
                               rtol=1e-7, atol=1e-7)
    assert streamed.alpha <= detector.alpha * (1 + 1e-12)    # RMS >= mean
    # A partial_fit after fit() drops the second-pass α: same as the pure stream.
    resumed = ViMDetector(weight, bias, dim=5).fit(x[:300]).partial_fit(x[300:])
    resumed.score(queries)                  # derived attributes refresh lazily, on use
    assert resumed.alpha == pytest.approx(streamed.alpha, rel=1e-10)

    fixed = ViMDetector(weight, bias, dim=5, alpha=2.0).fit(x)
    torch.testing.assert_close(fixed.score(queries), torch.logsumexp(q_logits, 1) - 2.0 * residual(queries),
                               rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="dim"):
        ViMDetector(weight, bias, dim=D)
    with pytest.raises(ValueError, match="classes mismatch"):
        ViMDetector(weight, bias[:2])
    with pytest.raises(ValueError, match="classes mismatch"):
        detector.score(queries, logits=q_logits[:, :2])
    assert ViMDetector(weight, bias).dim == D // 2
