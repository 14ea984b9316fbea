"""ood torch ops, one module per op group (each registers its custom ops on import):
_knn (knn), _mahalanobis (mahalanobis, relative_mahalanobis), _logits (msp, energy,
max_logit, gen, kl_matching, residual, vim)."""
from ._knn import knn
from ._logits import energy, gen, kl_matching, max_logit, msp, residual, vim
from ._mahalanobis import mahalanobis, relative_mahalanobis

__all__ = ["knn", "mahalanobis", "relative_mahalanobis", "msp", "energy", "max_logit", "gen", "kl_matching",
           "residual", "vim"]
