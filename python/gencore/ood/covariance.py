"""Mergeable float64 class statistics, covariance estimators and precision factors.

The Gaussian detectors (Lee et al. 2018, "A simple unified framework for
detecting out-of-distribution samples and adversarial attacks"; Ren et al.
2021, "A simple fix to Mahalanobis distance for improving near-OOD
detection") need class means, the tied within-class covariance and the
covariance of all data. ``ClassStatistics`` holds them as sufficient
statistics that stream (``update``) and merge across workers (``merge``);
estimators turn ``Moments`` into a covariance, and ``precision_factor``
turns a covariance into the factor L (Σ^-1 = L Lᵀ) the Mahalanobis op takes.

Why central moments: the statistics are kept about the running class means
and merged with the pairwise update of Chan, Golub & LeVeque (1979), so no
step subtracts two large sums (the fixed-shift alternative loses digits when
class means are far from the shift, which is the usual case for features
that separate classes well).

The statistics are float64 whatever the feature dtype. Float32 (and fp16 /
bf16) rows are never copied to float64: each batch is centred in float32 by
its class means and its scatter is a float32 GEMM per block of rows, added
into float64 (see ``ClassStatistics.update`` for the accuracy this gives).
Float64 rows are processed in float64 throughout.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = [
    "ClassStatistics", "Moments", "ESTIMATORS", "FOURTH_MOMENT_ESTIMATORS", "estimate", "mle", "ridge", "shrunk",
    "ledoit_wolf", "ledoit_wolf_shrinkage", "oas", "oas_shrinkage", "precision_factor",
]

ESTIMATORS = ("mle", "ridge", "shrunk", "ledoit_wolf", "oas")
#: the estimators that read the fourth moment Σ ||r||^4 (only Ledoit–Wolf)
FOURTH_MOMENT_ESTIMATORS = ("ledoit_wolf",)
_F64 = torch.float64
_I64 = torch.int64

# Rows per block of the float32 scatter GEMM: a float32 dot product over K
# rows has a rounding error of at most ~K eps32 relative, ~sqrt(K) eps32 when
# roundings are random, so 4096 rows keep each block's scatter within 5e-4
# (typically 8e-6) of exact before it is added into float64, while the GEMM
# stays large enough to run at full speed (measured: as fast as 16384 rows).
_BLOCK_ROWS = 4096
# Column panel of the scatter GEMM: only the panels on and above the diagonal
# are computed (the scatter is symmetric), 5/8 of the full product for 4 panels.
_PANEL = 128


@dataclass(frozen=True)
class Moments:
    """What a covariance estimator needs from n centred samples r_i (float64).

    Attributes:
        n: number of samples.
        covariance: [D, D] maximum-likelihood covariance (1/n) Σ r_i r_iᵀ.
        fourth: Σ_i ||r_i||^4, the fourth-moment term of Ledoit–Wolf; None
            when the statistics were built without fourth moments.
    """

    n: int
    covariance: torch.Tensor
    fourth: Optional[float]


# ------------------------------------------------------------------ helpers

def _shift_higher_moments(n, sq, third, fourth, e, ce, s=None):
    """Second, third and fourth moments of groups whose rows r move to r + e.

    For a group of n rows r about its current centre, with s = Σ r (0 when
    the centre is the group mean), C = Σ r rᵀ, q = Σ ||r||^2, t = Σ ||r||^2 r
    and f = Σ ||r||^4, the same moments of r + e are
        q' = q + 2 sᵀe + n ||e||^2
        t' = t + q e + 2 C e + 2 (sᵀe) e + ||e||^2 s + n ||e||^2 e
        f' = f + 4 eᵀt + 4 eᵀC e + 2 ||e||^2 q + 4 ||e||^2 sᵀe + n ||e||^4.
    Batched over groups: n, sq, fourth [G]; third, e, ce (= C e), s [G, D].
    Returns (q', t', f').
    """
    ee = (e * e).sum(-1)
    new_sq = sq + n * ee
    new_third = third + sq[:, None] * e + 2 * ce + (n * ee)[:, None] * e
    new_fourth = fourth + 4 * (e * third).sum(-1) + 4 * (e * ce).sum(-1) + 2 * ee * sq + n * ee * ee
    if s is not None:
        se = (s * e).sum(-1)
        new_sq = new_sq + 2 * se
        new_third = new_third + 2 * se[:, None] * e + ee[:, None] * s
        new_fourth = new_fourth + 4 * ee * se
    return new_sq, new_third, new_fourth


def _add_scatter(acc: torch.Tensor, r: torch.Tensor) -> None:
    """acc[D, D] (float64, upper triangle by panels) += rᵀ r for rows r [b, D].

    The product runs in r's dtype (float32 GEMM for float32 rows) and only the
    column panels on or above the diagonal are formed; ``_symmetric`` fills the
    lower triangle at the end.
    """
    d = r.shape[1]
    if d <= 2 * _PANEL:
        acc += r.T @ r
        return
    for start in range(0, d, _PANEL):
        stop = min(start + _PANEL, d)
        acc[start:stop, start:] += r[:, start:stop].T @ r[:, start:]


def _symmetric(acc: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (and diagonal) is acc's."""
    d = acc.shape[0]
    if d <= 2 * _PANEL:
        return (acc + acc.T) / 2
    upper = torch.triu(acc)
    return upper + torch.triu(upper, 1).T


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀ b for a = w b (w per row): symmetric in exact arithmetic, made exactly symmetric here."""
    g = a.T @ b
    return (g + g.T) / 2


def _first_bad_row(x: torch.Tensor) -> Optional[int]:
    """Index of the first row of x with NaN/inf, or None (one full scan: the slow path)."""
    bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def refuse_non_finite(x: torch.Tensor, name: str) -> bool:
    """Raises ValueError naming ``name`` and the first bad row if x holds NaN/inf.

    Called only once a cheap accumulator (column sums, a scatter diagonal, row
    norms) came out non-finite. Returns False when x is finite after all, i.e.
    the accumulator overflowed on finite values; the caller then decides.
    """
    row = _first_bad_row(x)
    if row is not None:
        raise ValueError(f"{name} contains NaN or inf (row {row}); inputs must be finite")
    return False


def check_integer_labels(labels, n: int, name: str = "labels") -> torch.Tensor:
    """labels must be an integer tensor of shape [n]; returns it."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {str(labels.dtype).replace('torch.', '')}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be [N] with N={n} (rows of features), got shape {tuple(labels.shape)}")
    return labels


