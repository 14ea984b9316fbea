"""gencore.ood detectors: the shared protocol (fit vs chunked partial_fit, state_dict
round trip and refusal, threshold calibration, ID above far OOD, gradients,
torch.compile, bad input, NaN policy) for every detector; class labels as
values; then each detector's math against a brute-force float64 oracle.

Every test draws its problem from the ``rng`` fixture (tests/conftest.py):
class means, samples and queries are fresh per test and reproducible.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import gencore
from gencore.ood import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                         RelativeMahalanobisDetector, ViMDetector)

C, D = 4, 12


class Problem:
    """C well-separated isotropic Gaussian classes in D dimensions, and their nearest-mean classifier."""

    def __init__(self, rng: torch.Generator, c: int = C, d: int = D):
        self.rng, self.c, self.d = rng, c, d
        self.means = 4.0 * torch.randn(c, d, generator=rng, dtype=torch.float64)

    def sample(self, n, *, shift=0.0, dtype=torch.float32):
        labels = torch.randint(0, self.c, (n,), generator=self.rng)
        x = self.means[labels] + torch.randn(n, self.d, generator=self.rng, dtype=torch.float64) + shift
        return x.to(dtype), labels

    def classifier(self, dtype=torch.float32):
        """Nearest-mean logits: weight [C, D], bias [C]."""
        return self.means.to(dtype), (-0.5 * (self.means * self.means).sum(1)).to(dtype)

    def logits(self, x):
        weight, bias = self.classifier(x.dtype)
        return x @ weight.T + bias


# name -> factory(problem)
DETECTORS = {
    "mahalanobis-mle": lambda p: MahalanobisDetector(),
    "mahalanobis-ridge": lambda p: MahalanobisDetector(estimator="ridge", ridge_lambda=0.1),
    "mahalanobis-shrunk": lambda p: MahalanobisDetector(estimator="shrunk", shrinkage=0.2),
    "mahalanobis-oas": lambda p: MahalanobisDetector(estimator="oas"),
    "mahalanobis-lw": lambda p: MahalanobisDetector(estimator="ledoit_wolf"),
    "relative-mahalanobis": lambda p: RelativeMahalanobisDetector(),
    "relative-mahalanobis-lw": lambda p: RelativeMahalanobisDetector(estimator="ledoit_wolf"),
    "knn": lambda p: KNNDetector(k=5),
    "knn-subsample-int": lambda p: KNNDetector(k=5, subsample=300, seed=3),
    "knn-subsample-float": lambda p: KNNDetector(k=5, subsample=0.5, seed=4),
    "knn-raw": lambda p: KNNDetector(k=5, normalize=False),
    "vim": lambda p: ViMDetector(*p.classifier(), dim=6),
    "energy": lambda p: EnergyDetector(temperature=2.0),
    "msp": lambda p: MSPDetector(),
    "max-logit": lambda p: MaxLogitDetector(),
}
ALL = list(DETECTORS)


def is_logit_only(name):
    return name in ("energy", "msp", "max-logit")


def is_gaussian(name):
    return name.startswith(("mahalanobis", "relative"))


FEATURE_DETECTORS = [n for n in ALL if not is_logit_only(n)]
# At score time the ops refuse NaN/inf on CPU; their messages name the argument
# (the native kernels add the first bad row, the reference does not).
SCORE_NAN = r"{} contains (NaN|inf)"
GAUSSIAN = [n for n in ALL if is_gaussian(n)]


def make(name, problem):
    return DETECTORS[name](problem)


def fit_args(problem, x, labels):
    return {"features": x, "labels": labels, "logits": problem.logits(x)}


def score_args(problem, x):
    return {"features": x, "logits": problem.logits(x)}


# ---------------------------------------------------------------- the protocol, every detector

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ALL)
def test_partial_fit_in_chunks_equals_fit(name, dtype, rng):
    p = Problem(rng)
    x, labels = p.sample(900, dtype=dtype)
    queries, _ = p.sample(200, dtype=dtype)
    queries = torch.cat([queries, queries + 3.0])
    # ViM's fit() makes a second pass for the paper's α, which a stream cannot
    # (see ViMDetector); the stream is compared with a one-batch stream.
    one = make(name, p)
    one = one.partial_fit(**fit_args(p, x, labels)) if name == "vim" else one.fit(**fit_args(p, x, labels))
    chunked = make(name, p)
    for start, size in ((0, 1), (1, 250), (251, 7), (258, 0), (258, 642)):
        chunked.partial_fit(**fit_args(p, x[start:start + size], labels[start:start + size]))
    expected, got = one.score(**score_args(p, queries)), chunked.score(**score_args(p, queries))
    # float64: statistics agree to float64 rounding, except Ledoit-Wolf's streamed
    # fourth moment (~1e-4, see covariance.ClassStatistics). float32: each chunk's
    # scatter is a float32 GEMM, within ~5e-6 relative (ClassStatistics.update),
    # amplified by cond(Σ) (~2 here) and by the difference of two distances in
    # the relative score, and scores are float32.
    tol = 1e-3 if name.endswith("-lw") else (1e-9 if dtype == torch.float64 else 2e-4)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().mean()))


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_is_exact(name, rng):
    p = Problem(rng)
    x, labels = p.sample(600)
    calibration, _ = p.sample(100)
    queries, _ = p.sample(50, shift=1.0)
    detector = make(name, p).fit(**fit_args(p, x, labels)).calibrate(**score_args(p, calibration))
    state = detector.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    restored = make(name, p).load_state_dict(state)
    assert torch.equal(restored.score(**score_args(p, queries)), detector.score(**score_args(p, queries)))
    assert restored.threshold(0.9) == detector.threshold(0.9)
    again = restored.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_state_dict_mid_stream_then_continue(name, rng):
    p = Problem(rng)
    x, labels = p.sample(600)
    queries, _ = p.sample(50)
    uninterrupted = make(name, p).partial_fit(**fit_args(p, x[:300], labels[:300]))
    uninterrupted.partial_fit(**fit_args(p, x[300:], labels[300:]))
    saved = make(name, p).partial_fit(**fit_args(p, x[:300], labels[:300])).state_dict()
    resumed = make(name, p).load_state_dict(saved)
    resumed.partial_fit(**fit_args(p, x[300:], labels[300:]))
    assert torch.equal(resumed.score(**score_args(p, queries)), uninterrupted.score(**score_args(p, queries)))


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("name", ALL)
def test_threshold_keeps_the_stated_fraction_of_id(name, tpr, rng):
    p = Problem(rng)
    x, labels = p.sample(800)
    calibration, _ = p.sample(401)
    detector = make(name, p).fit(**fit_args(p, x, labels)).calibrate(**score_args(p, calibration))
    t = detector.threshold(tpr)
    scores = detector.score(**score_args(p, calibration))
    kept = float((scores >= t).double().mean())
    m = calibration.shape[0]
    n_ties = int((scores == t).sum())
    assert tpr <= kept < tpr + n_ties / m + 1e-12
    assert torch.equal(detector.is_in_distribution(**score_args(p, calibration), tpr=tpr), scores >= t)
    if n_ties > 1:
        return  # e.g. MSP saturating at 1.0 in float32: the fraction kept is only bounded
    # Fresh ID data from the same distribution: the same fraction up to sampling
    # noise. The fraction of the population above the k-th best of m calibration
    # scores is Beta-distributed around tpr (sd <= sqrt(tpr (1 - tpr) / m)); its
    # tail beyond the last order statistic is (1 - t)^m, below 1e-6 for t = 14 / m.
    fresh, _ = p.sample(2000)
    fresh_kept = float((detector.score(**score_args(p, fresh)) >= t).double().mean())
    spread = math.sqrt(tpr * (1 - tpr))
    assert abs(fresh_kept - tpr) < 5 * spread / math.sqrt(m) + 5 * spread / math.sqrt(2000) + 14 / m


@pytest.mark.parametrize("name", ALL)
def test_id_scores_higher_than_far_ood(name, rng):
    p = Problem(rng)
    x, labels = p.sample(800)
    detector = make(name, p).fit(**fit_args(p, x, labels))
    id_x, _ = p.sample(300)
    # Far OOD for feature detectors: shifted far from every class. For the
    # logit-only scores, "far" must be far in logit space: midpoints between
    # two classes, where the two top logits tie and are small.
    if is_logit_only(name):
        pairs = torch.stack([torch.randperm(C, generator=rng)[:2] for _ in range(300)])
        ood_x = (p.means[pairs].mean(1) + 0.1 * torch.randn(300, D, generator=rng, dtype=torch.float64)).float()
    else:
        ood_x, _ = p.sample(300, shift=25.0)
    s_id, s_ood = detector.score(**score_args(p, id_x)), detector.score(**score_args(p, ood_x))
    auroc = float((s_id[:, None] > s_ood[None, :]).double().mean()
                  + 0.5 * (s_id[:, None] == s_ood[None, :]).double().mean())
    assert auroc > 0.95
    torch.testing.assert_close(detector.ood_score(**score_args(p, ood_x)), -s_ood)


@pytest.mark.parametrize("name", ALL + ["vim-narrow-subspace"])
def test_score_is_differentiable(name, rng):
    """gradcheck in float64 through each detector's score (features, or logits for the logit scores)."""
    p = Problem(rng, c=3, d=5)
    x, labels = p.sample(300, dtype=torch.float64)
    # ViM: dim 3 of 5 scores against the complement of P, dim 2 against P itself.
    vim_dim = {"vim": 3, "vim-narrow-subspace": 2}.get(name)
    detector = ViMDetector(*p.classifier(torch.float64), dim=vim_dim) if vim_dim else make(name, p)
    detector.fit(**fit_args(p, x, labels))
    queries, _ = p.sample(6, shift=0.5, dtype=torch.float64)
    if is_logit_only(name):
        inputs = (p.logits(queries) / 3).requires_grad_()  # moderate logits: MSP's gradient is not ~0
        fn = lambda lg: detector.score(logits=lg)  # noqa: E731
    else:
        inputs = queries.requires_grad_()
        fn = lambda f: detector.score(f)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (inputs,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_score_compiles_with_fullgraph(name, rng):
    """No data-dependent Python control flow: torch.compile(fullgraph=True) traces score."""
    p = Problem(rng)
    x, labels = p.sample(300)
    detector = make(name, p).fit(**fit_args(p, x, labels))
    queries, _ = p.sample(40, shift=0.3)
    args = score_args(p, queries)
    if not is_logit_only(name):
        args = {"features": args["features"]} | ({"logits": args["logits"]} if name == "vim" else {})
    compiled = torch.compile(detector.score, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**args), detector.score(**args), rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["mahalanobis-mle", "knn", "vim", "energy"])
