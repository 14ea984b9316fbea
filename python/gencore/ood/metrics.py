"""Evaluation metrics for OOD detectors: AUROC, AUPR-In/Out, FPR at a TPR, detection error.

Convention (every gencore detector): a score is HIGHER for MORE in-distribution
samples. ``id_scores`` [n] are the scores of in-distribution (ID) samples,
``ood_scores`` [m] those of out-of-distribution (OOD) samples. With ID as the
positive class a threshold t *accepts* a sample when ``score >= t``; with OOD
as the positive class (aupr_out, fpr_at_tpr(positive="ood")) t *flags* a
sample when ``score <= t``. Either way a sample whose score equals t lands on
the positive side. With every threshold taken at the distinct pooled scores
u_1 > u_2 > ... > u_K, the ID-positive ROC curve is the K+1 points

    TPR(u_k) = #{id >= u_k} / n,   FPR(u_k) = #{ood >= u_k} / m,   and (0, 0),

which are the points of ``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)``
with y = 1 for ID. Ties are handled by grouping equal scores (a group enters
the curve all at once), never by sample order.

Inputs: 1-D torch tensors (any device, any float or integer dtype; gradients
are not tracked), numpy arrays or sequences of numbers. Every metric runs on
the float64 values on the host: float16/bfloat16/float32 convert to float64
exactly, so ties are kept. ``+inf``/``-inf`` scores are allowed (they sort
like any score); NaN is refused. Results are Python floats.

Cost: O((n + m) log(n + m)): one vectorized sort per class, one O(n + m)
merge of the two sorted runs, then O(n + m) passes, single-threaded: 0.3-0.8 s
for 10^7 float64 scores on a shared 2-core machine (sklearn's roc_auc_score:
about 5 s). Peak extra memory: about four 8-byte arrays of n + m elements
(fewer when scores tie), plus float64 copies of inputs that are not float64
numpy arrays or CPU tensors.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "detection_error"]

POSITIVES = ("id", "ood")
# Counts are combined in int64 (exact) while n * m stays below this; 2 n m < 2**63.
_EXACT_LIMIT = 2 ** 62


def _scores(x, name: str) -> np.ndarray:
    """x as a 1-D float64 numpy array; refuses what the metrics cannot rank."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must have a real floating or integer dtype, got "
                            f"{str(x.dtype).replace('torch.', '')}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
        arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must have a real floating or integer dtype, got {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; every metric needs at least one ID and one OOD score")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; scores must be numbers (+-inf is allowed)")
    return arr


def _tpr(tpr) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real):
        raise TypeError(f"tpr must be a real number in (0, 1], got {type(tpr).__name__}")
    t = float(tpr)
    if not 0.0 < t <= 1.0:  # also refuses NaN
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    return t


def _positive(positive) -> str:
    if not isinstance(positive, str) or positive not in POSITIVES:
        raise ValueError(f"positive must be one of {POSITIVES}, got {positive!r}")
    return positive


