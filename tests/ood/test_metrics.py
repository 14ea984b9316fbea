"""gencore.ood.metrics: peers (scikit-learn, SciPy), a brute-force oracle written from
the docstring definitions, hand-derived cases, invariances and bad input.

Scores are higher = more in-distribution; ID is the "in"/positive class of sklearn
unless a test says otherwise.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from gencore.ood import metrics

ALL = [metrics.auroc, metrics.aupr_in, metrics.aupr_out, metrics.fpr_at_tpr, metrics.detection_error]


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"numpy seed {seed}")  # shown on failure; np.random.default_rng(seed) replays it
    return np.random.default_rng(seed)


# Containers/dtypes the metrics accept. Test values are small integers, exact in all of them.
CONTAINERS = {
    "numpy-float64": lambda x: np.asarray(x, dtype=np.float64),
    "numpy-float32": lambda x: np.asarray(x, dtype=np.float32),
    "numpy-int64": lambda x: np.asarray(x, dtype=np.int64),
    "torch-float16": lambda x: torch.tensor(x, dtype=torch.float16),
    "torch-bfloat16": lambda x: torch.tensor(x, dtype=torch.bfloat16),
    "torch-float32": lambda x: torch.tensor(x, dtype=torch.float32),
    "torch-float64": lambda x: torch.tensor(x, dtype=torch.float64),
    "torch-strided": lambda x: torch.tensor(np.repeat(x, 2), dtype=torch.float32)[::2],
    "list": lambda x: [float(v) for v in x],
}

SIZES = [(1, 1), (1, 9), (9, 1), (3, 400), (400, 3), (257, 1000)]


def _sk_expected(x_id: np.ndarray, x_ood: np.ndarray, tprs):
    """Every metric from sklearn's curves on the float64 values."""
    s = np.concatenate([x_id, x_ood]).astype(np.float64)
    y = np.concatenate([np.ones(x_id.size), np.zeros(x_ood.size)])
    # drop_intermediate=False: all points, so "first point with TPR >= tpr" is well defined
    fpr_c, tpr_c, _ = roc_curve(y, s, drop_intermediate=False)
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    out = {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
        # roc_curve starts at (0, 0): accept nothing; it ends at (1, 1): accept all
        "detection_error": float(np.min(0.5 * (1 - tpr_c) + 0.5 * fpr_c)),
    }
    for t in tprs:
        k = int(np.argmax(tpr_c >= t))
        out[("id", t)] = fpr_c[k]
        out[("de", t)] = 0.5 * (1 - tpr_c[k]) + 0.5 * fpr_c[k]
        out[("ood", t)] = fpr_o[int(np.argmax(tpr_o >= t))]
    return out


def _check_against_sklearn(a, b, x_id, x_ood, tprs):
    want = _sk_expected(x_id, x_ood, tprs)
    assert metrics.auroc(a, b) == pytest.approx(want["auroc"], rel=1e-12, abs=1e-15)
    assert metrics.aupr_in(a, b) == pytest.approx(want["aupr_in"], rel=1e-12)
    assert metrics.aupr_out(a, b) == pytest.approx(want["aupr_out"], rel=1e-12)
    assert metrics.detection_error(a, b) == pytest.approx(want["detection_error"], abs=1e-14)
    for t in tprs:
        # both sides take the same count / size quotient: equal, not just close
        assert metrics.fpr_at_tpr(a, b, tpr=t, positive="id") == want[("id", t)], t
        assert metrics.fpr_at_tpr(a, b, tpr=t, positive="ood") == want[("ood", t)], t
        assert metrics.detection_error(a, b, tpr=t) == pytest.approx(want[("de", t)], abs=1e-14)


def _tprs(rng, n, m):
    # fixed levels, plus exact fractions j/n and j/m where the TPR lands on the target
    fixed = [1e-9, 0.05, 0.5, 0.9, 0.95, 1.0]
    exact = [j / n for j in rng.integers(1, n + 1, 3)] + [j / m for j in rng.integers(1, m + 1, 3)]
    return fixed + exact


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("n,m", SIZES)
def test_matches_sklearn_with_ties(rng, container, n, m):
    # integer scores in a narrow range: most scores tie, many ties mix ID and OOD
    x_id = rng.integers(2, 16, n).astype(np.float64)
    x_ood = rng.integers(0, 12, m).astype(np.float64)
    to = CONTAINERS[container]
    _check_against_sklearn(to(x_id), to(x_ood), x_id, x_ood, _tprs(rng, n, m))


