"""ot torch ops, one module per op group (each registers its ops on import):
_emd (emd), _sliced (wasserstein_1d and its gradient)."""
from . import _emd, _sliced

__all__ = ["_emd", "_sliced"]
