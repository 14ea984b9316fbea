"""Out-of-distribution detection: exact kNN, Mahalanobis, logit / feature scores,
covariance statistics and detectors.

Every score: higher = more in-distribution.

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    mahalanobis(features, means, precision_factor, reduce="min") -> [Q] or [Q, C]
    relative_mahalanobis(features, means, precision_factor, background_mean,
                         background_factor, reduce="min") -> [Q] or [Q, C]
    msp(logits, temperature=1.0) -> [N]
    energy(logits, temperature=1.0) -> [N]
    max_logit(logits) -> [N]
    gen(logits, gamma=0.1, top_m=100) -> [N]
    kl_matching(logits, templates) -> [N];  kl_matching_templates(logits) -> [C, C]
    residual(features, principal, center) -> [N]
    vim(features, logits, principal, center, alpha) -> [N]
    vim_fit(features, logits, weight, bias, dim) -> (center, principal, alpha)
    metrics: auroc, aupr_in, aupr_out, fpr_at_tpr, detection_error
    covariance: ClassStatistics, estimators (mle, ridge, shrunk, ledoit_wolf, oas), precision_factor
    detectors: MahalanobisDetector, RelativeMahalanobisDetector, KNNDetector, ViMDetector,
        EnergyDetector, MSPDetector, MaxLogitDetector
    distributed: knn over a bank sharded across torch.distributed ranks
        (imported on first access of ``gencore.ood.distributed``)
"""
from .ops import knn
from .ops import mahalanobis, relative_mahalanobis
from .ops import energy, gen, kl_matching, max_logit, msp, residual, vim
from .logits_fit import kl_matching_templates, vim_fit

__all__ = ["knn"]
__all__ += ["mahalanobis", "relative_mahalanobis"]
__all__ += ["msp", "energy", "max_logit", "gen", "kl_matching", "kl_matching_templates", "residual", "vim",
            "vim_fit"]

from . import metrics
from . import covariance
from .detectors import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                        OODDetector, RelativeMahalanobisDetector, ViMDetector)

__all__ += ["metrics", "covariance", "OODDetector", "MahalanobisDetector", "RelativeMahalanobisDetector",
            "KNNDetector", "ViMDetector", "EnergyDetector", "MSPDetector", "MaxLogitDetector", "distributed"]

# Submodules imported on first attribute access (PEP 562), so ``import gencore``
# stays cheap: ``gencore.ood.distributed`` works without an explicit import.
_LAZY_SUBMODULES = ("distributed",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
