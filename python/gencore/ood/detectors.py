"""Out-of-distribution detectors: one small API over gencore's ood ops.

Every detector follows one protocol (``OODDetector``):

* ``fit(features, labels=None, logits=None)`` starts afresh; ``partial_fit``
  with the same arguments streams more training data in. Statistics are
  float64 and additive, so fitting in chunks gives the same detector as one
  call (up to float64 rounding; see ``covariance.ClassStatistics`` for the
  one approximated term of Ledoit–Wolf, and ``ViMDetector`` for the α
  that only ``fit`` can compute as the paper does).
  Derived attributes (``means``, ``precision_factor``, ``principal``,
  ``alpha``, ``bank``...) are recomputed lazily: after ``partial_fit``
  they are current again once the detector is next used (score,
  calibrate) — ``fit`` computes them at once, so errors such as a class
  with a single sample surface there.
* ``score(features, logits=None)`` -> [N]: HIGHER MEANS MORE
  IN-DISTRIBUTION, for every detector. ``ood_score`` is its negation.
* ``calibrate(features, logits=None)`` scores held-out in-distribution data
  and keeps the scores; ``threshold(tpr)`` is then the score t such that a
  fraction >= tpr of those calibration scores is >= t, and
  ``is_in_distribution(features)`` is ``score >= threshold(tpr)``.
  Calibration is explicit, on data the detector was not fitted on, because
  training points are systematically more typical to their own detector
  (a kNN bank contains each training point at distance 0), which would
  make thresholds too strict.
* ``state_dict()`` / ``load_state_dict()``: plain tensors (the float64
  sufficient statistics, the kNN bank, calibration scores). Hyperparameters
  stay in the constructor: load into a detector built with the same
  arguments. Derived quantities (precision factors, subspaces) are
  recomputed from the statistics by the same deterministic code, so scores
  round-trip exactly.

Inputs: features [N, D] floating tensors (float32 is the fast path; fp16 and
bf16 are scored in float32), labels [N] integer tensors in [0, C), logits
[N, C] floating tensors. NaN/inf, wrong shapes, labels out of range or not
integer, a feature dimension that differs from the one fitted, and scoring
before fitting raise ``ValueError`` / ``RuntimeError`` naming the problem.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .. import _checks
from . import covariance as cov_lib
from . import ops

__all__ = [
    "OODDetector", "MahalanobisDetector", "RelativeMahalanobisDetector", "KNNDetector",
    "ViMDetector", "EnergyDetector", "MSPDetector", "MaxLogitDetector",
]

_F64 = torch.float64


def _score_dtype(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 are scored in float32, as every ood op computes them."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class OODDetector:
    """Base class: the fit / score / calibrate / state protocol (see the module docstring).

    Subclasses set ``needs`` (which of "features", "labels", "logits" fitting
    requires) and implement ``_reset``, ``_update``, ``_finalize``, ``_score``,
    ``_state`` and ``_load_state``.
    """

    needs: tuple[str, ...] = ("features",)
    #: whether score() requires fit() first (logit-only scores have nothing to fit)
    needs_fit: bool = True

    def __init__(self):
        self.num_features: Optional[int] = None
        self._calibration: Optional[torch.Tensor] = None
        self._fitted = False
        self._stale = False
        self._reset()

    # --- public protocol -------------------------------------------------------

    def fit(self, features: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
            logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Fits from scratch (forgets earlier data and calibration) and finalizes. Returns self."""
        self.num_features, self._calibration, self._fitted = None, None, False
        self._reset()
        self.partial_fit(features, labels, logits)
        self._finalize()
        self._stale = False
        return self

    def partial_fit(self, features: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                    logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Adds a batch of training data; the detector is finalized lazily when next used.

        Calibration scores from before are dropped, since the scores they
        came from change with the fit.
        """
        features, labels, logits = self._check_fit_inputs(features, labels, logits)
        self._update(features, labels, logits)
        self._fitted, self._stale, self._calibration = True, True, None
        return self

    def score(self, features: Optional[torch.Tensor] = None, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N] in-distribution score: higher means more in-distribution."""
        self._ready()
        features, logits = self._check_score_inputs(features, logits)
        return self._score(features, logits)

    def ood_score(self, features: Optional[torch.Tensor] = None, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N] out-of-distribution score, ``-score``: higher means more OOD."""
        return -self.score(features, logits)

    def calibrate(self, features: Optional[torch.Tensor] = None,
                  logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Scores held-out in-distribution data and keeps the scores for ``threshold``.

        Use data the detector was not fitted on (see the module docstring).
        Replaces earlier calibration; dropped again by ``partial_fit``/``fit``.
        """
        scores = self.score(features, logits)
        if scores.numel() == 0:
            raise ValueError("calibration needs at least one in-distribution sample")
        self._calibration = scores.detach().to(device="cpu", dtype=_F64).sort(descending=True).values
        return self

    def threshold(self, tpr: float = 0.95) -> float:
        """Score t with a fraction >= ``tpr`` of the calibration scores >= t.

        With M calibration scores sorted descending s_1 >= ... >= s_M,
        t = s_k for k = ceil(tpr M): exactly the k best-scoring calibration
        samples (more only with ties at t) are accepted as in-distribution.

        Args:
            tpr: target true-positive rate on in-distribution data, in (0, 1].
        """
        if not (isinstance(tpr, (int, float)) and 0.0 < tpr <= 1.0):
            raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
        if self._calibration is None:
            raise RuntimeError(f"{type(self).__name__} has no calibration: call calibrate(id_features) "
                               "with held-out in-distribution data first")
        m = self._calibration.numel()
        k = min(m, max(1, math.ceil(tpr * m - 1e-9)))  # the epsilon absorbs tpr*m rounding up
        return float(self._calibration[k - 1])

    def is_in_distribution(self, features: Optional[torch.Tensor] = None,
                           logits: Optional[torch.Tensor] = None, tpr: float = 0.95) -> torch.Tensor:
        """[N] bool: ``score >= threshold(tpr)``."""
        t = self.threshold(tpr)
        return self.score(features, logits) >= t

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted state as a dict of tensors (see the module docstring)."""
        state = {f"fit.{k}": v for k, v in self._state().items()}
        if self.num_features is not None:
            state["num_features"] = torch.tensor(self.num_features, dtype=torch.int64)
        if self._calibration is not None:
            state["calibration_scores"] = self._calibration.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "OODDetector":
        """Restores ``state_dict()`` output into a detector built with the same arguments."""
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("state must be a dict of tensors, as returned by state_dict()")
        known = {"num_features", "calibration_scores"}
        fit_state = {k[4:]: v.clone() for k, v in state.items() if k.startswith("fit.")}
        unknown = [k for k in state if k not in known and not k.startswith("fit.")]
        if unknown:
            raise ValueError(f"unexpected keys in state for {type(self).__name__}: {unknown}")
        self._reset()
        self.num_features = int(state["num_features"]) if "num_features" in state else None
        self._load_state(fit_state)
        self._fitted = bool(fit_state)
        self._stale = self._fitted
        calibration = state.get("calibration_scores")
        self._calibration = None if calibration is None else calibration.clone()
        return self

    # --- input checks -----------------------------------------------------------

    def _name(self) -> str:
        return type(self).__name__

    def _check_features(self, features, *, for_fit: bool) -> torch.Tensor:
        _checks.tensor(features, "features", ndim=2)
        _checks.finite(features, "features")
        d = features.shape[1]
        if d == 0:
            raise ValueError("features have dimension D=0")
        if self.num_features is None and for_fit:
            self.num_features = d
        elif self.num_features is not None and d != self.num_features:
            raise ValueError(f"features have D={d} but {self._name()} was fitted on D={self.num_features}")
        return features

    @staticmethod
    def _check_logits(logits, n: Optional[int]) -> torch.Tensor:
        _checks.tensor(logits, "logits", ndim=2)
        _checks.finite(logits, "logits")
        if n is not None and logits.shape[0] != n:
            raise ValueError(f"logits have {logits.shape[0]} rows, features have {n}")
        if logits.shape[1] == 0:
            raise ValueError("logits have zero classes")
        return logits

    @staticmethod
    def _check_labels(labels, n: int) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be an integer torch.Tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must have an integer dtype, got {str(labels.dtype).replace('torch.', '')}")
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must be [N] with N={n} (rows of features), got shape {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, got a label {int(labels.min())}")
        return labels

    def _check_fit_inputs(self, features, labels, logits):
        n = None
        if "features" in self.needs:
            if features is None:
                raise ValueError(f"{self._name()}.fit needs features [N, D]")
            features = self._check_features(features, for_fit=True)
            n = features.shape[0]
        if "labels" in self.needs:
            if labels is None:
                raise ValueError(f"{self._name()}.fit needs labels [N] (class indices)")
            labels = self._check_labels(labels, n)
        if logits is not None or "logits" in self.needs:
            if logits is None:
                raise ValueError(f"{self._name()}.fit needs logits [N, C]")
            logits = self._check_logits(logits, n)
        return features, labels, logits

    def _check_score_inputs(self, features, logits):
        n = None
        if "features" in self.needs:
            if features is None:
                raise ValueError(f"{self._name()}.score needs features [N, D]")
            features = self._check_features(features, for_fit=False)
            n = features.shape[0]
        if logits is not None:
            logits = self._check_logits(logits, n)
        return features, logits

    def _ready(self) -> None:
        if self.needs_fit and not self._fitted:
            raise RuntimeError(f"{self._name()} is not fitted: call fit() or partial_fit() first")
        if self._stale:
            self._finalize()
            self._stale = False

    # --- subclass hooks -----------------------------------------------------------

    def _reset(self) -> None:
        pass

    def _update(self, features, labels, logits) -> None:
        pass

    def _finalize(self) -> None:
        pass

    def _score(self, features, logits) -> torch.Tensor:
        raise NotImplementedError

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected fitted state for {self._name()}: {sorted(state)}")


# ====================================================================== Gaussian

class MahalanobisDetector(OODDetector):
    """Lee et al. 2018: class-conditional Gaussians with a shared (tied) covariance.

    Fit: class means μ_c and the tied within-class covariance Σ (MLE
    (1/n) Σ_i (x_i - μ_{y_i})(x_i - μ_{y_i})ᵀ, optionally regularized by
    ``estimator``), streamed as float64 ``ClassStatistics``. Score:

        score(x) = -min_c (x - μ_c)ᵀ Σ^-1 (x - μ_c)

    computed by ``gencore.ood.mahalanobis`` with the precision factor L
    (Σ^-1 = L Lᵀ) of ``covariance.precision_factor`` (pseudo-inverse with a
    warning when Σ is singular).

    Args:
        covariance: "tied" (one covariance for all classes, as in the paper).
        estimator: "mle", "ridge" (Σ + λI), "shrunk" ((1-s)Σ + s tr(Σ)/D I),
            "ledoit_wolf" or "oas" (see ``covariance``).
        num_classes: C, or None to take max(label) + 1 of the data seen.
        ridge_lambda: λ for estimator="ridge" (default 1e-6).
        shrinkage: s for estimator="shrunk" (default 0.1).
        rtol: eigenvalue tolerance of the pseudo-inverse fallback (default D eps).

    fit needs features [N, D] and labels [N]; every class needs >= 2 samples.
    """

    needs = ("features", "labels")

    def __init__(self, covariance: str = "tied", estimator: str = "mle", *, num_classes: Optional[int] = None,
                 ridge_lambda: float = 1e-6, shrinkage: float = 0.1, rtol: Optional[float] = None):
        self.covariance = _checks.choice(covariance, "covariance", ("tied",))
        self.estimator = _checks.choice(estimator, "estimator", cov_lib.ESTIMATORS)
        if num_classes is not None:
            _checks.integer(num_classes, "num_classes", low=1)
        self.num_classes, self.ridge_lambda, self.shrinkage, self.rtol = num_classes, ridge_lambda, shrinkage, rtol
        super().__init__()

    def _reset(self) -> None:
        self.statistics = cov_lib.ClassStatistics(self.num_classes)
        self.means: Optional[torch.Tensor] = None             # [C, D] float64
        self.precision_factor: Optional[torch.Tensor] = None  # [D, R] float64
        self._cast: dict = {}

    def _update(self, features, labels, logits) -> None:
        self.statistics.update(features, labels)

    def _estimate(self, moments: cov_lib.Moments) -> torch.Tensor:
        cov = cov_lib.estimate(moments, self.estimator, ridge_lambda=self.ridge_lambda, shrinkage=self.shrinkage)
        return cov_lib.precision_factor(cov, self.rtol)

    def _finalize(self) -> None:
        self.means = self.statistics.class_means()
        self.precision_factor = self._estimate(self.statistics.tied_moments())
        self._cast = {}

    def _fitted_as(self, x: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fitted float64 tensors in x's dtype and device, cached per (dtype, device)."""
        key = (x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = tuple(t.to(device=x.device, dtype=x.dtype).contiguous() for t in tensors)
        return self._cast[key]

    def _score(self, features, logits) -> torch.Tensor:
        x = _score_dtype(features)
        means, factor = self._fitted_as(x, self.means, self.precision_factor)
        return -ops.mahalanobis(x, means, factor, reduce="min")

    def _state(self) -> dict[str, torch.Tensor]:
        return self.statistics.state_dict()

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.statistics.load_state_dict(state)


class RelativeMahalanobisDetector(MahalanobisDetector):
    """Ren et al. 2021, "A simple fix to Mahalanobis distance for improving near-OOD detection".

    Adds a background Gaussian N(μ_0, Σ_0) fitted to all training features,
    labels ignored (from the same ``ClassStatistics``, same ``estimator``).
    With d_c the class distances of ``MahalanobisDetector`` and d_0 the
    background one:

        score(x) = -(min_c d_c(x) - d_0(x))

    computed by ``gencore.ood.relative_mahalanobis``. Arguments as ``MahalanobisDetector``.
    """

    def _reset(self) -> None:
        super()._reset()
        self.background_mean: Optional[torch.Tensor] = None    # [D] float64
        self.background_factor: Optional[torch.Tensor] = None  # [D, R0] float64

    def _finalize(self) -> None:
        super()._finalize()
        self.background_mean = self.statistics.mean()
        self.background_factor = self._estimate(self.statistics.background_moments())
        self._cast = {}

    def _score(self, features, logits) -> torch.Tensor:
        x = _score_dtype(features)
        means, factor, bg_mean, bg_factor = self._fitted_as(
            x, self.means, self.precision_factor, self.background_mean, self.background_factor)
        return -ops.relative_mahalanobis(x, means, factor, bg_mean, bg_factor, reduce="min")


# ====================================================================== kNN

_KEY_BLOCK = 1024


def _row_keys(seed: int, start: int, n: int) -> torch.Tensor:
    """Uniform [0, 1) float64 keys of rows start .. start+n-1, independent of batching.

    Row i's key comes from a generator seeded by (seed, i // 1024), so a
    stream cut into any chunks draws the same key for every row.
    """
    keys = []
    for block in range(start // _KEY_BLOCK, (start + n + _KEY_BLOCK - 1) // _KEY_BLOCK):
        g = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63))
        keys.append(torch.rand(_KEY_BLOCK, generator=g, dtype=_F64))
    first = start - (start // _KEY_BLOCK) * _KEY_BLOCK
    return torch.cat(keys)[first:first + n] if keys else torch.empty(0, dtype=_F64)


class KNNDetector(OODDetector):
    """Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors".

    The bank is the (optionally subsampled) training features, L2-normalised;
    a query is normalised the same way and

        score(x) = -|| x/||x|| - z_(k) ||,

    minus the Euclidean distance to its k-th nearest bank row z_(k), found
    exactly by ``gencore.ood.knn`` (any k up to the bank size; exact ties go
    to the earlier training row).

    Args:
        k: neighbour rank used for the score (default 50, the paper's value
            for CIFAR-10; the paper uses 1000 on ImageNet).
        subsample: None keeps every training row; a float p in (0, 1] keeps
            each row independently with probability p (the paper's "α%"
            sampling; the bank size is then random); an int m keeps a
            uniform sample of exactly min(m, N) rows (bottom-m of per-row
            random keys). Either way the choice depends only on ``seed`` and
            a row's position in the stream, so fit and chunked partial_fit
            keep the same rows, in training order.
        normalize: L2-normalise bank and queries (default True, as in the paper).
        seed: seed of the subsampling keys.

    partial_fit appends to the bank. Memory: the bank, D + 2 values per
    kept row (the features in the training dtype, plus a float64 key and an
    int64 position, which let a fixed-size sample keep streaming after
    ``load_state_dict``).
    """

    def __init__(self, k: int = 50, *, subsample: Union[None, float, int] = None, normalize: bool = True,
                 seed: int = 0):
        self.k = _checks.integer(k, "k", low=1)
        if subsample is not None:
            if isinstance(subsample, bool) or not isinstance(subsample, (int, float)):
                raise ValueError(f"subsample must be None, a float in (0, 1] or an int >= 1, got {subsample!r}")
            if isinstance(subsample, float) and not 0.0 < subsample <= 1.0:
                raise ValueError(f"subsample as a fraction must be in (0, 1], got {subsample}")
            if isinstance(subsample, int) and subsample < 1:
                raise ValueError(f"subsample as a row count must be >= 1, got {subsample}")
        self.subsample, self.normalize = subsample, bool(normalize)
        self.seed = _checks.integer(seed, "seed", low=0)
        super().__init__()

    def _reset(self) -> None:
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, keys, positions)
        self._pending_rows = 0
        self.rows_seen = 0

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = _score_dtype(x.detach())
        return F.normalize(x, dim=1) if self.normalize else x

    def _update(self, features, labels, logits) -> None:
        n = features.shape[0]
        keys = _row_keys(self.seed, self.rows_seen, n)
        positions = torch.arange(self.rows_seen, self.rows_seen + n, dtype=torch.int64)
        self.rows_seen += n
        rows = self._prepare(features)
        if rows.data_ptr() == features.data_ptr():
            rows = rows.clone()  # the bank must not alias the caller's tensor
        if self._parts and rows.dtype != self._parts[0][0].dtype:
            rows = rows.to(self._parts[0][0].dtype)  # the bank keeps the first batch's dtype
        if isinstance(self.subsample, float):
            keep = keys < self.subsample
            rows, keys, positions = rows[keep.to(rows.device)], keys[keep], positions[keep]
        self._parts.append((rows, keys, positions))
        self._pending_rows += rows.shape[0]
        if isinstance(self.subsample, int) and self._pending_rows > 2 * self.subsample:
            self._consolidate()  # bounds memory at ~2m rows while streaming

    def _consolidate(self) -> None:
        """Concatenates the parts into one bank; for an int subsample keeps the m smallest keys."""
        if len(self._parts) <= 1 and not isinstance(self.subsample, int):
            return
        rows = torch.cat([p[0] for p in self._parts])
        keys = torch.cat([p[1] for p in self._parts])
        positions = torch.cat([p[2] for p in self._parts])
        if isinstance(self.subsample, int) and keys.numel() > self.subsample:
            chosen = torch.topk(keys, self.subsample, largest=False).indices
            chosen = chosen[positions[chosen].argsort()]  # training order: ties in kNN go to earlier rows
            rows, keys, positions = rows[chosen.to(rows.device)], keys[chosen], positions[chosen]
        self._parts = [(rows, keys, positions)]
        self._pending_rows = rows.shape[0]

    def _finalize(self) -> None:
        self._consolidate()

    @property
    def bank(self) -> torch.Tensor:
        """[M, D] the (normalised, subsampled) training features."""
        if not self._parts:
            raise RuntimeError("KNNDetector is not fitted: call fit() or partial_fit() first")
        self._consolidate()
        return self._parts[0][0]

    def _score(self, features, logits) -> torch.Tensor:
        bank = self.bank
        if self.k > bank.shape[0]:
            raise ValueError(f"k={self.k} exceeds the bank size {bank.shape[0]}"
                             + (f" (after subsample={self.subsample!r})" if self.subsample is not None else ""))
        x = self._prepare(features).to(device=bank.device, dtype=bank.dtype)
        values, _ = ops.knn(x, bank, self.k, "l2")
        return -values[:, -1]

    def _state(self) -> dict[str, torch.Tensor]:
        if not self._parts:
            return {}
        self._consolidate()
        rows, keys, positions = self._parts[0]
        return {"bank": rows.clone(), "keys": keys.clone(), "positions": positions.clone(),
                "rows_seen": torch.tensor(self.rows_seen, dtype=torch.int64)}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        missing = [k for k in ("bank", "keys", "positions", "rows_seen") if k not in state]
        if missing:
            raise ValueError(f"KNNDetector state is missing {missing}")
        self._parts = [(state["bank"], state["keys"], state["positions"])]
        self._pending_rows = state["bank"].shape[0]
        self.rows_seen = int(state["rows_seen"])


# ====================================================================== ViM

class ViMDetector(OODDetector):
    """Wang et al. 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching".

    With the classifier's last layer (weight W [C, D], bias b [C]):
    origin u = -pinv(W) b; principal subspace P = the top ``dim``
    eigenvectors of the uncentred second moment (1/n) Σ (x - u)(x - u)ᵀ of
    the training features; residual r(x) = ||(I - P Pᵀ)(x - u)||; matching
    scale α = Σ_i max_c logit_ic / Σ_i r(x_i);

        score(x) = logsumexp_c logit_c(x) - α r(x)

    computed by ``gencore.ood.vim``. ``fit`` gives exactly the center,
    subspace and α of ``gencore.ood.vim_fit`` (the paper's code), but from
    streamed float64 statistics, so ``partial_fit`` can continue it.

    Streaming and α: the mean residual norm needs the subspace, which is
    only known once all data are in, so ``fit`` (which has the rows in hand)
    makes a second pass for it (one [N, D] x [D, dim] GEMM by
    ``gencore.ood.residual``). A detector built by ``partial_fit`` has no
    second pass and uses the root-mean-square residual instead,
    sqrt(Σ_{dropped} λ_j), from the same statistics: α is then smaller by
    the ratio mean/RMS of the residual norms (close to 1 when they
    concentrate, as in high dimension), and equal for any chunking. A
    ``partial_fit`` after ``fit`` also switches to the RMS form. Pass
    ``alpha`` to fix α instead.

    Args:
        weight: [C, D] last-layer weight; bias: [C] (default zeros).
        dim: principal dimension, 1 <= dim < D; default as the paper's code:
            1000 if D >= 2048, 512 if D >= 768, else D // 2.
        alpha: fixed α (> 0) instead of the fitted one.

    fit needs features [N, D]; logits [N, C] are computed as x Wᵀ + b when
    not given (at fit and at score).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, dim: Optional[int] = None,
                 *, alpha: Optional[float] = None):
        _checks.tensor(weight, "weight", ndim=2)
        _checks.finite(weight, "weight")
        c, d = weight.shape
        if bias is None:
            bias = weight.new_zeros(c)
        _checks.tensor(bias, "bias", ndim=1)
        _checks.same_size("classes", **{"weight.shape[0]": c, "bias.shape[0]": bias.shape[0]})
        _checks.finite(bias, "bias")
        if d < 2:
            raise ValueError(f"ViM needs feature dimension D >= 2, got weight of shape {tuple(weight.shape)}")
        if dim is None:
            dim = 1000 if d >= 2048 else 512 if d >= 768 else d // 2
        self.dim = _checks.integer(dim, "dim", low=1, high=d - 1)
        if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and > 0, got {alpha}")
        self.weight, self.bias, self.fixed_alpha = weight.detach(), bias.detach(), alpha
        w64, b64 = self.weight.to(_F64), self.bias.to(_F64)
        self.center = -(torch.linalg.pinv(w64) @ b64)    # [D] float64, u = -pinv(W) b
        super().__init__()

    def fit(self, features=None, labels=None, logits=None) -> "ViMDetector":
        super().fit(features, labels, logits)
        if self.fixed_alpha is None:
            # The paper's α: a second pass over the rows, now that P is known.
            x = _score_dtype(features)
            principal, center = self._fitted_as(x)
            residual_sum = float(-ops.residual(x, principal, center).to(_F64).sum())
            self.residual_sum = self._check_residual(residual_sum)
            self._set_alpha()
        return self

    def _reset(self) -> None:
        self.statistics = cov_lib.ClassStatistics(1)     # mean and scatter of the features, one class
        self.max_logit_sum = 0.0
        self.residual_sum: Optional[float] = None        # Σ r(x_i) over the fit() rows, when known
        self.principal: Optional[torch.Tensor] = None    # [D, dim] float64
        self.alpha: Optional[float] = None
        self._residual_ms: Optional[float] = None
        self._cast: dict = {}
        self.num_features = self.weight.shape[1]

    def _logits(self, features: torch.Tensor, logits: Optional[torch.Tensor]) -> torch.Tensor:
        if logits is not None:
            _checks.same_size("classes", **{"logits.shape[1]": logits.shape[1],
                                            "weight.shape[0]": self.weight.shape[0]})
            return logits
        return features @ self.weight.to(features).T + self.bias.to(features)

    def _update(self, features, labels, logits) -> None:
        logits = self._logits(_score_dtype(features), logits)
        zeros = torch.zeros(features.shape[0], dtype=torch.int64, device=features.device)
        self.statistics.update(features, zeros)
        self.max_logit_sum += float(logits.max(1).values.to(_F64).sum())
        self.residual_sum = None                          # the second pass covered other data

    def _check_residual(self, value: float) -> float:
        if not value > 0:
            raise ValueError(f"training features have no component outside the principal subspace "
                             f"(dim={self.dim}); lower dim or pass alpha")
        return value

    def _set_alpha(self) -> None:
        n = self.statistics.n
        if self.fixed_alpha is not None:
            self.alpha = float(self.fixed_alpha)
        elif self.residual_sum is not None:
            self.alpha = self.max_logit_sum / self.residual_sum
        else:
            self.alpha = (self.max_logit_sum / n) / math.sqrt(self._check_residual(self._residual_ms))

    def _finalize(self) -> None:
        n = self.statistics.n
        if n < 1:
            raise ValueError("ViM needs at least one training sample")
        shift = self.statistics.mean() - self.center.to(self.statistics.means.device)
        second = self.statistics.within / n + torch.outer(shift, shift)  # (1/n) Σ (x - u)(x - u)ᵀ
        evals, evecs = torch.linalg.eigh(second)                          # ascending
        self.principal = evecs[:, -self.dim:].flip(1).contiguous()
        self._residual_ms = float(evals[: -self.dim].clamp_min(0).sum())
        self._cast = {}
        self._set_alpha()

    def _fitted_as(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = (self.principal.to(x), self.center.to(x))
        return self._cast[key]

    def _score(self, features, logits) -> torch.Tensor:
        x = _score_dtype(features)
        logits = self._logits(x, None if logits is None else _score_dtype(logits).to(x.dtype))
        principal, center = self._fitted_as(x)
        return ops.vim(x, logits, principal, center, self.alpha)

    def _state(self) -> dict[str, torch.Tensor]:
        state = self.statistics.state_dict()
        if state:
            state["max_logit_sum"] = torch.tensor(self.max_logit_sum, dtype=_F64)
            if self.residual_sum is not None:
                state["residual_sum"] = torch.tensor(self.residual_sum, dtype=_F64)
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.max_logit_sum = float(state.pop("max_logit_sum"))
            residual_sum = state.pop("residual_sum", None)
            self.residual_sum = None if residual_sum is None else float(residual_sum)
        self.statistics.load_state_dict(state)


# ====================================================================== logit-based

class _TemperatureMixin:
    """Validates and stores the softmax temperature T > 0 of a logit score."""

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        super().__init__()


class _LogitDetector(OODDetector):
    """Scores that read logits only: nothing to fit; score(logits=...) works without fit()."""

    needs = ()
    needs_fit = False

    def _check_score_inputs(self, features, logits):
        if logits is None:
            raise ValueError(f"{self._name()}.score needs logits [N, C]: call score(logits=...)")
        return None, self._check_logits(logits, None)

    def _check_fit_inputs(self, features, labels, logits):
        return None, None, None  # fit is a no-op; calibrate() sets the threshold

    def _score(self, features, logits) -> torch.Tensor:
        return self._logit_score(_score_dtype(logits))


class EnergyDetector(_TemperatureMixin, _LogitDetector):
    """Liu et al. 2020, "Energy-based out-of-distribution detection".

    score = -E(x) = T logsumexp(logits / T) via ``gencore.ood.energy``.

    Args:
        temperature: T > 0 (default 1, the paper's choice).
    """

    def _logit_score(self, logits):
        return ops.energy(logits, temperature=self.temperature)


class MSPDetector(_TemperatureMixin, _LogitDetector):
    """Hendrycks & Gimpel 2017: maximum softmax probability, max_c softmax(logits / T)_c.

    Via ``gencore.ood.msp``. Args: temperature T > 0 (default 1).
    """

    def _logit_score(self, logits):
        return ops.msp(logits, temperature=self.temperature)


class MaxLogitDetector(_LogitDetector):
    """Hendrycks et al. 2022 ("Scaling out-of-distribution detection..."): max_c logits_c.

    Via ``gencore.ood.max_logit``.
    """

    def _logit_score(self, logits):
        return ops.max_logit(logits)