def test_score_compiles_with_aot_autograd(name, rng):
    """aot_eager also runs the ops' fake kernels; the compiled score still has gradients."""
    p = Problem(rng)
    x, labels = p.sample(300)
    detector = make(name, p).fit(**fit_args(p, x, labels))
    queries, _ = p.sample(30, shift=0.3)
    inputs = (p.logits(queries) if is_logit_only(name) else queries).requires_grad_()
    call = (lambda t: detector.score(logits=t)) if is_logit_only(name) else (lambda t: detector.score(t))
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    out = compiled(inputs)
    torch.testing.assert_close(out, call(inputs), rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), inputs)
    (expected,) = torch.autograd.grad(call(inputs).sum(), inputs)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


class _FullScans(TorchFunctionMode):
    """Records NaN/inf scans (isfinite / isnan / isinf) of tensors with at least ``numel`` elements."""

    SCANS = {torch.isfinite, torch.isnan, torch.isinf, torch.Tensor.isfinite, torch.Tensor.isnan,
             torch.Tensor.isinf}

    def __init__(self, numel):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SCANS and isinstance(args[0], torch.Tensor) and args[0].numel() >= self.numel:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ALL)
def test_finite_inputs_are_not_scanned_for_nan(name, rng):
    """The ops refuse NaN/inf themselves; fit finds them from small accumulators: no full scans."""
    if gencore.info()["ops"]["ood.knn"]["cpu"]["float32"] != "native-cpu":
        pytest.skip("only the native CPU kernels refuse NaN inside their own pass (the reference scans once)")
    p = Problem(rng)
    x, labels = p.sample(500)
    queries, _ = p.sample(400)
    args = score_args(p, queries)
    with _FullScans(min(x.numel(), queries.numel(), args["logits"].numel())) as fit_scans:
        detector = make(name, p).fit(**fit_args(p, x, labels))
    with _FullScans(min(queries.numel(), args["logits"].numel())) as score_scans:
        detector.score(**args)
    assert fit_scans.seen == [] and score_scans.seen == []


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_bad_input(name, rng):
    p = Problem(rng)
    x, labels = p.sample(100)
    with pytest.raises(RuntimeError, match="not fitted"):
        make(name, p).score(**score_args(p, x))
    with pytest.raises(RuntimeError, match="no calibration"):
        make(name, p).fit(**fit_args(p, x, labels)).threshold()
    detector = make(name, p).fit(**fit_args(p, x, labels))
    with pytest.raises(ValueError, match=f"D=5 but {type(detector).__name__} was fitted on D={D}"):
        detector.score(torch.randn(3, 5), logits=torch.randn(3, C))
    with pytest.raises(TypeError, match="features must have dtype"):
        detector.score(x.to(torch.int32))
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        detector.score(x.tolist())
    with pytest.raises(ValueError, match="features must be 2-D"):
        detector.score(x[0])
    with pytest.raises(ValueError, match="tpr"):
        detector.threshold(1.5)
    with pytest.raises(ValueError, match="needs features"):
        make(name, p).fit(features=None, labels=labels)
    with pytest.raises(ValueError, match="D=0"):
        make(name, p).fit(torch.empty(4, 0), labels[:4])
    with pytest.raises(ValueError, match="0 rows"):
        make(name, p).fit(x[:0], labels[:0], logits=p.logits(x[:0]))
    with pytest.raises(ValueError, match="0 rows"):
        detector.calibrate(**score_args(p, x[:0]))
    assert detector.score(**score_args(p, x[:0])).shape == (0,)    # an empty batch scores to []
    assert not make(name, p).partial_fit(**fit_args(p, x[:0], labels[:0]))._fitted


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_nan_in_features_is_refused_naming_features(name, bad, rng):
    p = Problem(rng)
    x, labels = p.sample(100)
    poisoned = x.clone()
    poisoned[37, 2] = bad
    with pytest.raises(ValueError, match=r"features contains NaN or inf \(row 37\)"):
        make(name, p).fit(poisoned, labels)                    # logits computed from features, if any
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        make(name, p).fit(**fit_args(p, poisoned, labels))
    detector = make(name, p).fit(**fit_args(p, x, labels))
    with pytest.raises(ValueError, match=SCORE_NAN.format("features")) as refused:  # the CPU ops refuse it
        detector.score(poisoned)
    assert "(row " not in str(refused.value) or "(row 37)" in str(refused.value)


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_refused_batch_leaves_the_detector_unchanged(name, rng):
    p = Problem(rng)
    x, labels = p.sample(400)
    detector = make(name, p).partial_fit(**fit_args(p, x[:200], labels[:200]))
    before = detector.state_dict()
    poisoned = x[200:].clone()
    poisoned[-1, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        detector.partial_fit(**fit_args(p, poisoned, labels[200:]))
    after = detector.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_nan_in_logits_is_refused_naming_logits(rng):
    p = Problem(rng)
    x, labels = p.sample(100)
    logits = p.logits(x)
    logits[11, 1] = -float("inf")                  # not a row maximum: found from the row minimum
    with pytest.raises(ValueError, match=r"logits contains NaN or inf \(row 11\)"):
        ViMDetector(*p.classifier(), dim=6).fit(x, logits=logits)
    detector = ViMDetector(*p.classifier(), dim=6).fit(x)
    with pytest.raises(ValueError, match=SCORE_NAN.format("logits")):
        detector.score(x, logits=logits)


@pytest.mark.parametrize("name", ["mahalanobis-mle", "mahalanobis-lw", "relative-mahalanobis"])
def test_load_state_dict_refuses_other_statistics(name, rng):
    p = Problem(rng)
    x, labels = p.sample(300)
    detector = make(name, p).fit(x, labels)
    state = detector.state_dict()
    queries, _ = p.sample(20)
    expected = detector.score(queries)
    other = "mle" if name.endswith("-lw") else "ledoit_wolf"
    target = type(detector)(estimator=other)
    with pytest.raises(ValueError, match=r"fit\.estimator.*estimator="):
        target.load_state_dict(state)
    # Another feature dimension: the statistics' shapes must agree with num_features.
    wrong_d = dict(state, num_features=torch.tensor(D + 1))
    with pytest.raises(ValueError, match="D=12 features but state\\['num_features'\\] = 13"):
        make(name, p).load_state_dict(wrong_d)
    bad_within = dict(state, **{"fit.within": state["fit.within"][:-1, :-1]})
    with pytest.raises(ValueError, match=r"state\['fit\.within'\] must have shape \[12, 12\]"):
        make(name, p).load_state_dict(bad_within)
    with pytest.raises(ValueError, match=r"fit\.counts"):
        make(name, p).load_state_dict({k: v for k, v in state.items() if k != "fit.counts"})
    with pytest.raises(ValueError, match=r"state\['fit\.means'\] must be a float64"):
        make(name, p).load_state_dict(dict(state, **{"fit.means": state["fit.means"].float()}))
    with pytest.raises(ValueError, match="num_classes=3"):
        type(detector)(estimator=detector.estimator, num_classes=3).load_state_dict(state)
    # Fourth moments of a Ledoit-Wolf state forced into an MLE state: named as extra fields.
    if name.endswith("-lw"):
        forged = dict(state, **{"fit.estimator": torch.tensor(0)})
        with pytest.raises(ValueError, match=r"fit\.class_fourth.*ledoit_wolf"):
            type(detector)().load_state_dict(forged)
    # A refused state leaves the detector as it was.
    with pytest.raises(ValueError):
        detector.load_state_dict(wrong_d)
    assert torch.equal(detector.score(queries), expected)


def test_load_state_dict_refuses_mismatched_knn_and_vim_states(rng):
    p = Problem(rng)
    x, _ = p.sample(200)
    knn = KNNDetector(k=3).fit(x)
    with pytest.raises(ValueError, match=r"fit\.normalize.*normalize=False"):
        KNNDetector(k=3, normalize=False).load_state_dict(knn.state_dict())
    with pytest.raises(ValueError, match=r"fit\.keys"):
        KNNDetector(k=3, subsample=50).load_state_dict(knn.state_dict())
    with pytest.raises(ValueError, match="state\\['fit.bank'\\] has D=12 but state\\['num_features'\\] = 11"):
        KNNDetector(k=3).load_state_dict(dict(knn.state_dict(), num_features=torch.tensor(11)))
    vim = ViMDetector(*p.classifier(), dim=6).fit(x)
    with pytest.raises(ValueError, match=r"fit\.dim.*dim=5"):
        ViMDetector(*p.classifier(), dim=5).load_state_dict(vim.state_dict())
    wide = torch.randn(C, D + 2, generator=rng)
    with pytest.raises(ValueError, match="this ViMDetector has D=14"):
        ViMDetector(wide, dim=6).load_state_dict(vim.state_dict())
    with pytest.raises(ValueError, match="unexpected keys"):
        EnergyDetector().load_state_dict({"fit.bank": torch.zeros(2, 2), "stray": torch.zeros(1)})
    with pytest.raises(TypeError, match="dict of tensors"):
        EnergyDetector().load_state_dict({"calibration_scores": [1.0]})


@pytest.mark.parametrize("name", ALL)
def test_logit_inputs_bad_shapes(name, rng):
    p = Problem(rng)
    x, labels = p.sample(50)
    detector = make(name, p).fit(**fit_args(p, x, labels))
    with pytest.raises(TypeError, match="logits must have dtype"):
        detector.score(**dict(score_args(p, x), logits=p.logits(x).long()))
    with pytest.raises(ValueError, match="logits have 49 rows, features have 50|logits must be"):
        detector.score(**dict(score_args(p, x), logits=p.logits(x)[:49])) if not is_logit_only(name) else \
            detector.score(logits=p.logits(x)[0])


# ---------------------------------------------------------------- class labels

@pytest.mark.parametrize("name", GAUSSIAN)
def test_bad_labels(name, rng):
    p = Problem(rng)
    x, labels = p.sample(100)
    with pytest.raises(ValueError, match="needs labels"):
        make(name, p).fit(x)
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float32"):
        make(name, p).fit(x, labels.float())
    with pytest.raises(TypeError, match="labels must have an integer dtype, got bool"):
        make(name, p).fit(x, labels > 1)
    with pytest.raises(TypeError, match="labels must be an integer torch.Tensor"):
        make(name, p).fit(x, labels.tolist())
    with pytest.raises(ValueError, match=r"labels must be \[N\] with N=100"):
        make(name, p).fit(x, labels[:50])
    fixed = type(make(name, p))
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=4\), got a label 5"):
        fixed(num_classes=C).fit(x, torch.where(labels == 0, 5, labels))
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=4\), got a label -1"):
        fixed(num_classes=C).fit(x, labels - 1)
    few = labels.clone()
    few[few == 2] = 1
    few[0] = 2                                  # class 2 has one sample
    with pytest.raises(ValueError, match=r"fewer than 2 samples: 2 \(n=1\)"):
        make(name, p).fit(x, few)
    # With num_classes every declared class needs samples; without it, absent values are no class.
    with pytest.raises(ValueError, match=r"no samples of classes \[1\] \(num_classes=4"):
        fixed(num_classes=C).fit(x, torch.where(labels == 1, 0, labels))
    assert make(name, p).fit(x, torch.where(labels == 1, 0, labels)).classes_.tolist() == [0, 2, 3]
    # Streaming: a class may be short mid-stream; the check runs when the detector is used.
    detector = make(name, p).partial_fit(x[:1], labels[:1])
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        detector.score(x)


