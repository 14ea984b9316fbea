"""Optimal transport: online log-domain Sinkhorn with gradients, the Sinkhorn
divergence, exact OT (network simplex), sliced Wasserstein, minibatch OT coupling.

Conventions (as GeomLoss): the Sinkhorn cost is |x - y|^2 / 2 for p = 2 (the default),
|x - y| for p = 1, and epsilon = blur^p.

Public names:
    sinkhorn(x, y, a=None, b=None, blur=0.05, p=2, scaling=0.5, tol=..., max_iter=...) -> SinkhornResult
    sinkhorn_divergence(x, y, a=None, b=None, blur=0.05, p=2, reach=None) -> scalar
    emd(a, b, M) -> EMDResult (cost, sparse plan, duals, converged, status)
    sliced_wasserstein(x, y, n_projections=..., p=2, seed=None)
    ot_coupling(x0, x1, method="exact" | "sinkhorn") -> permutation
    distributed: sinkhorn / sinkhorn_divergence on clouds sharded across torch.distributed ranks
        (imported on first access of ``gencore.ot.distributed``)
    tarot: TAROT-style targeted data selection by optimal transport (``gencore.ot.tarot``,
        imported on first access)
"""
# The modules first: the star import then rebinds the name ``sinkhorn`` to the function.
from . import exact as _exact, sinkhorn as _sinkhorn
from .sinkhorn import *  # noqa: F401,F403  (the Sinkhorn solvers: sinkhorn.__all__)
from .exact import *  # noqa: F401,F403  (exact OT, sliced Wasserstein: exact.__all__)

__all__ = list(_sinkhorn.__all__) + list(_exact.__all__)
__all__ += ["distributed", "tarot"]


def __getattr__(name):  # imported on first use: distributed pulls in torch.distributed
    if name in ("distributed", "tarot"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
