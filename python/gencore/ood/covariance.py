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

Everything is float64 whatever the feature dtype; inputs are converted once
per batch.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = [
    "ClassStatistics", "Moments", "ESTIMATORS", "estimate", "mle", "ridge", "shrunk",
    "ledoit_wolf", "ledoit_wolf_shrinkage", "oas", "oas_shrinkage", "precision_factor",
]

ESTIMATORS = ("mle", "ridge", "shrunk", "ledoit_wolf", "oas")
_F64 = torch.float64


@dataclass(frozen=True)
class Moments:
    """What a covariance estimator needs from n centred samples r_i (float64).

    Attributes:
        n: number of samples.
        covariance: [D, D] maximum-likelihood covariance (1/n) Σ r_i r_iᵀ.
        fourth: Σ_i ||r_i||^4, the fourth-moment term of Ledoit–Wolf.
    """

    n: int
    covariance: torch.Tensor
    fourth: float


# ------------------------------------------------------------------ statistics

def _shift_higher_moments(n, sq, third, fourth, e, ce):
    """Third and fourth moments of groups re-centred from their means to a new point.

    For a group with centred rows r (Σ r = 0), scatter C = Σ r rᵀ, q = Σ ||r||^2,
    t = Σ ||r||^2 r and f = Σ ||r||^4, the same moments of r + e are
        t' = t + q e + 2 C e + n ||e||^2 e
        f' = f + 4 eᵀt + 4 eᵀC e + 2 ||e||^2 q + n ||e||^4.
    Batched over groups: n, sq, fourth [G]; third, e, ce (= C e) [G, D].
    """
    ee = (e * e).sum(-1)
    new_third = third + sq[:, None] * e + 2 * ce + (n * ee)[:, None] * e
    new_fourth = fourth + 4 * (e * third).sum(-1) + 4 * (e * ce).sum(-1) + 2 * ee * sq + n * ee * ee
    return new_third, new_fourth