# ------------------------------------------------------------------ statistics

class ClassStatistics:
    """Sufficient statistics of labelled features, in float64, that stream and merge.

    Classes are label values. Without ``num_classes`` they are the sorted
    unique values of every label seen (as scikit-learn's ``classes_``): any
    integers, e.g. {0, 2} or {3, 3_000_000} are two classes, and a new value
    in a later ``update`` adds a class in sorted position. Negative values
    are ordinary classes (pytorch-ood drops labels < 0 as OOD; filter them
    out first if that is what they mean). With ``num_classes=C`` the classes
    are 0 .. C-1 and any other label is refused before anything is computed.

    Stored (C classes, D features; all float64 except ``classes``, ``counts``):

    * ``classes`` [C] int64 (ascending), ``counts`` [C] int64, ``means``
      [C, D]: per-class label value, sample count and mean (with
      ``num_classes``, a class not seen yet has count 0 and mean 0);
    * ``within`` [D, D]: the pooled within-class scatter
      W = Σ_c Σ_{i in c} (x_i - μ_c)(x_i - μ_c)ᵀ;
    * only with ``fourth_moments=True`` (Ledoit–Wolf needs them):
      ``class_sq`` [C], ``class_third`` [C, D], ``class_fourth`` [C]:
      Σ ||r||^2, Σ ||r||^2 r and Σ ||r||^4 of the class residuals r = x - μ_c;
      ``total_third`` [D], ``total_fourth`` []: the same about the mean of all data.

    The scatter of all data (ignoring labels) needs no storage of its own:
    by the law of total variance it is W + Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ.

    Fourth moments: Ledoit–Wolf's shrinkage needs Σ ||r||^4 about the final
    means. Re-centring a group's fourth moment to a new mean needs its own
    scatter in the direction of the mean shift (``_shift_higher_moments``).
    For all data that scatter is known exactly. Per class only the pooled W
    is kept (a [C, D, D] tensor would be 32 GB for 1000 classes of 2048
    features), so the running side of a merge approximates each class's
    scatter by W scaled to the class's own trace, C_c ≈ W tr(C_c) / tr(W)
    (exact when classes share one covariance, the model the tied detectors
    assume). ``update`` computes the batch side about the merged means
    directly from the rows (one extra pass), so only the running side, whose
    mean moves by O(batch / n), is approximated. A one-batch fit is exact;
    streamed fits agree with it to ~1/(n D) relative in Σ ||r||^4. The first-
    and second-order statistics, and hence the MLE, ridge, shrunk and OAS
    covariances, are exact either way.

    Args:
        num_classes: fixed number of classes C (labels 0 .. C-1), or None
            to take the label values seen (see above).
        fourth_moments: keep the higher moments Ledoit–Wolf needs (default
            False: the other estimators do not read them, and they cost one
            more pass over each batch).
    """

    def __init__(self, num_classes: Optional[int] = None, *, fourth_moments: bool = False):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.fourth_moments = bool(fourth_moments)
        self.counts: Optional[torch.Tensor] = None  # None until the first update sets D and the device

    # --- state ---------------------------------------------------------------

    _BASE_FIELDS = ("classes", "counts", "means", "within")
    _FOURTH_FIELDS = ("class_sq", "class_third", "class_fourth", "total_third", "total_fourth")

    @property
    def _fields(self) -> tuple[str, ...]:
        return self._BASE_FIELDS + (self._FOURTH_FIELDS if self.fourth_moments else ())

    @property
    def num_features(self) -> Optional[int]:
        return None if self.counts is None else self.means.shape[1]

    @property
    def n(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())

    def _init(self, classes: torch.Tensor, num_features: int, device) -> None:
        def z(*shape):
            return torch.zeros(shape, dtype=_F64, device=device)

        c, d = classes.shape[0], num_features
        self.classes = classes.to(device=device, dtype=_I64)
        self.counts = torch.zeros(c, dtype=_I64, device=device)
        self.means, self.within = z(c, d), z(d, d)
        if self.fourth_moments:
            self.class_sq, self.class_third, self.class_fourth = z(c), z(c, d), z(c)
            self.total_third, self.total_fourth = z(d), z()

    def _realign(self, classes: torch.Tensor) -> None:
        """Re-lays the per-class fields out for ``classes`` (a sorted superset of the current ones)."""
        if classes.shape[0] == self.classes.shape[0]:
            return
        where = torch.searchsorted(classes, self.classes)
        for name in ("counts", "means") + (("class_sq", "class_third", "class_fourth")
                                           if self.fourth_moments else ()):
            t = getattr(self, name)
            grown = t.new_zeros((classes.shape[0],) + t.shape[1:])
            grown[where] = t
            setattr(self, name, grown)
        self.classes = classes

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as plain tensors (empty dict before the first update)."""
        if self.counts is None:
            return {}
        return {name: getattr(self, name).clone() for name in self._fields}

    def load_state_dict(self, state: dict[str, torch.Tensor], *, field_prefix: str = "") -> "ClassStatistics":
        """Restores ``state_dict()`` output, refusing a state these statistics cannot hold.

        Raises ValueError naming the field when a field is missing or extra
        (e.g. fourth moments saved by a Ledoit–Wolf fit into statistics
        without them), has the wrong dtype or shape, or the classes do not
        match ``num_classes``; the statistics are unchanged then.
        ``field_prefix`` is prepended to field names in those messages (the
        detectors keep the statistics under "fit.").
        """
        def field(name):
            return f"state['{field_prefix}{name}']"

        if not state:
            self.counts = None
            return self
        expected, given = set(self._fields), set(state)
        if given - expected:
            extra = [field(k) for k in sorted(given - expected)]
            hint = (" (fourth moments: saved with fourth_moments=True, i.e. estimator='ledoit_wolf')"
                    if given & set(self._FOURTH_FIELDS) else "")
            raise ValueError(f"{', '.join(extra)}: fields these statistics do not keep{hint}")
        if expected - given:
            missing = [field(k) for k in sorted(expected - given)]
            hint = (" (fourth moments: these statistics keep them for estimator='ledoit_wolf')"
                    if (expected - given) & set(self._FOURTH_FIELDS) else "")
            raise ValueError(f"state is missing {', '.join(missing)}{hint}")
        means = state["means"]
        if not isinstance(means, torch.Tensor) or means.dim() != 2:
            raise ValueError(f"{field('means')} must be a [C, D] tensor, got {getattr(means, 'shape', means)!r}")
        c, d = means.shape
        shapes = {"classes": (c,), "counts": (c,), "means": (c, d), "within": (d, d), "class_sq": (c,),
                  "class_third": (c, d), "class_fourth": (c,), "total_third": (d,), "total_fourth": ()}
        for name in self._fields:
            t = state[name]
            want = _I64 if name in ("classes", "counts") else _F64
            if not isinstance(t, torch.Tensor) or t.dtype != want:
                raise ValueError(f"{field(name)} must be a {str(want).replace('torch.', '')} tensor, "
                                 f"got {getattr(t, 'dtype', type(t).__name__)}")
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"{field(name)} must have shape {list(shapes[name])} (C={c} classes, "
                                 f"D={d} features, from {field('means')}), got {list(t.shape)}")
            if want == _F64 and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{field(name)} contains NaN or inf")
        classes = state["classes"]
        if c > 1 and not bool((classes[1:] > classes[:-1]).all()):
            raise ValueError(f"{field('classes')} must be strictly increasing label values")
        if bool((state["counts"] < 0).any()):
            raise ValueError(f"{field('counts')} must be >= 0")
        if self.num_classes is not None and not torch.equal(classes.cpu(), torch.arange(self.num_classes)):
            raise ValueError(f"{field('classes')} has {c} classes {self._show(classes)}, these statistics were "
                             f"built for num_classes={self.num_classes} (classes 0 .. {self.num_classes - 1})")
        for name in self._fields:
            setattr(self, name, state[name].clone())
        return self

    @staticmethod
    def _show(values: torch.Tensor, limit: int = 6) -> str:
        shown = values[:limit].tolist()
        return "[" + ", ".join(map(str, shown)) + (", ...]" if values.numel() > limit else "]")

    # --- accumulation ----------------------------------------------------------

    def _class_ids(self, labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes after this batch [C'] sorted, class position of each row [N]); validates first."""
        labels = labels.to(device)
        if self.num_classes is not None:
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                raise ValueError(f"labels must be in [0, num_classes={self.num_classes}), got a label {bad}")
            classes = (self.classes if self.counts is not None
                       else torch.arange(self.num_classes, dtype=_I64, device=device))
            return classes, labels.to(_I64)
        values, inverse = torch.unique(labels.to(_I64), sorted=True, return_inverse=True)
        if self.counts is None or (values.shape[0] <= self.classes.shape[0]
                                   and bool(torch.isin(values, self.classes).all())):
            classes = values if self.counts is None else self.classes
        else:
            classes = torch.unique(torch.cat([self.classes, values]), sorted=True)
        return classes, torch.searchsorted(classes, values)[inverse]

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "ClassStatistics":
        """Adds a batch: features [N, D] floating (float32 fast path), labels [N] integer.

        Labels are checked first (integer dtype, shape, range with
        ``num_classes``), before anything is allocated. NaN/inf in features
        raise ValueError naming the first bad row; they are found from the
        batch's [C, D] residual sums and the scatter diagonal (a NaN or inf
        anywhere reaches them), so finite data pay no extra pass. The running
        statistics are left unchanged when the batch is refused.

        Accuracy (float32, fp16, bf16 rows), against the same statistics of
        the same values computed in float64: class means are a float32
        centre plus the float64 mean of the float32 residuals about it, so
        they are within ~eps32 σ of the exact mean (σ the within-class
        spread, eps32 = 1.2e-7), whatever the offset of the data (tested at
        1e-5 σ with offsets 300 σ and 1e4 σ). The scatter is a float32 GEMM
        over blocks of 4096 centred rows added into float64: each entry W_ab
        is within 4096 eps32 ≈ 5e-4 of sqrt(W_aa W_bb) at worst and
        ~sqrt(4096) eps32 ≈ 8e-6 when roundings are random (tested at 2e-5
        for float32 normals; coarsely quantized rows such as bf16 features
        round coherently, tested at 2e-4). Float64 rows are exact to float64
        rounding. A batch whose float32 squares would overflow (|x| > 1e19)
        is redone in float64.

        Cost: one pass over the batch (centring, residual sums) besides the
        GEMM (5/8 of a full product for D > 256), two with
        ``fourth_moments``, plus a pass for the centres when a class new to
        the statistics has fewer than 8 rows in the batch's first 4096 (see
        ``_centre``). Extra memory: a [4096, D] buffer in the compute dtype
        plus [C, D] sums.
        """
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.dtype.is_floating_point:
            raise ValueError(f"features must be a floating [N, D] tensor, got "
                             f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)}")
        check_integer_labels(labels, features.shape[0])
        if features.shape[0] == 0:
            return self
        if self.counts is not None and features.shape[1] != self.num_features:
            raise ValueError(f"features have D={features.shape[1]}, the statistics have D={self.num_features}")
        classes, ids = self._class_ids(labels, features.device)
        x = features.detach()
        dtype = _F64 if x.dtype == _F64 else torch.float32
        batch = self._batch(x, ids, classes, dtype)
        if batch is None:  # float32 squares overflowed on finite data
            batch = self._batch(x, ids, classes, _F64)
        if self.counts is None:
            self._init(classes, x.shape[1], x.device)
        self._realign(classes)
        if self.fourth_moments:
            self._batch_higher_moments(batch, x, ids, dtype)
        return self._merge(batch, other_at_merged_means=self.fourth_moments)

    def _centre(self, x, ids, classes, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """([C, D] centre in ``dtype``, [C] batch counts).

        The centre only has to be near each class mean (``_batch`` measures
        and removes its offset δ exactly; the float32 GEMM's relative error
        grows by a factor 1 + |δ|²/σ²): the running mean of classes seen
        before, else the mean of the class's rows in the batch's first block
        of 4096 rows when it has at least 8 there (|δ| <= ~σ/sqrt(8)), else
        the mean of all its rows in the batch (one more pass).
        """
        c = classes.shape[0]
        counts_b = torch.bincount(ids, minlength=c)
        needed = counts_b > 0
        means_a = None
        if self.counts is not None:
            where = torch.searchsorted(classes, self.classes)
            counts_a = torch.zeros(c, dtype=_I64, device=x.device)
            counts_a[where] = self.counts
            means_a = torch.zeros((c, x.shape[1]), dtype=_F64, device=x.device)
            means_a[where] = self.means
            needed &= counts_a == 0
        head = min(x.shape[0], _BLOCK_ROWS)
        counts_head = torch.bincount(ids[:head], minlength=c)
        rows = head if bool((~needed | (counts_head >= torch.clamp(counts_b, max=8))).all()) else x.shape[0]
        count = counts_head if rows == head else counts_b
        if not bool(needed.any()):
            sums = None
        elif c == 1:
            sums = x[:rows].sum(0, keepdim=True, dtype=dtype)
        else:
            sums = torch.zeros((c, x.shape[1]), dtype=dtype, device=x.device)
            for start in range(0, rows, 4 * _BLOCK_ROWS):
                stop = min(rows, start + 4 * _BLOCK_ROWS)
                sums.index_add_(0, ids[start:stop], x[start:stop].to(dtype))
        centre = (torch.zeros((c, x.shape[1]), dtype=dtype, device=x.device) if sums is None
                  else sums / count.clamp_min(1).to(dtype)[:, None])
        if means_a is not None:
            centre = torch.where(needed[:, None], centre, means_a.to(dtype))
        # A non-finite centre comes from NaN/inf (or overflow) in x; the residual
        # sums below then carry it too, so no check is needed here.
        return centre, counts_b

    def _batch(self, x, ids, classes, dtype) -> Optional["ClassStatistics"]:
        """Counts, means and pooled scatter of one batch, laid out for ``classes``; None on float32 overflow."""
        n, d = x.shape
        c = classes.shape[0]
        centre, counts_b = self._centre(x, ids, classes, dtype)
        residual_sums = torch.zeros((c, d), dtype=dtype, device=x.device)
        scatter = torch.zeros((d, d), dtype=_F64, device=x.device)
        buf = torch.empty((min(n, _BLOCK_ROWS), d), dtype=dtype, device=x.device)
        for start in range(0, n, _BLOCK_ROWS):
            xb = x[start:start + _BLOCK_ROWS]
            r = buf[:xb.shape[0]]
            if c == 1:
                torch.sub(xb, centre[0], out=r)
                residual_sums[0] += r.sum(0)
            else:
                ib = ids[start:start + _BLOCK_ROWS]
                torch.index_select(centre, 0, ib, out=r)
                torch.sub(xb, r, out=r)
                residual_sums.index_add_(0, ib, r)
            _add_scatter(scatter, r)
        # One check of the small accumulators: a NaN/inf anywhere in x reaches
        # its class's residual sum (and the scatter diagonal).
        if not (bool(torch.isfinite(residual_sums).all()) and bool(torch.isfinite(scatter.diagonal()).all())):
            refuse_non_finite(x, "features")
            if dtype == _F64:
                raise ValueError("features overflow float64 in the scatter; scale them down")
            return None
        n_b = counts_b.to(_F64)
        delta = residual_sums.to(_F64) / n_b.clamp_min(1)[:, None]     # batch mean - centre
        batch = ClassStatistics(self.num_classes)
        batch.classes, batch.counts = classes, counts_b
        batch.means = centre.to(_F64) + delta
        # Scatter about the batch means: rᵀr about the centre minus n δ δᵀ per class.
        batch.within = _symmetric(scatter) - _gram(n_b[:, None] * delta, delta)
        return batch

    def _batch_higher_moments(self, batch, x, ids, dtype) -> None:
        """Third and fourth moments of the batch about the merged class and global means (one pass)."""
        n_a, n_b = self.counts.to(_F64), batch.counts.to(_F64)
        n = n_a + n_b
        merged = self.means + (n_b / n.clamp_min(1))[:, None] * (batch.means - self.means)
        merged_mean = (n @ merged) / n.sum()
        centre, g = merged.to(dtype), merged_mean.to(dtype)
        c, d = centre.shape
        q, f = torch.zeros(c, dtype=_F64, device=x.device), torch.zeros(c, dtype=_F64, device=x.device)
        t = torch.zeros((c, d), dtype=dtype, device=x.device)
        tq, tf = torch.zeros((), dtype=_F64, device=x.device), torch.zeros((), dtype=_F64, device=x.device)
        tt = torch.zeros(d, dtype=_F64, device=x.device)
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            xb, ib = x[start:start + _BLOCK_ROWS].to(dtype), ids[start:start + _BLOCK_ROWS]
            r = xb - centre[ib]
            r2 = (r * r).sum(1)
            r2d = r2.to(_F64)
            q += torch.bincount(ib, weights=r2d, minlength=c)
            f += torch.bincount(ib, weights=r2d * r2d, minlength=c)
            t.index_add_(0, ib, r * r2[:, None])
            u = xb - g
            u2 = (u * u).sum(1)
            u2d = u2.to(_F64)
            tq += u2d.sum()
            tf += (u2d * u2d).sum()
            tt += (u.T @ u2).to(_F64)
        # The centres are the merged means rounded to ``dtype``: re-centre the rows
        # the rest of the way, x - merged = r + e with e = rounded - exact (s = Σ r).
        e = centre.to(_F64) - merged
        s = n_b[:, None] * (batch.means - centre.to(_F64))
        ce = self._approx_scatter_times(batch.within, q, e) + s * ((s * e).sum(1) / n_b.clamp_min(1))[:, None]
        batch.class_sq, batch.class_third, batch.class_fourth = _shift_higher_moments(
            n_b, q, t.to(_F64), f, e, ce, s)
        e_t = g.to(_F64) - merged_mean
        s_t = n_b.sum() * (batch.mean() - g.to(_F64))
        ce_t = batch._total_scatter_times(e_t) + s_t * (s_t @ e_t) / n_b.sum()
        _, third, fourth = _shift_higher_moments(n_b.sum()[None], tq[None], tt[None], tf[None], e_t[None],
                                                 ce_t[None], s_t[None])
        batch.total_third, batch.total_fourth = third[0], fourth[0]

    def merge(self, other: "ClassStatistics") -> "ClassStatistics":
        """Adds another instance's statistics (same D; classes joined by label value). In place."""
        if not isinstance(other, ClassStatistics):
            raise TypeError(f"can only merge ClassStatistics, got {type(other).__name__}")
        if other.counts is None:
            return self
        if self.fourth_moments and not other.fourth_moments:
            raise ValueError("cannot merge statistics without fourth moments into statistics that keep them "
                             "(fourth_moments=True)")
        if self.counts is not None and other.num_features != self.num_features:
            raise ValueError(f"cannot merge statistics with D={other.num_features} into D={self.num_features}")
        if self.num_classes is not None and not bool(((other.classes >= 0)
                                                      & (other.classes < self.num_classes)).all()):
            raise ValueError(f"other has classes {self._show(other.classes)} outside "
                             f"num_classes={self.num_classes} (classes 0 .. {self.num_classes - 1})")
        if self.counts is None:
            classes = (other.classes if self.num_classes is None
                       else torch.arange(self.num_classes, dtype=_I64, device=other.means.device))
            self._init(classes, other.num_features, other.means.device)
        classes = torch.unique(torch.cat([self.classes, other.classes.to(self.classes.device)]), sorted=True)
        self._realign(classes)
        copy = ClassStatistics(fourth_moments=self.fourth_moments)
        copy.load_state_dict({k: v.to(self.means.device) for k, v in other.state_dict().items()
                              if k in self._fields})
        copy._realign(classes)
        return self._merge(copy)

    def _approx_scatter_times(self, within: torch.Tensor, class_sq: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """C_c e per class with C_c ≈ W tr(C_c) / tr(W) (see the class docstring): [C, D]."""
        tr = float(within.trace())
        if tr <= 0:
            return torch.zeros_like(e)
        return (class_sq / tr)[:, None] * (e @ within)

    def _total_scatter_times(self, e: torch.Tensor) -> torch.Tensor:
        """(total scatter) e for e [D]: W e + Σ_c n_c (μ_c - μ)((μ_c - μ)ᵀ e)."""
        dev = self.means - self.mean()
        return self.within @ e + dev.T @ (self.counts.to(_F64) * (dev @ e))

    def _merge(self, other: "ClassStatistics", other_at_merged_means: bool = False) -> "ClassStatistics":
        """Chan et al.'s merge of ``other`` (same class layout) into self.

        With ``other_at_merged_means`` the higher moments of ``other`` are
        already about the merged class and global means (``update`` computes
        them so) and are not shifted.
        """
        n_a, n_b = self.counts.to(_F64), other.counts.to(_F64)
        n = n_a + n_b
        w_b = n_b / n.clamp_min(1)                           # 0 where a class is in neither
        delta = other.means - self.means
        means = self.means + w_b[:, None] * delta
        if self.fourth_moments:
            self._merge_higher_moments(other, means, other_at_merged_means)
        # Chan et al.: pooled scatter grows by n_a n_b / n (μ_b - μ_a)(μ_b - μ_a)ᵀ per class.
        between = (n_a * w_b)[:, None] * delta
        self.within = self.within + other.within + _gram(between, delta)
        self.means, self.counts = means, self.counts + other.counts
        return self

    def _merge_higher_moments(self, other, means, other_at_merged_means: bool) -> None:
        n_a, n_b = self.counts.to(_F64), other.counts.to(_F64)
        tot_a, tot_b = float(n_a.sum()), float(n_b.sum())
        mu_a, mu_b = self.mean(), other.mean()
        mu = (tot_a * mu_a + tot_b * mu_b) / (tot_a + tot_b)
        e_a, e_b = self.means - means, other.means - means

        # Totals (all data, ignoring labels): exact re-centring.
        parts = []
        for stats, size, e, shift in ((self, tot_a, mu_a - mu, True),
                                      (other, tot_b, mu_b - mu, not other_at_merged_means)):
            if size == 0:
                continue
            if not shift:
                parts.append((stats.total_third, stats.total_fourth))
                continue
            _, third, fourth = _shift_higher_moments(
                torch.tensor([size], dtype=_F64, device=e.device), stats._total_sq()[None],
                stats.total_third[None], stats.total_fourth[None], e[None], stats._total_scatter_times(e)[None])
            parts.append((third[0], fourth[0]))

        ce_a = self._approx_scatter_times(self.within, self.class_sq, e_a)
        sq_a, third_a, fourth_a = _shift_higher_moments(n_a, self.class_sq, self.class_third, self.class_fourth,
                                                        e_a, ce_a)
        if other_at_merged_means:
            sq_b, third_b, fourth_b = other.class_sq, other.class_third, other.class_fourth
        else:
            ce_b = other._approx_scatter_times(other.within, other.class_sq, e_b)
            sq_b, third_b, fourth_b = _shift_higher_moments(n_b, other.class_sq, other.class_third,
                                                            other.class_fourth, e_b, ce_b)
        self.class_sq, self.class_third, self.class_fourth = sq_a + sq_b, third_a + third_b, fourth_a + fourth_b
        if parts:
            self.total_third = sum(p[0] for p in parts)
            self.total_fourth = sum(p[1] for p in parts)

    # --- derived quantities ------------------------------------------------------

    def mean(self) -> torch.Tensor:
        """[D] mean of all samples (zeros when empty)."""
        n = self.counts.to(_F64)
        return (n @ self.means) / max(float(n.sum()), 1.0)

    def _total_sq(self) -> torch.Tensor:
        dev = self.means - self.mean()
        return self.within.trace() + (self.counts.to(_F64) * (dev * dev).sum(1)).sum()

    def _require(self, min_per_class: int) -> None:
        if self.counts is None:
            raise RuntimeError("no samples: call update() first")
        absent = (self.counts == 0).nonzero().flatten()
        if absent.numel():  # only possible with num_classes: seen labels always have samples
            raise ValueError(f"no samples of classes {self._show(self.classes[absent])} "
                             f"(num_classes={self.num_classes} declares classes 0 .. {self.num_classes - 1}; "
                             "every class needs samples)")
        few = (self.counts < min_per_class).nonzero().flatten().tolist()
        if few:
            shown = ", ".join(f"{int(self.classes[c])} (n={int(self.counts[c])})" for c in few[:10])
            more = f" and {len(few) - 10} more" if len(few) > 10 else ""
            raise ValueError(f"classes with fewer than {min_per_class} samples: {shown}{more}; "
                             "every class needs at least 2 samples to estimate a covariance")

    def class_means(self) -> torch.Tensor:
        """[C, D] float64 class means, rows in ``classes`` order; every class must have a sample."""
        self._require(1)
        return self.means

    def tied_moments(self) -> Moments:
        """Moments of the class residuals x_i - μ_{y_i} (Lee et al.'s tied covariance, MLE: W / n).

        Requires every class to have at least 2 samples.
        """
        self._require(2)
        n = self.n
        return Moments(n, self.within / n, float(self.class_fourth.sum()) if self.fourth_moments else None)

    def tied_covariance(self) -> torch.Tensor:
        """[D, D] maximum-likelihood tied within-class covariance W / n."""
        return self.tied_moments().covariance

    def background_moments(self) -> Moments:
        """Moments of all samples about their mean, labels ignored (Ren et al.'s background)."""
        if self.counts is None:
            raise RuntimeError("no samples: call update() first")
        n = self.n
        if n < 2:
            raise ValueError(f"the background covariance needs at least 2 samples, got {n}")
        dev = self.means - self.mean()
        scatter = self.within + dev.T @ (self.counts.to(_F64)[:, None] * dev)
        return Moments(n, scatter / n, float(self.total_fourth) if self.fourth_moments else None)

    def background_covariance(self) -> torch.Tensor:
        """[D, D] maximum-likelihood covariance of all samples, labels ignored."""
        return self.background_moments().covariance


# ------------------------------------------------------------------ estimators

def _eye_like(cov: torch.Tensor) -> torch.Tensor:
    return torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


def mle(m: Moments) -> torch.Tensor:
    """Maximum-likelihood covariance (1/n) Σ r rᵀ (sklearn's EmpiricalCovariance)."""
    return m.covariance


def ridge(m: Moments, lam: float) -> torch.Tensor:
    """Σ + λ I (λ >= 0, absolute, in the units of the covariance)."""
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"ridge lambda must be finite and >= 0, got {lam}")
    return m.covariance + lam * _eye_like(m.covariance)


def _shrink_to_identity(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    mu = float(cov.trace()) / cov.shape[0]
    return (1.0 - shrinkage) * cov + shrinkage * mu * _eye_like(cov)


def shrunk(m: Moments, shrinkage: float = 0.1) -> torch.Tensor:
    """(1 - s) Σ + s (tr Σ / D) I with a given s in [0, 1] (sklearn's ShrunkCovariance)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    return _shrink_to_identity(m.covariance, shrinkage)


def ledoit_wolf_shrinkage(m: Moments) -> float:
    """Ledoit & Wolf (2004) shrinkage intensity, as sklearn's ``ledoit_wolf_shrinkage``.

    With S the MLE covariance of n samples in D dimensions, μ = tr S / D:
        β = (Σ ||r||^4 / n - ||S||_F^2) / (n D),  δ = (||S||_F^2 - (tr S)^2 / D) / D,
        s = min(β, δ) / δ  (0 when β = 0; 0 for D = 1, where shrinkage is moot).
    Needs ``m.fourth`` (statistics built with ``fourth_moments=True``).
    """
    if m.fourth is None:
        raise ValueError("Ledoit-Wolf needs the fourth moment Σ ||r||^4: build the statistics with "
                         "ClassStatistics(fourth_moments=True)")
    s, n, d = m.covariance, m.n, m.covariance.shape[0]
    if d == 1:
        return 0.0
    frob2, tr = float((s * s).sum()), float(s.trace())
    beta = (m.fourth / n - frob2) / (n * d)
    delta = (frob2 - tr * tr / d) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def ledoit_wolf(m: Moments) -> torch.Tensor:
    """Ledoit–Wolf shrunk covariance (sklearn's LedoitWolf)."""
    return _shrink_to_identity(m.covariance, ledoit_wolf_shrinkage(m))


def oas_shrinkage(m: Moments) -> float:
    """Oracle approximating shrinkage (Chen et al. 2010, eq. 23), as sklearn's ``OAS``.

    With α = ||S||_F^2 / D^2 and μ = tr S / D:
        s = min((α + μ^2) / ((n + 1)(α - μ^2 / D)), 1)  (1 if the denominator is 0; 0 for D = 1).
    """
    s, n, d = m.covariance, m.n, m.covariance.shape[0]
    if d == 1:
        return 0.0
    alpha = float((s * s).sum()) / (d * d)
    mu = float(s.trace()) / d
    den = (n + 1) * (alpha - mu * mu / d)
    return 1.0 if den == 0 else min((alpha + mu * mu) / den, 1.0)


def oas(m: Moments) -> torch.Tensor:
    """OAS shrunk covariance (sklearn's OAS)."""
    return _shrink_to_identity(m.covariance, oas_shrinkage(m))


def estimate(m: Moments, estimator: str = "mle", *, ridge_lambda: float = 1e-6,
             shrinkage: float = 0.1) -> torch.Tensor:
    """[D, D] float64 covariance from ``m`` by name: one of ``ESTIMATORS``.

    ``ridge_lambda`` is used by "ridge", ``shrinkage`` by "shrunk".
    """
    if estimator == "mle":
        return mle(m)
    if estimator == "ridge":
        return ridge(m, ridge_lambda)
    if estimator == "shrunk":
        return shrunk(m, shrinkage)
    if estimator == "ledoit_wolf":
        return ledoit_wolf(m)
    if estimator == "oas":
        return oas(m)
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


# ------------------------------------------------------------------ precision factor

def precision_factor(cov: torch.Tensor, rtol: Optional[float] = None) -> torch.Tensor:
    """L with Σ^-1 = L Lᵀ, so that (x - μ)ᵀ Σ^-1 (x - μ) = ||Lᵀ (x - μ)||^2.

    Args:
        cov: [D, D] symmetric positive (semi-)definite covariance; computed in float64.
        rtol: relative eigenvalue tolerance; default D * eps(float64), as
            numpy's ``pinv`` and scipy's ``pinvh``.

    Returns:
        [D, R] float64. R = D and L = C^-ᵀ (C the Cholesky factor of Σ, by a
        triangular solve) when every eigenvalue of Σ exceeds rtol λ_max.
        Otherwise (the Cholesky fails, or the eigenvalues show a condition
        number >= 1 / rtol) it falls back to the eigendecomposition
        Σ = V Λ Vᵀ, keeps the R eigenvalues λ > rtol λ_max and returns
        L = V_kept diag(λ_kept^-1/2): the factor of the pseudo-inverse, so
        directions without variance are ignored rather than blown up. The
        fallback warns (RuntimeWarning).

    Raises:
        ValueError: ``cov`` is not square, not finite, or has no positive eigenvalue.
    """
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"cov must be a non-empty square matrix, got shape {tuple(cov.shape)}")
    cov = cov.detach().to(_F64)
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("cov contains NaN or inf")
    d = cov.shape[0]
    tol = d * torch.finfo(_F64).eps if rtol is None else float(rtol)
    chol, info = torch.linalg.cholesky_ex(cov)
    factor = None
    if int(info) == 0:
        eye = torch.eye(d, dtype=_F64, device=cov.device)
        factor = torch.linalg.solve_triangular(chol, eye, upper=False).T
        # tr(Σ) tr(Σ^-1) = ||C||_F^2 ||L||_F^2 bounds cond(Σ) from above; only
        # when it cannot rule out an eigenvalue below tol * max is the
        # eigendecomposition (the ground truth of the fallback) worth its cost.
        bound = float(cov.trace()) * float((factor * factor).sum())
        if math.isfinite(bound) and bound * tol < 1:
            return factor
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    top = float(evals[-1])
    if top <= 0:
        raise ValueError("cov has no positive eigenvalue (all features are constant within classes)")
    keep = evals > tol * top
    if factor is not None and bool(keep.all()):
        return factor
    reason = ("Cholesky failed" if factor is None
              else f"condition number {top / max(float(evals[0]), 1e-300):.3g} >= 1/rtol")
    warnings.warn(
        f"covariance [{d} x {d}] is singular or ill-conditioned ({reason}); using the pseudo-inverse "
        f"on its {int(keep.sum())} eigen-directions with eigenvalue > {tol:.3g} * max "
        f"(dropped {d - int(keep.sum())}). Consider estimator='ledoit_wolf', 'oas' or 'ridge'.",
        RuntimeWarning, stacklevel=2)
    return evecs[:, keep] * evals[keep].rsqrt()