@pytest.mark.parametrize("n,m", [(1, 5), (50, 3000), (3000, 50), (2500, 2500)])
def test_matches_sklearn_continuous(rng, n, m):
    x_id = rng.normal(1.0, 1.0, n)
    x_ood = rng.normal(0.0, 1.5, m)
    _check_against_sklearn(x_id, x_ood, x_id, x_ood, _tprs(rng, n, m))


def test_matches_sklearn_large(rng):
    # 5e5 scores rounded to 1e-3: large tie groups and int64 counts of realistic size
    x_id = np.round(rng.normal(0.5, 1.0, 300_000), 3)
    x_ood = np.round(rng.normal(0.0, 1.0, 200_000), 3)
    _check_against_sklearn(torch.from_numpy(x_id).float(), x_ood, x_id.astype(np.float32), x_ood,
                           [0.5, 0.95, 0.99])


@pytest.mark.parametrize("n,m", [(1, 1), (7, 30), (400, 257)])
def test_auroc_is_mann_whitney_u_exactly(rng, n, m):
    x_id = rng.integers(0, 6, n).astype(np.float64)
    x_ood = rng.integers(0, 5, m).astype(np.float64)
    u = mannwhitneyu(x_id, x_ood, alternative="two-sided").statistic  # ties count 1/2
    # U is a half-integer (exact in float64), so U / (n m) is one correctly rounded division
    assert metrics.auroc(x_id, x_ood) == u / (n * m)


# ---- brute force straight from the docstring definitions, in exact rationals ----

def _oracle(id_s, ood_s, tpr):
    n, m = len(id_s), len(ood_s)
    twice_u = sum(2 * (a > b) + (a == b) for a in id_s for b in ood_s)
    values = sorted(set(id_s) | set(ood_s))
    acc_id = {t: sum(a >= t for a in id_s) for t in values}     # ID accepted at t
    acc_ood = {t: sum(b >= t for b in ood_s) for t in values}   # OOD accepted at t
    flag_ood = {t: sum(b <= t for b in ood_s) for t in values}  # OOD flagged at t
    flag_id = {t: sum(a <= t for a in id_s) for t in values}    # ID flagged at t
    ap_in = sum(Fraction(id_s.count(t), n) * Fraction(acc_id[t], acc_id[t] + acc_ood[t]) for t in values)
    ap_out = sum(Fraction(ood_s.count(t), m) * Fraction(flag_ood[t], flag_ood[t] + flag_id[t]) for t in values)
    # FPR is monotone in t, so the first ROC point reaching the target is the one with the
    # smallest FPR among all thresholds reaching it; TPR is the float quotient, as in sklearn
    fpr_id = min(Fraction(acc_ood[t], m) for t in values if acc_id[t] / n >= tpr)
    fpr_ood = min(Fraction(flag_id[t], n) for t in values if flag_ood[t] / m >= tpr)
    errors = [Fraction(1, 2)]  # accepting nothing: 1 - TPR = 1, FPR = 0
    errors += [Fraction(n - acc_id[t], 2 * n) + Fraction(acc_ood[t], 2 * m) for t in values]
    t_star = max(t for t in values if acc_id[t] / n >= tpr)
    de_at = Fraction(n - acc_id[t_star], 2 * n) + Fraction(acc_ood[t_star], 2 * m)
    return Fraction(twice_u, 2 * n * m), ap_in, ap_out, fpr_id, fpr_ood, min(errors), de_at


SCORE = st.one_of(st.integers(-4, 4).map(float), st.sampled_from([math.inf, -math.inf]))


@settings(max_examples=300, deadline=None)
@given(id_s=st.lists(SCORE, min_size=1, max_size=25), ood_s=st.lists(SCORE, min_size=1, max_size=25),
       tpr=st.one_of(st.sampled_from([0.05, 0.5, 0.9, 0.95, 1.0]),
                     st.floats(0.0, 1.0, exclude_min=True)))