class ClassStatistics:
    """Sufficient statistics of labelled features, in float64, that stream and merge.

    Stored (C classes, D features; all float64 except ``counts``):

    * ``counts`` [C] int64, ``means`` [C, D]: per-class sample counts and means
      (a class not seen yet has count 0 and mean 0);
    * ``within`` [D, D]: the pooled within-class scatter
      W = Σ_c Σ_{i in c} (x_i - μ_c)(x_i - μ_c)ᵀ;
    * ``class_sq`` [C], ``class_third`` [C, D], ``class_fourth`` [C]:
      Σ ||r||^2, Σ ||r||^2 r and Σ ||r||^4 of the class residuals r = x - μ_c;
    * ``total_third`` [D], ``total_fourth`` []: the same about the mean of all data.

    The scatter of all data (ignoring labels) needs no storage of its own:
    by the law of total variance it is W + Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ.

    The third and fourth moments exist for Ledoit–Wolf's shrinkage, which
    needs Σ ||r||^4 about the final means. Re-centring a group's fourth
    moment to a new mean needs its own scatter in the direction of the mean
    shift (``_shift_higher_moments``). For all data that scatter is known
    exactly. Per class only the pooled W is kept (a [C, D, D] tensor would be
    32 GB for 1000 classes of 2048 features), so when two partial statistics
    merge, each class's scatter C_c is approximated by W scaled to the
    class's own trace, C_c ≈ W tr(C_c) / tr(W) (exact when classes share
    one covariance, the model the tied detectors assume). The batch side of
    ``update`` is computed exactly from the rows; only the running side uses
    the approximation, where the mean shift is O(batch / n) small. A
    one-batch fit is exact; streamed fits agree with it to ~1/(n D)
    relative in Σ ||r||^4 (the first- and second-order statistics, and hence
    the MLE, ridge, shrunk and OAS covariances, are exact either way).

    Args:
        num_classes: fixed number of classes C, or None to grow it to
            max(label) + 1 as labels arrive.
    """

    def __init__(self, num_classes: Optional[int] = None):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.counts: Optional[torch.Tensor] = None  # None until the first update sets D and the device

    # --- state ---------------------------------------------------------------

    _FIELDS = ("counts", "means", "within", "class_sq", "class_third", "class_fourth",
               "total_third", "total_fourth")

    @property
    def num_features(self) -> Optional[int]:
        return None if self.counts is None else self.means.shape[1]

    @property
    def n(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())

    def _init(self, num_classes: int, num_features: int, device) -> None:
        def z(*shape):
            return torch.zeros(shape, dtype=_F64, device=device)

        c, d = num_classes, num_features
        self.counts = torch.zeros(c, dtype=torch.int64, device=device)
        self.means, self.within = z(c, d), z(d, d)
        self.class_sq, self.class_third, self.class_fourth = z(c), z(c, d), z(c)
        self.total_third, self.total_fourth = z(d), z()

    def _grow(self, num_classes: int) -> None:
        """Pads the per-class fields with empty classes up to ``num_classes``."""
        extra = num_classes - self.counts.shape[0]
        if extra <= 0:
            return
        for name in ("counts", "means", "class_sq", "class_third", "class_fourth"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros((extra,) + t.shape[1:])]))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as plain tensors (empty dict before the first update)."""
        if self.counts is None:
            return {}
        return {name: getattr(self, name).clone() for name in self._FIELDS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "ClassStatistics":
        if not state:
            self.counts = None
            return self
        missing = [f for f in self._FIELDS if f not in state]
        if missing:
            raise ValueError(f"ClassStatistics state is missing {missing}")
        c, d = state["means"].shape
        if self.num_classes is not None and c != self.num_classes:
            raise ValueError(f"state has {c} classes, these statistics were built for {self.num_classes}")
        for name in self._FIELDS:
            setattr(self, name, state[name].clone())
        return self

    # --- accumulation ----------------------------------------------------------

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise ValueError(f"labels must be >= 0, got a label {low}")
        if self.num_classes is not None and high >= self.num_classes:
            raise ValueError(f"labels must be < num_classes={self.num_classes}, got a label {high}")

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "ClassStatistics":
        """Adds a batch: features [N, D] (any float dtype; must be finite), labels [N] int.

        Shapes and label ranges are checked here; NaN/inf are the caller's to
        refuse (the detectors do), which saves a pass when the caller already
        checked. Extra memory: one [N, D] float64 copy plus [C, D] sums.
        """
        if features.dim() != 2 or labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)} "
                             f"and {tuple(labels.shape)}")
        self._check_labels(labels)
        if features.shape[0] == 0:
            return self
        y = labels.to(device=features.device, dtype=torch.int64)
        num_classes = self.num_classes or int(y.max()) + 1
        if self.counts is None:
            self._init(num_classes, features.shape[1], features.device)
        elif features.shape[1] != self.num_features:
            raise ValueError(f"features have D={features.shape[1]}, the statistics have D={self.num_features}")
        self._grow(max(num_classes, self.counts.shape[0]))
        c, d = self.counts.shape[0], features.shape[1]

        # Rows grouped by class, so every per-class sum below is a slice and a
        # GEMV, and the [N, D] float64 copy turns into the class residuals in
        # place: the whole update makes ~8 passes over the batch besides its
        # one O(N D^2) GEMM, whatever C is.
        counts_b = torch.bincount(y, minlength=c)
        r = features.detach()[torch.argsort(y, stable=True)].to(_F64)    # [N, D] -> residuals x - μ_y
        z = lambda *shape: torch.zeros(shape, dtype=_F64, device=r.device)  # noqa: E731
        means_b, third_b, sq_b, fourth_b = z(c, d), z(c, d), z(c), z(c)
        segments, start = [], 0
        for cls, size in enumerate(counts_b.tolist()):
            if size == 0:
                continue
            seg = r[start:start + size]
            start += size
            means_b[cls] = seg.mean(0)
            seg.sub_(means_b[cls])
            r2 = torch.linalg.vector_norm(seg, dim=1).square_()
            sq_b[cls], fourth_b[cls], third_b[cls] = r2.sum(), r2.square().sum(), seg.T @ r2
            segments.append((cls, seg))
        within_b = r.T @ r                                    # the one O(N D^2) GEMM

        # Scatter of each batch class in two directions, exact from the rows
        # (see the class docstring): e_b, where its mean moves in the merge,
        # and e_t = μ_c - μ_batch, which re-centres the class moments to give
        # the batch's moments about its own mean.
        n_a, n_b = self.counts.to(_F64), counts_b.to(_F64)
        e_b = (n_a / (n_a + n_b).clamp_min(1))[:, None] * (means_b - self.means)
        e_t = means_b - (n_b @ means_b) / n_b.sum()
        ce_b, ce_t = z(c, d), z(c, d)
        for cls, seg in segments:
            directions = torch.stack([e_b[cls], e_t[cls]], 1)              # [D, 2]
            ce_b[cls], ce_t[cls] = (seg.T @ (seg @ directions)).unbind(1)
        total_third, total_fourth = _shift_higher_moments(n_b, sq_b, third_b, fourth_b, e_t, ce_t)

        batch = ClassStatistics(self.num_classes)
        batch.counts, batch.means, batch.within = counts_b, means_b, within_b
        batch.class_sq, batch.class_third, batch.class_fourth = sq_b, third_b, fourth_b
        batch.total_third, batch.total_fourth = total_third.sum(0), total_fourth.sum()
        return self._merge(batch, other_class_ce=ce_b)

    def merge(self, other: "ClassStatistics") -> "ClassStatistics":
        """Adds another instance's statistics (same D; classes padded to the larger C). In place."""
        if not isinstance(other, ClassStatistics):
            raise TypeError(f"can only merge ClassStatistics, got {type(other).__name__}")
        if other.counts is None:
            return self
        if self.counts is None:
            self._init(other.counts.shape[0], other.num_features, other.means.device)
        if other.num_features != self.num_features:
            raise ValueError(f"cannot merge statistics with D={other.num_features} into D={self.num_features}")
        if self.num_classes is not None and other.counts.shape[0] > self.num_classes:
            raise ValueError(f"other has {other.counts.shape[0]} classes, these statistics are "
                             f"fixed at num_classes={self.num_classes}")
        other = ClassStatistics().load_state_dict(other.state_dict())
        other._grow(self.counts.shape[0])
        self._grow(other.counts.shape[0])
        return self._merge(other)

    def _approx_class_ce(self, e: torch.Tensor) -> torch.Tensor:
        """C_c e per class with C_c ≈ W tr(C_c) / tr(W) (see the class docstring): [C, D]."""
        tr = float(self.within.trace())
        if tr <= 0:
            return torch.zeros_like(e)
        return (self.class_sq / tr)[:, None] * (e @ self.within)

    def _total_scatter_times(self, e: torch.Tensor) -> torch.Tensor:
        """(total scatter) e for e [D]: W e + Σ_c n_c (μ_c - μ)((μ_c - μ)ᵀ e)."""
        dev = self.means - self.mean()
        return self.within @ e + dev.T @ (self.counts.to(_F64) * (dev @ e))

    def _merge(self, other: "ClassStatistics", other_class_ce: Optional[torch.Tensor] = None):
        n_a, n_b = self.counts.to(_F64), other.counts.to(_F64)
        n = n_a + n_b
        w_b = n_b / n.clamp_min(1)                           # 0 where a class is in neither
        delta = other.means - self.means
        means = self.means + w_b[:, None] * delta
        e_a, e_b = self.means - means, other.means - means

        # Totals (all data, ignoring labels): exact re-centring.
        tot_a, tot_b = float(n_a.sum()), float(n_b.sum())
        mu_a, mu_b = self.mean(), other.mean()
        mu = (tot_a * mu_a + tot_b * mu_b) / (tot_a + tot_b)
        total_parts = []
        for stats, size, e in ((self, tot_a, mu_a - mu), (other, tot_b, mu_b - mu)):
            if size == 0:
                continue
            third, fourth = _shift_higher_moments(
                torch.tensor([size], dtype=_F64, device=e.device), stats._total_sq()[None],
                stats.total_third[None], stats.total_fourth[None], e[None], stats._total_scatter_times(e)[None])
            total_parts.append((third[0], fourth[0]))

        ce_a = self._approx_class_ce(e_a)
        ce_b = other._approx_class_ce(e_b) if other_class_ce is None else other_class_ce
        third_a, fourth_a = _shift_higher_moments(n_a, self.class_sq, self.class_third, self.class_fourth, e_a, ce_a)
        third_b, fourth_b = _shift_higher_moments(n_b, other.class_sq, other.class_third, other.class_fourth,
                                                  e_b, ce_b)
        # Chan et al.: pooled scatter grows by n_a n_b / n (μ_b - μ_a)(μ_b - μ_a)ᵀ per class.
        between = (n_a * w_b)[:, None] * delta
        self.within = self.within + other.within + between.T @ delta
        self.class_sq = (self.class_sq + other.class_sq + n_a * (e_a * e_a).sum(1) + n_b * (e_b * e_b).sum(1))
        self.class_third, self.class_fourth = third_a + third_b, fourth_a + fourth_b
        if total_parts:
            self.total_third = sum(p[0] for p in total_parts)
            self.total_fourth = sum(p[1] for p in total_parts)
        self.means, self.counts = means, self.counts + other.counts
        return self

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
        few = (self.counts < min_per_class).nonzero().flatten().tolist()
        if few:
            shown = ", ".join(f"{c} (n={int(self.counts[c])})" for c in few[:10])
            more = f" and {len(few) - 10} more" if len(few) > 10 else ""
            raise ValueError(f"classes with fewer than {min_per_class} samples: {shown}{more}; "
                             "every class needs at least 2 samples to estimate a covariance")

    def class_means(self) -> torch.Tensor:
        """[C, D] float64 class means; every class must have a sample."""
        self._require(1)
        return self.means

    def tied_moments(self) -> Moments:
        """Moments of the class residuals x_i - μ_{y_i} (Lee et al.'s tied covariance, MLE: W / n).

        Requires every class to have at least 2 samples.
        """
        self._require(2)
        n = self.n
        return Moments(n, self.within / n, float(self.class_fourth.sum()))

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
        return Moments(n, scatter / n, float(self.total_fourth))

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
    """
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
