"""ode torch ops: _step (the fused solver step), _error_norm (the per-sample error norm
of adaptive steps). The solvers call them; they are public as gencore.ode.ops.STEP /
ERROR_NORM for users who build their own solvers."""
from ._error_norm import ERROR_NORM
from ._step import STEP

__all__ = ["STEP", "ERROR_NORM"]
