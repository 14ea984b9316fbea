"""Out-of-distribution detection: exact kNN and covariance statistics.

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    covariance: ClassStatistics, estimators (mle, ridge, shrunk, ledoit_wolf, oas), precision_factor
"""
from .ops import knn
from . import covariance

__all__ = ["knn", "covariance"]