def _cumulative(id_scores, ood_scores) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative counts at the distinct pooled scores, ascending.

    Returns (le_id [K+1], le_ood [K+1], n, m) with u_1 < ... < u_K the distinct
    pooled scores, le_id[0] = le_ood[0] = 0 and for k >= 1
    le_id[k] = #{id <= u_k}, le_ood[k] = #{ood <= u_k}. Every ROC/PR point is a
    function of one index k, so each metric is one vectorized pass over these.
    """
    x_id = _scores(id_scores, "id_scores")
    x_ood = _scores(ood_scores, "ood_scores")
    n, m = x_id.size, x_ood.size
    # Sort each class (fast vectorized sorts), then merge the two ascending runs
    # with a stable argsort: timsort detects the runs and merges them in O(n + m).
    # Index < n marks an ID score. (One argsort of unsorted pooled scores is
    # ~10x slower.) np.sort copies, so the caller's arrays are never reordered.
    both = np.concatenate((np.sort(x_id), np.sort(x_ood)))  # [n + m], two sorted runs
    order = np.argsort(both, kind="stable")                 # [n + m]
    pooled = both[order]                                    # [n + m] ascending
    del both
    is_id = order < n
    del order
    # last index of each run of equal values (-0.0 == 0.0 is one run, as in sklearn)
    run_end = np.empty(n + m, dtype=bool)
    np.not_equal(pooled[1:], pooled[:-1], out=run_end[:-1])
    run_end[-1] = True
    del pooled
    last = np.flatnonzero(run_end)                          # [K]
    del run_end
    le_id = np.zeros(last.size + 1, dtype=np.int64)
    np.take(np.cumsum(is_id, dtype=np.int64), last, out=le_id[1:])  # #{id <= u_k}
    del is_id
    le_ood = np.zeros_like(le_id)
    np.add(last, 1, out=le_ood[1:])                         # #{pooled <= u_k}, for now
    le_ood -= le_id
    return le_id, le_ood, n, m


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve for telling ID (higher scores) from OOD.

    Args:
        id_scores: [n] scores of ID samples (higher = more in-distribution).
        ood_scores: [m] scores of OOD samples.

    Returns:
        float in [0, 1]: 1 when every ID score exceeds every OOD score, 0 when
        the order is reversed, 0.5 when all scores are equal.

    The trapezoidal area under the ROC curve of the module docstring, which is
    the Mann-Whitney U statistic over all pairs with ties counted 1/2:

        AUROC = (1 / (n m)) * sum_{i, j} ( [id_i > ood_j] + 0.5 [id_i == ood_j] ).

    Exact: 2 U is accumulated in int64 (while n m < 2**62), so the result is
    the correctly rounded float64 of the rational 2U / (2nm). Equals
    ``sklearn.metrics.roc_auc_score(y, s)`` with y = 1 for ID.
    """
    le_id, le_ood, n, m = _cumulative(id_scores, ood_scores)
    # each ID score at u_k beats #{ood < u_k} and ties #{ood == u_k}:
    # 2 * (#{ood < u_k} + #{ood == u_k} / 2) = le_ood[k-1] + le_ood[k]
    twice_beaten = le_ood[:-1] + le_ood[1:]  # [K]
    ci = np.diff(le_id)                      # [K] ID scores equal to u_k
    if n * m < _EXACT_LIMIT:
        twice_u = int(np.dot(ci, twice_beaten))
    else:  # beyond int64: float64 (relative error ~1e-16 per term)
        twice_u = float(np.dot(ci.astype(np.float64), twice_beaten.astype(np.float64)))
    return twice_u / (2 * n * m)