def test_brute_force_definitions(id_s, ood_s, tpr):
    auc, ap_in, ap_out, fpr_id, fpr_ood, de, de_at = _oracle(id_s, ood_s, tpr)
    assert metrics.auroc(id_s, ood_s) == float(auc)  # exact: integer U, one division
    assert metrics.aupr_in(id_s, ood_s) == pytest.approx(float(ap_in), rel=1e-12)
    assert metrics.aupr_out(id_s, ood_s) == pytest.approx(float(ap_out), rel=1e-12)
    assert metrics.fpr_at_tpr(id_s, ood_s, tpr, positive="id") == float(fpr_id)
    assert metrics.fpr_at_tpr(id_s, ood_s, tpr, positive="ood") == float(fpr_ood)
    assert metrics.detection_error(id_s, ood_s) == float(de)  # exact: integer numerators
    assert metrics.detection_error(id_s, ood_s, tpr=tpr) == float(de_at)


# ---- hand-derived cases ----

def test_all_scores_equal():
    id_s, ood_s = [2.5] * 3, [2.5] * 5
    # every pair ties and counts 1/2
    assert metrics.auroc(id_s, ood_s) == 0.5
    # one tie group: recall jumps 0 -> 1 at precision n / (n + m)
    assert metrics.aupr_in(id_s, ood_s) == pytest.approx(3 / 8, rel=1e-15)
    assert metrics.aupr_out(id_s, ood_s) == pytest.approx(5 / 8, rel=1e-15)
    # the only threshold reaching any TPR > 0 accepts (flags) everything
    for t in (0.01, 0.95, 1.0):
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="id") == 1.0
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="ood") == 1.0
    # accept nothing: 0.5 * 1 + 0.5 * 0; accept all: 0.5 * 0 + 0.5 * 1
    assert metrics.detection_error(id_s, ood_s) == 0.5


def test_hand_built_ties():
    id_s, ood_s = [3, 2, 2, 1], [2, 1, 0]
    # pairs (n m = 12): id 3 beats all 3; each id 2 beats {1, 0} and ties {2}: 2.5, twice;
    # id 1 beats {0} and ties {1}: 1.5. U = 3 + 5 + 1.5 = 9.5 -> 19/24
    assert metrics.auroc(id_s, ood_s) == 19 / 24
    # descending groups (ID, OOD): 3:(1,0) 2:(2,1) 1:(1,1) 0:(0,1); TP = 1,3,4,4; FP = 0,1,2,3
    # AP_in = (1/4)(1 * 1/1 + 2 * 3/4 + 1 * 4/6) = 19/24
    assert metrics.aupr_in(id_s, ood_s) == pytest.approx(19 / 24, rel=1e-15)
    # ascending groups (OOD, ID): 0:(1,0) 1:(1,1) 2:(1,2) 3:(0,1); TP = 1,2,3,3; FP = 0,1,3,4
    # AP_out = (1/3)(1/1 + 2/3 + 3/6) = 13/18
    assert metrics.aupr_out(id_s, ood_s) == pytest.approx(13 / 18, rel=1e-15)
    # positive="id": TPR = 1/4, 3/4, 1, 1 at t = 3, 2, 1, 0; FPR = 0, 1/3, 2/3, 1
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.5) == 1 / 3
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.75) == 1 / 3  # TPR lands exactly on the target
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.8) == 2 / 3
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.95) == 2 / 3
    # positive="ood": TPR_ood = 1/3, 2/3, 1 at t = 0, 1, 2; ID flagged = 0, 1/4, 3/4
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.5, positive="ood") == 1 / 4
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.95, positive="ood") == 3 / 4
    # P_e at t = inf, 3, 2, 1, 0: 1/2, 3/8, 1/8 + 1/6 = 7/24, 1/3, 1/2
    assert metrics.detection_error(id_s, ood_s) == pytest.approx(7 / 24, rel=1e-15)
    # at the TPR-95 point (t = 1, TPR 1, FPR 2/3): 0 + 1/3
    assert metrics.detection_error(id_s, ood_s, tpr=0.95) == pytest.approx(1 / 3, rel=1e-15)


