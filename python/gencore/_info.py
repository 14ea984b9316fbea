"""gencore.info(): what this installation can do, down to the backend of every op."""
from __future__ import annotations

import os

from . import _native, _op


def info() -> dict:
    """Modules, SIMD, threads, BLAS, CUDA, and the backend of every op per device and dtype.

    ``info()["ops"]["ood.knn"]["cuda"]["float64"]`` is the backend a float64
    CUDA call of ``gencore.ood.knn`` runs on: "native-cpu", "native-cuda" or
    "reference" (per-call limits aside, such as CUDA kNN's largest k).
    ``info()["backends"]`` summarises that per family for float32.
    """
    from . import __version__

    ops = {name: op.backend_table() for name, op in sorted(_op.REGISTRY.items())}
    families: dict[str, dict[str, str]] = {}
    for name, table in ops.items():
        summary = families.setdefault(name.split(".")[0], {})
        for device, row in table.items():
            backend = row["float32"]
            summary[device] = backend if summary.get(device, backend) == backend else "mixed"
    return {
        "version": __version__,
        **_native.runtime_info(),
        "forced_backend": os.environ.get("GENCORE_BACKEND") or None,
        "check_finite": _op.check_finite_mode(),
        "backends": families,
        "ops": ops,
    }