def _average_precision(le_pos: np.ndarray, precision: np.ndarray, n_pos: int) -> float:
    # AP = sum_k (R_k - R_{k-1}) P_k with R_k - R_{k-1} = (positives equal to u_k) / n_pos;
    # float64 difference so that dot() does not cast a copy
    new_pos = np.subtract(le_pos[1:], le_pos[:-1], dtype=np.float64)  # [K]
    return float(np.dot(new_pos, precision)) / n_pos


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class, ranking by score descending.

    Args:
        id_scores: [n] scores of ID samples (higher = more in-distribution).
        ood_scores: [m] scores of OOD samples.

    Returns:
        float in (0, 1]; n / (n + m) when all scores are equal.

    With thresholds at the distinct scores u_1 > ... > u_K,
    TP_k = #{id >= u_k}, FP_k = #{ood >= u_k}, recall R_k = TP_k / n (R_0 = 0)
    and precision P_k = TP_k / (TP_k + FP_k):

        AUPR-In = sum_k (R_k - R_{k-1}) P_k,

    the step-wise (non-interpolated) area of
    ``sklearn.metrics.average_precision_score(y, s)`` with y = 1 for ID; equal
    scores form one step. Not the trapezoidal ``auc(recall, precision)`` that
    OpenOOD reports, which is slightly optimistic on coarse curves.
    """
    le_id, le_ood, n, m = _cumulative(id_scores, ood_scores)
    precision = np.subtract(n, le_id[:-1], dtype=np.float64)  # [K] TP_k = #{id >= u_k}
    accepted = le_id[:-1] + le_ood[:-1]                         # [K] #{pooled < u_k}
    np.subtract(n + m, accepted, out=accepted)                  # TP_k + FP_k = #{pooled >= u_k}
    precision /= accepted
    del accepted
    return _average_precision(le_id, precision, n)


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class, ranking by -score.

    Args:
        id_scores: [n] scores of ID samples (higher = more in-distribution).
        ood_scores: [m] scores of OOD samples.

    Returns:
        float in (0, 1]; m / (n + m) when all scores are equal.

    A sample is flagged OOD at threshold u when score <= u. With the distinct
    scores ascending u_1 < ... < u_K, TP_k = #{ood <= u_k}, FP_k = #{id <= u_k},
    R_k = TP_k / m (R_0 = 0), P_k = TP_k / (TP_k + FP_k):

        AUPR-Out = sum_k (R_k - R_{k-1}) P_k
                 = sklearn.metrics.average_precision_score(y_ood, -s).

    Identity: aupr_out(id, ood) == aupr_in(-ood, -id).
    """
    le_id, le_ood, n, m = _cumulative(id_scores, ood_scores)
    precision = le_ood[1:].astype(np.float64)  # [K] TP_k = #{ood <= u_k}
    precision /= le_id[1:] + le_ood[1:]        # TP_k + FP_k = #{pooled <= u_k}
    return _average_precision(le_ood, precision, m)


def _id_operating_point(le_id, n, tpr: float) -> int:
    """Index k of the first ID-positive ROC point with TPR >= tpr: the threshold is
    u_{k+1}, the largest distinct score with TPR = #{id >= u} / n >= tpr; then
    #{id < u} = le_id[k] and #{ood < u} = le_ood[k]."""
    tpr_k = (n - le_id[:-1]) / n                 # [K] TPR(u_k), u_k ascending: nonincreasing
    return int(np.count_nonzero(tpr_k >= tpr)) - 1  # >= 0 as TPR(u_1) = 1 >= tpr


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95, positive: str = "id") -> float:
    """False positive rate at the first ROC point whose true positive rate is >= ``tpr``.

    Args:
        id_scores: [n] scores of ID samples (higher = more in-distribution).
        ood_scores: [m] scores of OOD samples.
        tpr: target true positive rate in (0, 1]; default 0.95 ("FPR95").
        positive: which class is "positive", i.e. what the TPR counts:

          * ``"id"`` (kNN, Sun et al. 2022; Mahalanobis, Lee et al. 2018): ID is
            positive and accepted when score >= t. Among the distinct scores,
            t* is the LARGEST threshold with TPR(t*) >= tpr, and the result is
            the fraction of OOD samples accepted:

                TPR(t) = #{id >= t} / n,   t* = max{ u : TPR(u) >= tpr },
                FPR95  = #{ood >= t*} / m.

          * ``"ood"`` (OpenOOD v1.5): OOD is positive and flagged when
            score <= t. t* is the SMALLEST threshold with TPR_ood(t*) >= tpr,
            and the result is the fraction of ID samples wrongly flagged:

                TPR_ood(t) = #{ood <= t} / m,   t* = min{ u : TPR_ood(u) >= tpr },
                FPR95      = #{id <= t*} / n.

    Returns:
        float in [0, 1].

    Both pick the first point, in the order of its own ROC curve, whose TPR is
    >= tpr, with no interpolation between points: ``fpr[argmax(tpr_curve >= tpr)]``
    for ``sklearn.metrics.roc_curve(drop_intermediate=False)`` on (y_id, s)
    resp. (y_ood, -s). TPR is the float64 quotient count / size, compared with
    tpr as a float (as in sklearn). Ties: samples equal to t* count as
    accepted ("id") resp. flagged ("ood"), so a tie group straddling the target
    enters whole; the achieved TPR can exceed tpr. The two conventions differ
    in general, also without ties: "id" fixes the share of ID samples kept and
    reports the OOD leakage, "ood" fixes the share of OOD samples caught and
    reports the ID false alarms. Identity:
    fpr_at_tpr(id, ood, positive="ood") == fpr_at_tpr(-ood, -id, positive="id").

    Reference-code differences: OpenOOD calls ``roc_curve`` with the default
    drop_intermediate=True, which can drop the chosen point inside a collinear
    run of identical tie groups and then report a larger FPR. The get_curve/
    cal_metric code of the kNN and Mahalanobis line of work takes
    t = sorted(id)[round(0.05 n)] (tpr = 0.95 only) and counts OOD with
    score > t; it agrees with "id" when 0.05 n is an integer and no score ties t.
    """
    t = _tpr(tpr)
    positive = _positive(positive)
    le_id, le_ood, n, m = _cumulative(id_scores, ood_scores)
    if positive == "id":
        k = _id_operating_point(le_id, n, t)
        return (m - int(le_ood[k])) / m
    tpr_k = le_ood[1:] / m                      # [K] TPR_ood(u_k), u_k ascending, nondecreasing
    k = int(np.count_nonzero(tpr_k < t))        # smallest u_k with TPR_ood >= tpr; TPR_ood(u_K) = 1
    return int(le_id[k + 1]) / n