def test_collinear_tie_groups_keep_every_point():
    # three groups of one ID + one OOD: ROC points (0,0), (1/3,1/3), (2/3,2/3), (1,1).
    # The first with TPR >= 0.5 is (2/3, 2/3); sklearn's default drop_intermediate would
    # drop the middle points (equal steps) and give 1.0, which the docstring warns about.
    id_s = ood_s = [3.0, 2.0, 1.0]
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.5, positive="id") == 2 / 3
    assert metrics.fpr_at_tpr(id_s, ood_s, 0.5, positive="ood") == 2 / 3


def test_perfect_separation():
    id_s, ood_s = [5.0, 6.0, 7.0], [1.0, 2.0]
    assert metrics.auroc(id_s, ood_s) == 1.0
    assert metrics.aupr_in(id_s, ood_s) == 1.0
    assert metrics.aupr_out(id_s, ood_s) == 1.0
    for t in (0.1, 0.95, 1.0):
        # no threshold reaching any TPR accepts an OOD score (resp. flags an ID score)
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="id") == 0.0
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="ood") == 0.0
    # the cut between 2 and 5 makes no error
    assert metrics.detection_error(id_s, ood_s) == 0.0
    assert metrics.detection_error(id_s, ood_s, tpr=0.95) == 0.0
    # tpr=0.1 stops at the first point, t = 7: TPR 1/3, FPR 0 -> P_e = 0.5 * 2/3
    assert metrics.detection_error(id_s, ood_s, tpr=0.1) == pytest.approx(1 / 3, rel=1e-15)


def test_reversed_separation():
    id_s, ood_s = [1.0, 2.0], [5.0, 6.0, 7.0]
    assert metrics.auroc(id_s, ood_s) == 0.0
    # ID ranked 4th and 5th: AP_in = (1/2)(1/4 + 2/5) = 13/40
    assert metrics.aupr_in(id_s, ood_s) == pytest.approx(13 / 40, rel=1e-15)
    # by -score, OOD ranked 3rd, 4th, 5th: AP_out = (1/3)(1/3 + 2/4 + 3/5) = 43/90
    assert metrics.aupr_out(id_s, ood_s) == pytest.approx(43 / 90, rel=1e-15)
    for t in (0.3, 0.95):
        # keeping even one ID keeps every OOD; catching even one OOD flags every ID
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="id") == 1.0
        assert metrics.fpr_at_tpr(id_s, ood_s, t, positive="ood") == 1.0
    # every non-trivial cut is worse than the trivial 0.5
    assert metrics.detection_error(id_s, ood_s) == 0.5


def test_single_samples_and_infinities():
    assert metrics.auroc([1.0], [1.0]) == 0.5
    assert metrics.auroc([1.0], [0.0]) == 1.0
    assert metrics.auroc([0.0], [1.0]) == 0.0
    # -0.0 and 0.0 are one score
    assert metrics.auroc([-0.0], [0.0]) == 0.5
    # inf ranks above everything: pairs (inf,1) 1, (inf,-inf) 1, (1,1) 1/2, (1,-inf) 1 -> 7/8
    assert metrics.auroc([math.inf, 1.0], [1.0, -math.inf]) == 7 / 8


def _every_metric(a, b, tprs=(0.3, 0.95, 1.0)):
    out = [metrics.auroc(a, b), metrics.aupr_in(a, b), metrics.aupr_out(a, b), metrics.detection_error(a, b)]
    for t in tprs:
        out += [metrics.fpr_at_tpr(a, b, t, "id"), metrics.fpr_at_tpr(a, b, t, "ood"),
                metrics.detection_error(a, b, tpr=t)]
    return out


@pytest.mark.parametrize("transform", [lambda x: 3 * x - 7, lambda x: x ** 3, lambda x: np.exp(x / 4)],
                         ids=["affine", "cube", "exp"])
def test_invariant_to_increasing_transforms(rng, transform):
    # integer scores in [-8, 8): the transforms keep them distinct and ordered, so every
    # count and therefore every result is identical, not just close
    x_id, x_ood = rng.integers(-6, 8, 60).astype(float), rng.integers(-8, 6, 45).astype(float)
    assert _every_metric(transform(x_id), transform(x_ood)) == _every_metric(x_id, x_ood)


