"""Out-of-distribution detection: exact kNN (more of the family follows).

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
"""
from .ops import knn

__all__ = ["knn"]
from . import metrics
