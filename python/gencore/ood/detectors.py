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
  ``score`` is differentiable with respect to features (and logits) where
  its math is: the Mahalanobis, kNN, ViM, energy, MSP and max-logit scores
  all are, through the ops' autograd formulas. It has no data-dependent
  Python control flow, so ``torch.compile(detector.score, fullgraph=True)``
  traces it (fit the detector first; compiled scores skip the eager-only
  renaming of an op's NaN message described below).
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
  arguments. ``load_state_dict`` refuses a state that does not fit the
  detector (another estimator's statistics, another feature dimension or
  class count, missing or extra fields), naming the field. Derived
  quantities (precision factors, subspaces) are recomputed from the
  statistics by the same deterministic code, so scores round-trip exactly.

Inputs: features [N, D] floating tensors (float32 is the fast path; fp16 and
bf16 are scored in float32), labels [N] integer tensors (any values: the
classes are the sorted unique labels, ``classes_``, unless ``num_classes``
fixes them to 0 .. C-1), logits [N, C] floating tensors. Wrong types or
dtypes raise TypeError, wrong shapes, labels out of range, a feature
dimension that differs from the one fitted and NaN/inf raise ValueError,
scoring before fitting raises RuntimeError; each names the argument.

NaN/inf: nothing is scanned twice. At score time the ops refuse NaN/inf
themselves (on CPU, inside their first pass; on CUDA they do not synchronise
and non-finite rows come out NaN). At fit time the statistics find them from
their own small accumulators (class sums, scatter diagonal, row norms) and
only then scan the input for the first bad row.

Every public method is one line that hands its arguments to a private
implementation, so an input adapter (e.g. for numpy arrays) can wrap each
public method without the methods calling one another.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .. import _arrays, _checks
from . import covariance as cov_lib
from . import ops

__all__ = [
    "OODDetector", "MahalanobisDetector", "RelativeMahalanobisDetector", "KNNDetector",
    "ViMDetector", "EnergyDetector", "MSPDetector", "MaxLogitDetector",
]

_F64 = torch.float64
_I64 = torch.int64


def _score_dtype(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 are scored in float32, as every ood op computes them."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _renamed(exc: ValueError, op_name: str, name: str) -> ValueError:
    """The op's ValueError about its argument ``op_name``, told in terms of the detector's ``name``."""
    message = str(exc)
    if message.startswith(op_name + " "):
        return ValueError(name + message[len(op_name):])
    return exc


def _state_tensor(state: dict, key: str, dtype: torch.dtype, ndim: int) -> torch.Tensor:
    t = state.get(key)
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != ndim:
        raise ValueError(f"state['fit.{key}'] must be a {ndim}-D {str(dtype).replace('torch.', '')} tensor, got "
                         f"{(t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t


def _expect_keys(state: dict, required: set, optional: set, owner: str) -> None:
    missing, extra = sorted(required - set(state)), sorted(set(state) - required - optional)
    if missing:
        raise ValueError(f"{owner} state is missing fields {['fit.' + k for k in missing]}")
    if extra:
        raise ValueError(f"{owner} state has unexpected fields {['fit.' + k for k in extra]}")


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

    # --- public protocol: each method is the one place its inputs enter -------------

    @_arrays.accepts_arrays
    def fit(self, features: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
            logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Fits from scratch (forgets earlier data and calibration) and finalizes. Returns self."""
        return self._fit(features, labels, logits)

    @_arrays.accepts_arrays
    def partial_fit(self, features: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                    logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Adds a batch of training data; the detector is finalized lazily when next used.

        Calibration scores from before are dropped, since the scores they
        came from change with the fit. A refused batch leaves the detector
        as it was.
        """
        return self._partial_fit(features, labels, logits)

    @_arrays.accepts_arrays
    def score(self, features: Optional[torch.Tensor] = None, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N] in-distribution score: higher means more in-distribution."""
        return self._checked_score(features, logits)

    @_arrays.accepts_arrays
    def ood_score(self, features: Optional[torch.Tensor] = None, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N] out-of-distribution score, ``-score``: higher means more OOD."""
        return -self._checked_score(features, logits)

    @_arrays.accepts_arrays
    def calibrate(self, features: Optional[torch.Tensor] = None,
                  logits: Optional[torch.Tensor] = None) -> "OODDetector":
        """Scores held-out in-distribution data and keeps the scores for ``threshold``.

        Use data the detector was not fitted on (see the module docstring).
        Replaces earlier calibration; dropped again by ``partial_fit``/``fit``.
        """
        return self._calibrate(features, logits)

    def threshold(self, tpr: float = 0.95) -> float:
        """Score t with a fraction >= ``tpr`` of the calibration scores >= t.

        With M calibration scores sorted descending s_1 >= ... >= s_M,
        t = s_k for k = ceil(tpr M): exactly the k best-scoring calibration
        samples (more only with ties at t) are accepted as in-distribution.

        Args:
            tpr: target true-positive rate on in-distribution data, in (0, 1].
        """
        return self._threshold(tpr)

    @_arrays.accepts_arrays
    def is_in_distribution(self, features: Optional[torch.Tensor] = None,
                           logits: Optional[torch.Tensor] = None, tpr: float = 0.95) -> torch.Tensor:
        """[N] bool: ``score >= threshold(tpr)``."""
        t = self._threshold(tpr)
        return self._checked_score(features, logits) >= t

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted state as a dict of tensors (see the module docstring)."""
        state = {f"fit.{k}": v for k, v in self._state().items()}
        if self.num_features is not None and self._fitted:
            state["num_features"] = torch.tensor(self.num_features, dtype=_I64)
        if self._calibration is not None:
            state["calibration_scores"] = self._calibration.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "OODDetector":
        """Restores ``state_dict()`` output into a detector built with the same arguments.

        Raises ValueError naming the field when the state does not fit this
        detector; the detector is unchanged then.
        """
        return self._load(state)

    # --- implementations -------------------------------------------------------------

    def _fit(self, features, labels, logits) -> "OODDetector":
        features, labels, logits = self._check_fit_inputs(features, labels, logits, fresh=True)
        if features is not None and features.shape[0] == 0:
            raise ValueError(f"{self._name()}.fit got features with 0 rows (shape {tuple(features.shape)}); "
                             "fitting needs training rows")
        self.num_features, self._calibration, self._fitted = None, None, False
        self._reset()
        self._partial_fit_checked(features, labels, logits)
        self._finalize()
        self._stale = False
        return self

    def _partial_fit(self, features, labels, logits) -> "OODDetector":
        features, labels, logits = self._check_fit_inputs(features, labels, logits, fresh=False)
        return self._partial_fit_checked(features, labels, logits)

    def _partial_fit_checked(self, features, labels, logits) -> "OODDetector":
        if features is not None and features.shape[0] == 0:
            return self  # an empty chunk of a stream adds nothing
        self._update(features, labels, logits)
        if features is not None and self.num_features is None:
            self.num_features = features.shape[1]
        self._fitted, self._stale, self._calibration = True, True, None
        return self

    def _checked_score(self, features, logits) -> torch.Tensor:
        self._ready()
        features, logits = self._check_score_inputs(features, logits)
        return self._score(features, logits)

    def _calibrate(self, features, logits) -> "OODDetector":
        scores = self._checked_score(features, logits)
        if scores.numel() == 0:
            raise ValueError("calibration needs at least one in-distribution sample (features or logits "
                             "have 0 rows)")
        self._calibration = scores.detach().to(device="cpu", dtype=_F64).sort(descending=True).values
        return self

    def _threshold(self, tpr) -> float:
        if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr <= 1.0:
            raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
        if self._calibration is None:
            raise RuntimeError(f"{type(self).__name__} has no calibration: call calibrate(id_features) "
                               "with held-out in-distribution data first")
        m = self._calibration.numel()
        k = min(m, max(1, math.ceil(tpr * m - 1e-9)))  # the epsilon absorbs tpr*m rounding up
        return float(self._calibration[k - 1])

    def _load(self, state) -> "OODDetector":
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("state must be a dict of tensors, as returned by state_dict()")
        known = {"num_features", "calibration_scores"}
        unknown = [k for k in state if k not in known and not k.startswith("fit.")]
        if unknown:
            raise ValueError(f"unexpected keys in state for {self._name()}: {unknown}")
        fit_state = {k[4:]: v.clone() for k, v in state.items() if k.startswith("fit.")}
        num_features = None
        if "num_features" in state:
            t = state["num_features"]
            if t.dim() != 0 or t.dtype.is_floating_point or int(t) < 1:
                raise ValueError(f"state['num_features'] must be a positive integer scalar, got {t!r}")
            num_features = int(t)
        fixed = self._fixed_num_features()
        if fixed is not None and num_features is not None and num_features != fixed:
            raise ValueError(f"state['num_features'] = {num_features}, but this {self._name()} has D={fixed}")
        if fit_state and num_features is None:
            raise ValueError("state is missing 'num_features' (saved by state_dict() with every fitted state)")
        calibration = state.get("calibration_scores")
        if calibration is not None and (calibration.dim() != 1 or calibration.dtype != _F64
                                        or calibration.numel() == 0):
            raise ValueError(f"state['calibration_scores'] must be a non-empty 1-D float64 tensor, got "
                             f"{calibration.dtype} of shape {tuple(calibration.shape)}")
        if calibration is not None and calibration.numel() > 1 and bool((calibration[1:] > calibration[:-1]).any()):
            raise ValueError("state['calibration_scores'] must be sorted in descending order")
        # Validate into a fresh instance of the fitted state first, so a refused state changes nothing.
        saved = self.__dict__.copy()  # _reset() builds new objects, so this keeps the old state intact
        try:
            self._reset()
            self.num_features = fixed if fixed is not None else num_features
            self._load_state(fit_state, num_features)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        self._fitted = bool(fit_state)
        self._stale = self._fitted
        self._calibration = None if calibration is None else calibration.clone()
        return self

    # --- input checks -----------------------------------------------------------

    def _name(self) -> str:
        return type(self).__name__

    def _fixed_num_features(self) -> Optional[int]:
        """D set by the constructor (ViM's weight), else None."""
        return None

    def _check_features(self, features, *, expected_d: Optional[int]) -> torch.Tensor:
        _checks.tensor(features, "features", ndim=2)
        d = features.shape[1]
        if d == 0:
            raise ValueError(f"features have dimension D=0 (shape {tuple(features.shape)})")
        if expected_d is not None and d != expected_d:
            raise ValueError(f"features have D={d} but {self._name()} was fitted on D={expected_d}")
        return features

    @staticmethod
    def _check_logits(logits, n: Optional[int]) -> torch.Tensor:
        _checks.tensor(logits, "logits", ndim=2)
        if n is not None and logits.shape[0] != n:
            raise ValueError(f"logits have {logits.shape[0]} rows, features have {n}")
        if logits.shape[1] == 0:
            raise ValueError(f"logits have zero classes (shape {tuple(logits.shape)})")
        return logits

    def _check_fit_inputs(self, features, labels, logits, *, fresh: bool):
        n = None
        if "features" in self.needs:
            if features is None:
                raise ValueError(f"{self._name()}.fit needs features [N, D]")
            expected = self._fixed_num_features() or (None if fresh else self.num_features)
            features = self._check_features(features, expected_d=expected)
            n = features.shape[0]
        if "labels" in self.needs:
            if labels is None:
                raise ValueError(f"{self._name()}.fit needs labels [N] (class labels)")
            labels = cov_lib.check_integer_labels(labels, n)
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
            features = self._check_features(features, expected_d=self.num_features)
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

    def _load_state(self, state: dict[str, torch.Tensor], num_features: Optional[int]) -> None:
        if state:
            raise ValueError(f"unexpected fitted state for {self._name()}: {sorted('fit.' + k for k in state)}")


def _check_statistics_state(statistics: cov_lib.ClassStatistics, state: dict, num_features: int, owner: str) -> None:
    """Loads ``state`` (ClassStatistics fields) into ``statistics``; the feature dimension must match."""
    try:
        statistics.load_state_dict(state, field_prefix="fit.")
    except ValueError as exc:
        raise ValueError(f"{owner}: {exc}") from None
    if statistics.num_features != num_features:
        raise ValueError(f"{owner}: state['fit.means'] has D={statistics.num_features} features but "
                         f"state['num_features'] = {num_features}")


# ====================================================================== Gaussian

class MahalanobisDetector(OODDetector):
    """Lee et al. 2018: class-conditional Gaussians with a shared (tied) covariance.

    Fit: class means μ_c and the tied within-class covariance Σ (MLE
    (1/n) Σ_i (x_i - μ_{y_i})(x_i - μ_{y_i})ᵀ, optionally regularized by
    ``estimator``), streamed as float64 ``ClassStatistics`` (float32 rows
    are centred and multiplied in float32, accumulated in float64: see
    ``ClassStatistics.update`` for the accuracy). Score:

        score(x) = -min_c (x - μ_c)ᵀ Σ^-1 (x - μ_c)

    computed by ``gencore.ood.mahalanobis`` with the precision factor L
    (Σ^-1 = L Lᵀ) of ``covariance.precision_factor`` (pseudo-inverse with a
    warning when Σ is singular). pytorch-ood's ``Mahalanobis`` outlier score
    is 0.5 min_c (x - μ_c)ᵀ (W + 1e-6 I)^-1 (x - μ_c) with W the unnormalised
    scatter: the same ranking as ``estimator="ridge"`` with λ = 1e-6 / N.

    Classes: the sorted unique label values seen (``classes_``), or 0 .. C-1
    with ``num_classes=C`` (labels outside are refused at once, and every
    one of the C classes must then have samples). ``means`` rows and
    ``nearest_class`` follow ``classes_``.

    Args:
        covariance: "tied" (one covariance for all classes, as in the paper).
        estimator: "mle" (default), "ridge" (Σ + λI), "shrunk"
            ((1-s)Σ + s tr(Σ)/D I), "ledoit_wolf" or "oas" (see
            ``covariance``). Only "ledoit_wolf" keeps fourth moments (one
            more pass per batch).
        num_classes: C, or None (default) to take the label values seen.
        ridge_lambda: λ for estimator="ridge" (default 1e-6).
        shrinkage: s for estimator="shrunk" (default 0.1).
        rtol: eigenvalue tolerance of the pseudo-inverse fallback (default D eps).

    fit needs features [N, D] and labels [N]; every class needs >= 2 samples.
    score: [N] float32 (float64 for float64 features), differentiable with
    respect to features.
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

    @_arrays.accepts_arrays
    def nearest_class(self, features: torch.Tensor) -> torch.Tensor:
        """[N] int64 label value (from ``classes_``) of the class with the nearest mean (Mahalanobis).

        Memory: the [N, C] distances (``gencore.ood.mahalanobis(reduce="none")``).
        """
        return self._nearest_class(features)

    @property
    def classes_(self) -> Optional[torch.Tensor]:
        """[C] int64 class label values, ascending (None before fit)."""
        return None if self.statistics.counts is None else self.statistics.classes

    def _nearest_class(self, features) -> torch.Tensor:
        self._ready()
        features, _ = self._check_score_inputs(features, None)
        x = _score_dtype(features)
        means, factor = self._fitted_as(x, self.means, self.precision_factor)
        distances = ops.mahalanobis(x, means, factor, reduce="none")
        return self.statistics.classes.to(distances.device)[distances.argmin(1)]

    def _reset(self) -> None:
        self.statistics = cov_lib.ClassStatistics(
            self.num_classes, fourth_moments=self.estimator in cov_lib.FOURTH_MOMENT_ESTIMATORS)
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
        key = (x.dtype, x.device, len(tensors))
        if key not in self._cast:
            self._cast[key] = tuple(t.to(device=x.device, dtype=x.dtype).contiguous() for t in tensors)
        return self._cast[key]

    def _score(self, features, logits) -> torch.Tensor:
        x = _score_dtype(features)
        means, factor = self._fitted_as(x, self.means, self.precision_factor)
        return -ops.mahalanobis(x, means, factor, reduce="min")

    def _state(self) -> dict[str, torch.Tensor]:
        state = self.statistics.state_dict()
        if state:
            state["estimator"] = torch.tensor(cov_lib.ESTIMATORS.index(self.estimator), dtype=_I64)
        return state

    def _load_state(self, state: dict[str, torch.Tensor], num_features: Optional[int]) -> None:
        if not state:
            return
        code = state.pop("estimator", None)
        if code is None:
            raise ValueError(f"{self._name()} state is missing 'fit.estimator'")
        if code.dim() != 0 or code.dtype != _I64 or not 0 <= int(code) < len(cov_lib.ESTIMATORS):
            raise ValueError(f"state['fit.estimator'] must be an int64 scalar in [0, {len(cov_lib.ESTIMATORS)}), "
                             f"got {code!r}")
        saved = cov_lib.ESTIMATORS[int(code)]
        if saved != self.estimator:
            raise ValueError(f"state['fit.estimator'] says the statistics were fitted for estimator={saved!r}; "
                             f"this {self._name()} has estimator={self.estimator!r}: build it with "
                             f"estimator={saved!r} to load them")
        _check_statistics_state(self.statistics, state, num_features, self._name())


class RelativeMahalanobisDetector(MahalanobisDetector):
    """Ren et al. 2021, "A simple fix to Mahalanobis distance for improving near-OOD detection".

    Adds a background Gaussian N(μ_0, Σ_0) fitted to all training features,
    labels ignored (from the same ``ClassStatistics``, same ``estimator``).
    With d_c the class distances of ``MahalanobisDetector`` and d_0 the
    background one:

        score(x) = -(min_c d_c(x) - d_0(x))

    computed by ``gencore.ood.relative_mahalanobis`` (differentiable with
    respect to features). pytorch-ood's ``RMD`` is min_c d_c - d_0 with both
    covariances the unnormalised scatters plus 1e-6 I: the same ranking up
    to that ridge. Arguments and classes as ``MahalanobisDetector``.
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
_TINY_NORM = 1e-12  # as torch.nn.functional.normalize's eps


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


def _unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / max(||x_i||, 1e-12), the norms [N, 1]): torch.nn.functional.normalize, keeping the norms."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norms.clamp_min(_TINY_NORM), norms


class KNNDetector(OODDetector):
    """Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors".

    The bank is the (optionally subsampled) training features, L2-normalised;
    a query is normalised the same way and

        score(x) = -|| x/||x|| - z_(k) ||,

    minus the Euclidean distance to its k-th nearest bank row z_(k), found
    exactly by ``gencore.ood.knn`` (any k up to the bank size; exact ties go
    to the earlier training row). pytorch-ood's ``KNN`` outlier score is the
    same distance (k=50, normalised, by scikit-learn).

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
        normalize: L2-normalise bank and queries (default True, as in the
            paper): x / max(||x||, 1e-12), as ``torch.nn.functional.normalize``.
        seed: seed of the subsampling keys.

    partial_fit appends to the bank. Memory: the bank, D + 1 values per kept
    row (the features in the training dtype plus an int64 position; with a
    subsample also a float64 key, which lets a fixed-size sample keep
    streaming after ``load_state_dict``). NaN/inf in training rows are found
    from the row norms (normalize=True) or one sum (normalize=False).

    score: [N] float32 (float64 for a float64 bank), differentiable with
    respect to features (through the normalisation and the kNN op).
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
        # (rows, keys or None, positions) per streamed part
        self._parts: list[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]] = []
        self._pending_rows = 0
        self.rows_seen = 0

    def _bank_rows(self, features: torch.Tensor) -> torch.Tensor:
        """The training rows as the bank keeps them: normalised, never aliasing the caller's tensor."""
        x = _score_dtype(features.detach())
        if self.normalize:
            rows, norms = _unit_rows(x)
            finite = bool(torch.isfinite(norms).all())  # a NaN/inf anywhere in a row reaches its norm
        else:
            rows = x.clone() if x.data_ptr() == features.data_ptr() else x
            finite = bool(torch.isfinite(x.sum()))     # and anywhere in x reaches the sum
        if not finite and not cov_lib.refuse_non_finite(x, "features") and self.normalize:
            raise ValueError(f"features have rows whose norm overflows {x.dtype} (|x| > ~1e19 in float32); "
                             "scale them down or pass float64")
        return rows

    def _update(self, features, labels, logits) -> None:
        n = features.shape[0]
        rows = self._bank_rows(features)
        keys = None if self.subsample is None else _row_keys(self.seed, self.rows_seen, n)
        positions = torch.arange(self.rows_seen, self.rows_seen + n, dtype=_I64)
        self.rows_seen += n
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
        if not self._parts or (len(self._parts) == 1 and not (isinstance(self.subsample, int)
                                                              and self._parts[0][0].shape[0] > self.subsample)):
            return  # already one bank (so the score path, and its tracing, touch nothing here)
        rows = torch.cat([p[0] for p in self._parts])
        keys = None if self.subsample is None else torch.cat([p[1] for p in self._parts])
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
        x = _score_dtype(features)
        if self.normalize:
            x = _unit_rows(x)[0]
        x = x.to(device=bank.device, dtype=bank.dtype)
        try:
            values, _ = ops.knn(x, bank, self.k, "l2")
        except ValueError as exc:  # the op names its argument "queries"
            raise _renamed(exc, "queries", "features") from None
        return -values[:, -1]

    def _state(self) -> dict[str, torch.Tensor]:
        if not self._parts:
            return {}
        self._consolidate()
        rows, keys, positions = self._parts[0]
        state = {"bank": rows.clone(), "positions": positions.clone(),
                 "rows_seen": torch.tensor(self.rows_seen, dtype=_I64),
                 "normalize": torch.tensor(int(self.normalize), dtype=_I64)}
        if keys is not None:
            state["keys"] = keys.clone()
        return state

    def _load_state(self, state: dict[str, torch.Tensor], num_features: Optional[int]) -> None:
        if not state:
            return
        owner = self._name()
        keyed = self.subsample is not None
        _expect_keys(state, {"bank", "positions", "rows_seen", "normalize"} | ({"keys"} if keyed else set()),
                     set(), f"{owner}(subsample={self.subsample!r})")
        bank = state["bank"]
        if not isinstance(bank, torch.Tensor) or bank.dim() != 2 or not bank.dtype.is_floating_point:
            raise ValueError(f"state['fit.bank'] must be a floating [M, D] tensor, got "
                             f"{getattr(bank, 'dtype', type(bank))} of shape {tuple(getattr(bank, 'shape', ()))}")
        if bank.shape[1] != num_features:
            raise ValueError(f"state['fit.bank'] has D={bank.shape[1]} but state['num_features'] = {num_features}")
        m = bank.shape[0]
        positions = _state_tensor(state, "positions", _I64, 1)
        if positions.shape[0] != m:
            raise ValueError(f"state['fit.positions'] has {positions.shape[0]} entries, the bank {m} rows")
        if keyed and _state_tensor(state, "keys", _F64, 1).shape[0] != m:
            raise ValueError(f"state['fit.keys'] has {state['keys'].shape[0]} entries, the bank {m} rows")
        if int(state["normalize"]) != int(self.normalize):
            raise ValueError(f"state['fit.normalize'] = {bool(state['normalize'])}: the bank was saved "
                             f"{'normalised' if int(state['normalize']) else 'raw'}, this {owner} has "
                             f"normalize={self.normalize}")
        rows_seen = int(state["rows_seen"])
        if rows_seen < m:
            raise ValueError(f"state['fit.rows_seen'] = {rows_seen} is smaller than the bank ({m} rows)")
        self._parts = [(bank, state.get("keys"), positions)]
        self._pending_rows = m
        self.rows_seen = rows_seen


# ====================================================================== ViM

class ViMDetector(OODDetector):
    """Wang et al. 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching".

    With the classifier's last layer (weight W [C, D], bias b [C]):
    origin u = -pinv(W) b; principal subspace P = the top ``dim``
    eigenvectors of the uncentred second moment (1/n) Σ (x - u)(x - u)ᵀ of
    the training features; residual r(x) = ||(I - P Pᵀ)(x - u)||; matching
    scale α = Σ_i max_c logit_ic / Σ_i r(x_i);

        score(x) = logsumexp_c logit_c(x) - α r(x)

    computed by ``gencore.ood.vim`` (differentiable with respect to features
    and logits). When dim >= D / 2 the residual is taken against the
    complement Q of P (the other D - dim eigenvectors, Q Qᵀ = I - P Pᵀ):
    z = (x - u) Q by one torch GEMM (which also gives the logits when they
    are not passed), in blocks of 8192 rows without an [N, D] temporary,
    and the op scores z with an empty subspace, so
    ||z|| = r(x) with no cancellation and the op's NaN refusal and
    gradients apply unchanged; otherwise the op multiplies by P itself.
    ``fit`` gives exactly the center, subspace and α of
    ``gencore.ood.vim_fit`` (the paper's code; pytorch-ood's ``ViM(d=dim)``
    computes the same score, negated, in float32), but from streamed
    float64 statistics, so ``partial_fit`` can continue it.

    Streaming and α: the mean residual norm needs the subspace, which is
    only known once all data are in, so ``fit`` (which has the rows in hand)
    makes a second pass for it (one [N, D] x [D, min(dim, D - dim)] GEMM:
    the residual against the complement of P, or ``gencore.ood.residual``
    when P is the narrower). A detector built by ``partial_fit`` has no
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
    not given (at fit and at score). NaN/inf in given training logits are
    found from their row minima and maxima (one pass, which α needs anyway).
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

    def _fixed_num_features(self) -> Optional[int]:
        return self.weight.shape[1]

    def _fit(self, features, labels, logits) -> "ViMDetector":
        super()._fit(features, labels, logits)
        if self.fixed_alpha is None:
            # The paper's α: a second pass over the rows, now that P is known.
            self.residual_sum = self._check_residual(self._residual_norm_sum(_score_dtype(features.detach())))
            self._set_alpha()
        return self

    def _residual_norm_sum(self, x: torch.Tensor) -> float:
        """Σ_i ||(I - P Pᵀ)(x_i - u)|| over rows x, summed in float64 (the paper's α denominator)."""
        if not self._by_complement():
            principal, center = self._fitted_as(x)
            return float(-ops.residual(x, principal, center).to(_F64).sum())
        total = torch.zeros((), dtype=_F64, device=x.device)
        for _, coordinates in self._complement_blocks(x, columns=self._complement.shape[1]):
            total += torch.linalg.vector_norm(coordinates, dim=1).sum(dtype=_F64)
        return float(total)

    def _by_complement(self) -> bool:
        """Whether the residual is computed against the complement Q of P (no wider than P)."""
        return self.weight.shape[1] - self.dim <= self.dim

    def _complement_as(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """In x's dtype and device: (M = [Q | Wᵀ] [D, k + C], shift = [0_k | u Wᵀ + b] [k + C],
        u [D], an empty [k, 0] principal, zeros [k]), k = D - dim, Q the complement of P."""
        key = ("complement", x.dtype, x.device)
        if key not in self._cast:
            k = self._complement.shape[1]
            complement, center = self._complement.to(x), self.center.to(x)
            weight, bias = self.weight.to(x), self.bias.to(x)
            self._cast[key] = (torch.cat([complement, weight.T], 1).contiguous(),
                               torch.cat([x.new_zeros(k), center @ weight.T + bias]), center,
                               x.new_empty((k, 0)), x.new_zeros(k))
        return self._cast[key]

    def _complement_blocks(self, x: torch.Tensor, out: Optional[torch.Tensor] = None, columns: int = -1):
        """Yields (start, [(x_b - u) Q | x_b Wᵀ + b][:, :columns]) for blocks of 8192 rows
        (written into ``out[start:]`` when given)."""
        both, shift, center = self._complement_as(x)[:3]
        both, shift = (both, shift) if columns < 0 else (both[:, :columns], shift[:columns])
        for start in range(0, x.shape[0], 8192):
            rows = x[start:start + 8192] - center
            if out is None:
                yield start, torch.addmm(shift, rows, both)
            else:
                yield start, torch.addmm(shift, rows, both, out=out[start:start + rows.shape[0]])

    def _residual_coordinates(self, x: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [N, k], logits [N, C] or None) with z = (x - u) Q, so ||z_i|| = ||(I - P Pᵀ)(x_i - u)||
        (Q Qᵀ = I - P Pᵀ), and the logits x Wᵀ + b = (x - u) Wᵀ + (u Wᵀ + b) from the same GEMM."""
        both, shift, center = self._complement_as(x)[:3]
        k = self._complement.shape[1]
        columns = both.shape[1] if with_logits else k
        if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            out = torch.addmm(shift[:columns], x - center, both[:, :columns])  # differentiable, traceable
        else:
            out = x.new_empty((x.shape[0], columns))
            for _ in self._complement_blocks(x, out, columns):  # no [N, D] temporary
                pass
        return out[:, :k], (out[:, k:] if with_logits else None)

    def _reset(self) -> None:
        self.statistics = cov_lib.ClassStatistics(1)     # mean and scatter of the features, one class
        self.max_logit_sum = 0.0
        self.residual_sum: Optional[float] = None        # Σ r(x_i) over the fit() rows, when known
        self.principal: Optional[torch.Tensor] = None    # [D, dim] float64
        self._complement: Optional[torch.Tensor] = None  # [D, D - dim] float64, the other eigenvectors
        self.alpha: Optional[float] = None
        self._residual_ms: Optional[float] = None
        self._cast: dict = {}
        self.num_features = self.weight.shape[1]

    def _logits(self, features: torch.Tensor, logits: Optional[torch.Tensor]) -> torch.Tensor:
        if logits is not None:
            _checks.same_size("classes", **{"logits.shape[1]": logits.shape[1],
                                            "weight.shape[0]": self.weight.shape[0]})
            return logits
        key = ("head", features.dtype, features.device)
        if key not in self._cast:
            self._cast[key] = (self.weight.to(features).T, self.bias.to(features))
        weight_t, bias = self._cast[key]
        return torch.addmm(bias, features, weight_t)

    def _update(self, features, labels, logits) -> None:
        x = _score_dtype(features.detach())
        zeros = torch.zeros(x.shape[0], dtype=_I64, device=x.device)
        if logits is not None:  # row minima and maxima: a NaN/inf anywhere in logits reaches one of them
            logits = self._logits(x, logits.detach())
            low, high = torch.aminmax(logits, dim=1)
            if not (bool(torch.isfinite(low).all()) and bool(torch.isfinite(high).all())):
                cov_lib.refuse_non_finite(x, "features")  # features are named first, as below
                cov_lib.refuse_non_finite(logits, "logits")
            max_logit_sum = float(high.to(_F64).sum())
        else:  # x Wᵀ + b by blocks of 8192 rows: no [N, C] logits in memory
            total = torch.zeros((), dtype=_F64, device=x.device)
            for start in range(0, x.shape[0], 8192):
                total += self._logits(x[start:start + 8192], None).amax(dim=1).sum(dtype=_F64)
            max_logit_sum = float(total)
        self.statistics.update(x, zeros)                  # refuses NaN/inf in features (state unchanged)
        if not math.isfinite(max_logit_sum):              # finite features whose logits overflow
            raise ValueError(f"the logits x Wᵀ + b of these features overflow {x.dtype}")
        self.max_logit_sum += max_logit_sum
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
        self._complement = evecs[:, :-self.dim]
        self._residual_ms = float(evals[: -self.dim].clamp_min(0).sum())
        self._cast = {}
        self._set_alpha()

    def _fitted_as(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("subspace", x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = (self.principal.to(x), self.center.to(x))
        return self._cast[key]

    def _score(self, features, logits) -> torch.Tensor:
        x = _score_dtype(features)
        computed = logits is None
        if self._by_complement():
            # The op scores the residual coordinates z = (x - u) Q against an empty
            # subspace: ||z|| is the residual norm, and the op still refuses NaN/inf
            # (a bad feature row is a bad row of z) and gives the gradient through z.
            rows, own_logits = self._residual_coordinates(x, with_logits=computed)
            principal, center = self._complement_as(x)[3:]
            logits = own_logits if computed else self._logits(x, _score_dtype(logits).to(x.dtype))
        else:
            rows, (principal, center) = x, self._fitted_as(x)
            logits = self._logits(x, None if computed else _score_dtype(logits).to(x.dtype))
        try:
            return ops.vim(rows, logits, principal, center, self.alpha)
        except ValueError as exc:  # logits computed from features: a bad feature row shows there first
            raise (_renamed(exc, "logits", "features") if computed else exc) from None

    def _state(self) -> dict[str, torch.Tensor]:
        state = self.statistics.state_dict()
        if state:
            state["max_logit_sum"] = torch.tensor(self.max_logit_sum, dtype=_F64)
            state["dim"] = torch.tensor(self.dim, dtype=_I64)
            if self.residual_sum is not None:
                state["residual_sum"] = torch.tensor(self.residual_sum, dtype=_F64)
        return state

    def _load_state(self, state: dict[str, torch.Tensor], num_features: Optional[int]) -> None:
        if not state:
            return
        max_logit_sum = _state_tensor(state, "max_logit_sum", _F64, 0)
        dim = _state_tensor(state, "dim", _I64, 0)
        if int(dim) != self.dim:
            raise ValueError(f"state['fit.dim'] = {int(dim)}: the state was fitted with dim={int(dim)}, this "
                             f"{self._name()} has dim={self.dim}")
        residual_sum = state.pop("residual_sum", None)
        if residual_sum is not None:
            residual_sum = _state_tensor({"residual_sum": residual_sum}, "residual_sum", _F64, 0)
        del state["max_logit_sum"], state["dim"]
        _check_statistics_state(self.statistics, state, self.weight.shape[1], self._name())
        self.max_logit_sum = float(max_logit_sum)
        self.residual_sum = None if residual_sum is None else float(residual_sum)


# ====================================================================== logit-based

class _TemperatureMixin:
    """Validates and stores the softmax temperature T > 0 of a logit score."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = _checks.real(temperature, "temperature", positive=True)
        super().__init__()


class _LogitDetector(OODDetector):
    """Scores that read logits only: nothing to fit; score(logits=...) works without fit().

    fit/partial_fit accept and ignore their arguments; calibrate() sets the threshold.
    """

    needs = ()
    needs_fit = False

    def _check_score_inputs(self, features, logits):
        if logits is None:
            raise ValueError(f"{self._name()}.score needs logits [N, C]: call score(logits=...)")
        return None, self._check_logits(logits, None)

    def _check_fit_inputs(self, features, labels, logits, *, fresh: bool):
        return None, None, None

    def _score(self, features, logits) -> torch.Tensor:
        return self._logit_score(_score_dtype(logits))


class EnergyDetector(_TemperatureMixin, _LogitDetector):
    """Liu et al. 2020, "Energy-based out-of-distribution detection".

    score = -E(x) = T logsumexp(logits / T) via ``gencore.ood.energy``
    (pytorch-ood's ``EnergyBased`` outlier score is E(x)). [N], differentiable.

    Args:
        temperature: T > 0 (default 1, the paper's choice).
    """

    def _logit_score(self, logits):
        return ops.energy(logits, temperature=self.temperature)


class MSPDetector(_TemperatureMixin, _LogitDetector):
    """Hendrycks & Gimpel 2017: maximum softmax probability, max_c softmax(logits / T)_c.

    Via ``gencore.ood.msp`` (pytorch-ood's ``MaxSoftmax`` outlier score is
    its negative). [N], differentiable. Args: temperature T > 0 (default 1).
    """

    def _logit_score(self, logits):
        return ops.msp(logits, temperature=self.temperature)


class MaxLogitDetector(_LogitDetector):
    """Hendrycks et al. 2022 ("Scaling out-of-distribution detection..."): max_c logits_c.

    Via ``gencore.ood.max_logit`` (pytorch-ood's ``MaxLogit`` outlier score
    is its negative). [N], differentiable (to the first maximal logit).
    """

    def _logit_score(self, logits):
        return ops.max_logit(logits)