def test_decreasing_transform_swaps_roles(rng):
    x_id, x_ood = rng.integers(0, 10, 80).astype(float), rng.integers(0, 8, 33).astype(float)
    assert metrics.auroc(-x_ood, -x_id) == metrics.auroc(x_id, x_ood)
    assert metrics.auroc(x_ood, x_id) == pytest.approx(1 - metrics.auroc(x_id, x_ood), abs=1e-15)
    assert metrics.aupr_out(x_id, x_ood) == pytest.approx(metrics.aupr_in(-x_ood, -x_id), rel=1e-13)
    for t in (0.2, 0.95, 1.0):
        assert metrics.fpr_at_tpr(x_id, x_ood, t, "ood") == metrics.fpr_at_tpr(-x_ood, -x_id, t, "id")


def test_float_fallback_beyond_int64(rng, monkeypatch):
    # n * m >= 2**62 cannot be allocated in a test; lower the limit to run the float64 path
    x_id, x_ood = rng.integers(0, 9, 300).astype(float), rng.integers(0, 7, 200).astype(float)
    exact = metrics.auroc(x_id, x_ood), metrics.detection_error(x_id, x_ood)
    monkeypatch.setattr(metrics, "_EXACT_LIMIT", 0)
    assert metrics.auroc(x_id, x_ood) == pytest.approx(exact[0], rel=1e-14)
    assert metrics.detection_error(x_id, x_ood) == pytest.approx(exact[1], rel=1e-14)


def test_inputs_are_not_modified(rng):
    x_id, x_ood = rng.normal(size=100), torch.randn(50, dtype=torch.float64)
    id_copy, ood_copy = x_id.copy(), x_ood.clone()
    for f in ALL:
        f(x_id, x_ood)
    np.testing.assert_array_equal(x_id, id_copy)
    assert torch.equal(x_ood, ood_copy)


def test_tensor_with_grad_and_return_type():
    a = torch.tensor([3.0, 1.0], requires_grad=True)
    for f in ALL:
        assert type(f(a, torch.tensor([2.0]))) is float


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors(rng):
    x_id, x_ood = rng.integers(0, 9, 500), rng.integers(0, 7, 300)
    on_gpu = [torch.tensor(x, dtype=torch.float32, device="cuda") for x in (x_id, x_ood)]
    assert _every_metric(*on_gpu) == _every_metric(x_id.astype(float), x_ood.astype(float))


# ---- bad input ----

@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_bad_scores(f):
    good = np.array([1.0, 2.0])
    for empty in ([], np.array([]), torch.empty(0)):
        with pytest.raises(ValueError, match="id_scores is empty"):
            f(empty, good)
        with pytest.raises(ValueError, match="ood_scores is empty"):
            f(good, empty)
    with pytest.raises(ValueError, match="id_scores contains NaN"):
        f(np.array([1.0, np.nan]), good)
    with pytest.raises(ValueError, match="ood_scores contains NaN"):
        f(good, torch.tensor([float("nan")], dtype=torch.bfloat16))
    for not_1d in (np.ones((2, 2)), torch.ones(3, 1), np.float64(1.0), torch.tensor(1.0)):
        with pytest.raises(ValueError, match="id_scores must be 1-D"):
            f(not_1d, good)
        with pytest.raises(ValueError, match="ood_scores must be 1-D"):
            f(good, not_1d)
    for wrong_type in (torch.tensor([True, False]), np.array([1j]), np.array(["a"])):
        with pytest.raises(TypeError, match="ood_scores must have a real"):
            f(good, wrong_type)


@pytest.mark.parametrize("f", [metrics.fpr_at_tpr, metrics.detection_error], ids=lambda f: f.__name__)
def test_bad_tpr(f):
    a, b = [1.0, 2.0], [0.0]
    for bad in (0, 0.0, -0.5, 1.0000001, 2, math.nan, math.inf):
        with pytest.raises(ValueError, match="tpr must be in"):
            f(a, b, tpr=bad)
    for bad in ("0.95", True, [0.95]):
        with pytest.raises(TypeError, match="tpr must be a real number"):
            f(a, b, tpr=bad)
    assert f(a, b, tpr=1) == f(a, b, tpr=1.0)  # an int 1 is a valid level


def test_bad_positive():
    for bad in ("OOD", "in", "", None, 1):
        with pytest.raises(ValueError, match="positive must be one of"):
            metrics.fpr_at_tpr([1.0], [0.0], positive=bad)
