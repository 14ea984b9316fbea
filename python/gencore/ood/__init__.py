"""Out-of-distribution detection: exact kNN (more of the family follows).

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    mahalanobis(features, means, precision_factor, reduce="min") -> [Q] or [Q, C]
    relative_mahalanobis(features, means, precision_factor, background_mean,
                         background_factor, reduce="min") -> [Q] or [Q, C]
"""
from .ops import knn
from .ops import mahalanobis, relative_mahalanobis

__all__ = ["knn"]
__all__ += ["mahalanobis", "relative_mahalanobis"]
from . import metrics