def test_out_of_range_label_is_refused_before_anything_is_allocated(rng):
    p = Problem(rng)
    x, labels = p.sample(64)
    huge = labels.clone()
    huge[5:7] = 3_000_000
    # Without num_classes, 3_000_000 is one more class value: statistics for 5 classes, not 3 million.
    detector = MahalanobisDetector().fit(x, huge)
    assert detector.statistics.means.shape == (len(torch.unique(huge)), D)
    with pytest.raises(ValueError, match="got a label 3000000"):
        MahalanobisDetector(num_classes=C).fit(x, huge)
    stream = MahalanobisDetector(num_classes=C).partial_fit(x, labels)
    before = stream.state_dict()
    with pytest.raises(ValueError, match="got a label 3000000"):
        stream.partial_fit(x, huge)
    assert all(torch.equal(before[k], v) for k, v in stream.state_dict().items())


@pytest.mark.parametrize("values", [[0, 2, 5, 9], [3, 3_000_000, 40, -7], [-(2**40), 0, 2**40, 11]])
@pytest.mark.parametrize("name", ["mahalanobis-mle", "relative-mahalanobis-lw"])
def test_classes_are_the_sorted_label_values(name, values, rng):
    p = Problem(rng)
    x, positions = p.sample(400, dtype=torch.float64)
    values = torch.tensor(values)
    labels = values[positions]                    # class k of the problem has label values[k]
    detector = make(name, p).fit(x, labels)
    order = values.argsort()
    assert torch.equal(detector.classes_, values[order])
    # Same statistics as the same data with labels 0..C-1 in sorted-value order.
    rank = torch.empty_like(order)
    rank[order] = torch.arange(C)
    dense = make(name, p).fit(x, rank[positions])
    queries, _ = p.sample(50, dtype=torch.float64)
    assert torch.equal(detector.score(queries), dense.score(queries))
    expected_means = torch.stack([x[labels == v].mean(0) for v in values[order]])
    torch.testing.assert_close(detector.means, expected_means, rtol=1e-12, atol=1e-12)
    # nearest_class answers in label values: the argmin of brute-force distances.
    cov = torch.cat([(x[labels == v] - x[labels == v].mean(0)) for v in values])
    distances = brute_mahalanobis(queries, expected_means, cov.T @ cov / len(x))
    assert torch.equal(detector.nearest_class(queries), values[order][distances.argmin(1)])
    assert torch.equal(dense.nearest_class(queries), rank[positions].new_tensor(range(C))[distances.argmin(1)])


