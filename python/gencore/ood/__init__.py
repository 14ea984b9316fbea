"""Out-of-distribution detection: exact kNN, covariance statistics and detectors.

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    covariance: ClassStatistics, estimators (mle, ridge, shrunk, ledoit_wolf, oas), precision_factor
    detectors (score: higher = more in-distribution): MahalanobisDetector,
        RelativeMahalanobisDetector, KNNDetector, ViMDetector, EnergyDetector,
        MSPDetector, MaxLogitDetector
"""
from .ops import knn
from . import covariance
from .detectors import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                        OODDetector, RelativeMahalanobisDetector, ViMDetector)

__all__ = ["knn", "covariance", "OODDetector", "MahalanobisDetector", "RelativeMahalanobisDetector",
           "KNNDetector", "ViMDetector", "EnergyDetector", "MSPDetector", "MaxLogitDetector"]
