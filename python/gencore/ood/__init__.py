"""Out-of-distribution detection: exact kNN, Mahalanobis, covariance statistics and detectors.

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    mahalanobis(features, means, precision_factor, reduce="min") -> [Q] or [Q, C]
    relative_mahalanobis(features, means, precision_factor, background_mean,
                         background_factor, reduce="min") -> [Q] or [Q, C]
    covariance: ClassStatistics, estimators (mle, ridge, shrunk, ledoit_wolf, oas), precision_factor
    detectors (score: higher = more in-distribution): MahalanobisDetector,
        RelativeMahalanobisDetector, KNNDetector, ViMDetector, EnergyDetector,
        MSPDetector, MaxLogitDetector
"""
from .ops import knn
from .ops import mahalanobis, relative_mahalanobis

__all__ = ["knn"]
__all__ += ["mahalanobis", "relative_mahalanobis"]

from . import covariance
from .detectors import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                        OODDetector, RelativeMahalanobisDetector, ViMDetector)

__all__ += ["covariance", "OODDetector", "MahalanobisDetector", "RelativeMahalanobisDetector",
            "KNNDetector", "ViMDetector", "EnergyDetector", "MSPDetector", "MaxLogitDetector"]
