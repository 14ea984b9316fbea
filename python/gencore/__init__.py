"""gencore: a compute core for generative models and distribution shift.

C++/CUDA kernels behind torch ops, each with a pure-torch reference that is
the specification and the fallback. See ``gencore.info()`` for what runs here.
"""
__version__ = "0.1.0"

from ._native import get_num_threads, set_num_threads, set_simd_level
from ._op import set_check_finite
from ._info import info
from . import ode, ood, ot, quant, score

__all__ = ["__version__", "info", "set_num_threads", "get_num_threads", "set_simd_level", "set_check_finite",
           "ode", "ood", "ot", "quant", "score"]