@pytest.mark.parametrize("name", ["mahalanobis-mle", "mahalanobis-lw", "relative-mahalanobis"])
def test_streamed_classes_discovered_chunk_by_chunk(name, rng):
    p = Problem(rng)
    x, positions = p.sample(700, dtype=torch.float64)
    values = torch.tensor([50, -3, 7, 1000])
    order = positions.argsort(stable=True)        # classes arrive one after another, not in sorted order
    x, labels = x[order], values[positions[order]]
    one = make(name, p).fit(x, labels)
    stream = make(name, p)
    for chunk, chunk_labels in zip(x.split(90), labels.split(90)):
        stream.partial_fit(chunk, chunk_labels)
        # Mid-stream state round trip with the classes discovered so far.
        stream = make(name, p).load_state_dict(stream.state_dict())
    queries, _ = p.sample(60, dtype=torch.float64)
    assert torch.equal(stream.classes_, one.classes_)
    tol = 1e-3 if name.endswith("-lw") else 1e-9
    torch.testing.assert_close(stream.score(queries), one.score(queries), rtol=tol, atol=tol)
    assert torch.equal(stream.nearest_class(queries), one.nearest_class(queries))


def test_num_classes_fixes_the_classes(rng):
    p = Problem(rng)
    x, labels = p.sample(300)
    fixed = MahalanobisDetector(num_classes=C).fit(x, labels)
    assert torch.equal(fixed.classes_, torch.arange(C))
    free = MahalanobisDetector().fit(x, labels)
    assert torch.equal(fixed.score(x), free.score(x))
    assert torch.equal(fixed.nearest_class(x), free.nearest_class(x))
    assert MahalanobisDetector().classes_ is None


