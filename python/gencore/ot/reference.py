"""Pure-torch reference of the ot family: the specification and the fallback.

Conventions (as GeomLoss): for p = 2 the ground cost is C(x, y) = |x - y|^2 / 2,
for p = 1 it is |x - y|; epsilon = blur^p. Weights a [N], b [M] are
non-negative; balanced problems need sum a = sum b. Every function works on
any device and dtype torch supports; float64 inputs give the oracle.
"""
from __future__ import annotations

import torch

__all__: list = []

# ---------------------------------------------------------------------------
# Sinkhorn (entropic OT): softmin, the Sinkhorn loop, the divergence
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Exact OT (network simplex), sliced Wasserstein
# ---------------------------------------------------------------------------