def detection_error(id_scores, ood_scores, tpr: Optional[float] = None) -> float:
    """Detection error: misclassification rate with equal class priors.

    Args:
        id_scores: [n] scores of ID samples (higher = more in-distribution).
        ood_scores: [m] scores of OOD samples.
        tpr: None (default) for the minimum over all thresholds; a number in
            (0, 1] for the error at the ``fpr_at_tpr(..., tpr, positive="id")``
            operating point.

    Returns:
        float in [0, 0.5] for the minimum; in [0, 1] at a fixed TPR.

    With ID accepted when score >= t, TPR(t) = #{id >= t} / n and
    FPR(t) = #{ood >= t} / m:

        P_e(t) = 0.5 (1 - TPR(t)) + 0.5 FPR(t),
        detection error = min_t P_e(t)

    over every cut of the sorted scores, including accepting nothing or
    everything (both give 0.5). This is the metric in the code of ODIN (Liang
    et al. 2018, "calculate the minimum detection error", there on a grid of
    thresholds) and Lee et al. 2018, whose detection accuracy is
    1 - min_t P_e(t). The ODIN paper's text evaluates P_e at the TPR = 95%
    threshold instead; pass tpr=0.95 for that (the achieved TPR, which can
    exceed tpr, enters the formula). The "DTERR" of the kNN/Mahalanobis
    cal_metric code weights errors by sample counts, (FN + FP) / (n + m), which equals the
    default when n == m.
    """
    t = None if tpr is None else _tpr(tpr)
    le_id, le_ood, n, m = _cumulative(id_scores, ood_scores)
    # A cut rejecting the j lowest distinct scores has 1 - TPR = le_id[j] / n and
    # FPR = (m - le_ood[j]) / m, so 2 n m P_e = m le_id[j] - n le_ood[j] + n m:
    # integers, so the result is the correctly rounded float64 of a rational.
    if t is not None:
        k = _id_operating_point(le_id, n, t)
        return (m * int(le_id[k]) - n * int(le_ood[k]) + n * m) / (2 * n * m)
    if n * m < _EXACT_LIMIT:
        scaled = le_id * m   # [K+1]
        scaled -= le_ood * n
        return (int(scaled.min()) + n * m) / (2 * n * m)
    errors = 0.5 * (le_id / n) + 0.5 * (1.0 - le_ood / m)  # beyond int64: float64
    return float(errors.min())
