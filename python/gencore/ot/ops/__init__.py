"""ot torch ops, one module per op group (each registers its ops on import):
_emd (emd), _sliced (wasserstein_1d and its gradient), _sinkhorn (the point-cloud
softmin), _sinkhorn_dense (the loop on given cost matrices)."""
from . import _emd, _sinkhorn, _sinkhorn_dense, _sliced

__all__ = ["_emd", "_sinkhorn", "_sinkhorn_dense", "_sliced"]