# ---------------------------------------------------------------- logit-only detectors

@pytest.mark.parametrize("name", [n for n in ALL if is_logit_only(n)])
def test_logit_only_detectors(name, rng):
    p = Problem(rng)
    logits = torch.randn(50, 7, generator=rng, dtype=torch.float64) * 3
    detector = make(name, p)
    scores = detector.score(logits=logits)           # nothing to fit
    assert scores.shape == (50,)
    expected = {
        "energy": 2.0 * torch.logsumexp(logits / 2.0, 1),
        "msp": torch.softmax(logits, 1).max(1).values,
        "max-logit": logits.max(1).values,
    }[name]
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(detector.fit(logits=logits).score(logits=logits), scores)
    torch.testing.assert_close(detector.score(logits=logits.float()).double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs logits"):
        detector.score(torch.randn(3, 4))
    with pytest.raises(ValueError, match=SCORE_NAN.format("logits")):
        detector.score(logits=torch.full((2, 3), float("nan")))
    with pytest.raises(RuntimeError, match="no calibration"):
        detector.threshold()
    if name != "max-logit":
        with pytest.raises(ValueError, match="temperature must be > 0"):
            type(detector)(temperature=0.0)


# ---------------------------------------------------------------- each detector's math

def brute_mahalanobis(x, means, cov):
    diff = x.double()[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, torch.linalg.inv(cov), diff)


@pytest.mark.parametrize("n,c,d", [(500, 4, 12), (97, 2, 3), (1300, 7, 40)])
def test_mahalanobis_math_against_brute_force(n, c, d, rng):
    p = Problem(rng, c=c, d=d)
    x, labels = p.sample(n, dtype=torch.float64)
    queries, _ = p.sample(40, shift=2.0, dtype=torch.float64)
    means = torch.stack([x[labels == k].mean(0) for k in range(c)])
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


def test_knn_k4096_on_bank_of_5000(rng):
    bank, queries = torch.randn(5000, 16, generator=rng), torch.randn(20, 16, generator=rng)
    detector = KNNDetector(k=4096).fit(bank)
    assert detector.bank.shape == (5000, 16)
    torch.testing.assert_close(detector.score(queries).double(), -kth_distance(queries, bank, 4096),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k=5001 exceeds the bank size 5000"):
        KNNDetector(k=5001).fit(bank).score(queries)


def test_knn_subsampling(rng):
    p = Problem(rng)
    x, _ = p.sample(3000)
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


def test_knn_bank_does_not_alias_the_training_tensor(rng):
    x, _ = Problem(rng).sample(50)
    detector = KNNDetector(k=1, normalize=False).fit(x)
    before = detector.bank.clone()
    x.add_(100.0)
    assert torch.equal(detector.bank, before)


def test_knn_partial_fit_appends_and_float64(rng):
    x, _ = Problem(rng).sample(200, dtype=torch.float64)
    detector = KNNDetector(k=1).partial_fit(x[:100])
    assert detector.bank.shape == (100, D)
    detector.partial_fit(x[100:])
    assert detector.bank.shape == (200, D) and detector.bank.dtype == torch.float64
    # A training point's nearest neighbour is itself: distance 0.
    torch.testing.assert_close(detector.score(x), torch.zeros(200, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [5, 7])  # α's second pass: by the op (P narrower) / by the complement
def test_vim_math_against_brute_force_and_vim_fit(dim, rng):
    from gencore.ood import vim_fit

    p = Problem(rng)
    x, _ = p.sample(700, dtype=torch.float64)
    weight, bias = p.classifier(torch.float64)
    queries, _ = p.sample(30, shift=1.0, dtype=torch.float64)
    logits = x @ weight.T + bias
    q_logits = queries @ weight.T + bias
    origin = -torch.linalg.pinv(weight) @ bias
    z = x - origin
    evals, evecs = torch.linalg.eigh(z.T @ z / len(x))
    principal = evecs[:, -dim:]

    def residual(v):
        v = v - origin
        return (v - v @ principal @ principal.T).norm(dim=1)

    # fit(): the paper's α = Σ max logit / Σ residual norm, as the logits branch's vim_fit.
    detector = ViMDetector(weight, bias, dim=dim).fit(x)
    alpha = logits.max(1).values.sum() / residual(x).sum()
    expected = torch.logsumexp(q_logits, 1) - alpha * residual(queries)
    torch.testing.assert_close(detector.score(queries), expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(detector.score(queries, logits=q_logits), expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ViMDetector(weight, bias, dim=dim).fit(x, logits=logits).score(queries), expected,
                               rtol=1e-7, atol=1e-7)
    center, fitted_principal, fitted_alpha = vim_fit(x, None, weight, bias, dim)
    assert detector.alpha == pytest.approx(fitted_alpha, rel=1e-10)
    torch.testing.assert_close(detector.principal @ detector.principal.T, fitted_principal @ fitted_principal.T,
                               rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(detector.center, center.double(), rtol=1e-12, atol=1e-12)

    # partial_fit: α from the RMS residual of the streamed statistics.
    streamed = ViMDetector(weight, bias, dim=dim)
    for chunk in x.split(100):
        streamed.partial_fit(chunk)
    rms_alpha = logits.max(1).values.mean() / evals[:-dim].sum().sqrt()
    torch.testing.assert_close(streamed.score(queries), torch.logsumexp(q_logits, 1) - rms_alpha * residual(queries),
                               rtol=1e-7, atol=1e-7)
    assert streamed.alpha <= detector.alpha * (1 + 1e-12)    # RMS >= mean
    # A partial_fit after fit() drops the second-pass α: same as the pure stream.
    resumed = ViMDetector(weight, bias, dim=dim).fit(x[:300]).partial_fit(x[300:])
    resumed.score(queries)                  # derived attributes refresh lazily, on use
    assert resumed.alpha == pytest.approx(streamed.alpha, rel=1e-10)

    fixed = ViMDetector(weight, bias, dim=dim, alpha=2.0).fit(x)
    torch.testing.assert_close(fixed.score(queries), torch.logsumexp(q_logits, 1) - 2.0 * residual(queries),
                               rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="dim"):
        ViMDetector(weight, bias, dim=D)
    with pytest.raises(ValueError, match="classes mismatch"):
        ViMDetector(weight, bias[:2])
    with pytest.raises(ValueError, match="classes mismatch"):
        detector.score(queries, logits=q_logits[:, :2])
    assert ViMDetector(weight, bias).dim == D // 2


@pytest.mark.parametrize("given_logits", [False, True])
@pytest.mark.parametrize("dim", [4, 8])   # D = 12: against P itself / against its complement
def test_vim_scores_many_rows(dim, given_logits, rng):
    """More rows than one block of the complement GEMM (8192): same scores as float64 brute force."""
    p = Problem(rng)
    x, _ = p.sample(2000)
    detector = ViMDetector(*p.classifier(), dim=dim).fit(x)
    queries, _ = p.sample(20000, shift=0.5)
    logits = p.logits(queries) if given_logits else None
    got = detector.score(queries, logits=logits)
    q, u, principal = queries.double(), detector.center, detector.principal
    residual = ((q - u) - (q - u) @ principal @ principal.T).norm(dim=1)
    weight, bias = p.classifier(torch.float64)
    energy = torch.logsumexp(q @ weight.T + bias, 1)
    expected = energy - detector.alpha * residual
    # float32: a few eps of the terms' magnitudes (the op's residual is exact to a few eps of ||x - u||)
    scale = energy.abs() + detector.alpha * (q - u).norm(dim=1)
    assert bool(((got.double() - expected).abs() <= 1e-5 * scale).all())
    poisoned = queries.clone()
    poisoned[15000, 3] = float("nan")
    with pytest.raises(ValueError, match=SCORE_NAN.format("features")) as refused:
        detector.score(poisoned, logits=logits)
    assert "(row " not in str(refused.value) or "(row 15000)" in str(refused.value)
