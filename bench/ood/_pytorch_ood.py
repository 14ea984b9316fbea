"""pytorch-ood as a peer, importable on machines without a working torchvision.

pytorch-ood's package import pulls torchvision (its model registry), and the
torchvision on the registry does not load against the local CPU torch. Its
detectors need nothing of torchvision, so when torchvision cannot be imported
this installs stand-in modules for ``torchvision``, ``torchvision.transforms``,
``torchvision.models`` and ``torchvision.models.resnet`` (each attribute a
placeholder class) in ``sys.modules`` first. Shared by bench/ood/bench_detectors.py
and the tests (``from bench.ood import _pytorch_ood``); it lives with the
benchmarks because they ship in the wheel (``gencore bench``) and the tests do not.
"""
from __future__ import annotations

import sys
import types

_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.models", "torchvision.models.resnet")


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    placeholders: dict = {}

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return placeholders.setdefault(attr, type(attr, (), {"__module__": name}))

    module.__getattr__ = __getattr__
    return module


def _ensure_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # missing, or (here) RuntimeError: operator torchvision::nms does not exist
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    for name in _TORCHVISION:
        sys.modules[name] = _stand_in(name)
    for name in _TORCHVISION[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])


def detectors():
    """``pytorch_ood.detector``, or raises ImportError with the reason."""
    import importlib.util

    if importlib.util.find_spec("pytorch_ood") is None:
        raise ImportError("pytorch-ood is not installed (pip install --no-deps pytorch-ood==0.4.0)")
    _ensure_torchvision()
    import pytorch_ood.detector

    return pytorch_ood.detector


def detectors_or_skip():
    """``detectors()``, or a pytest skip that gives the reason (for fixtures)."""
    try:
        return detectors()
    except ImportError as exc:
        import pytest

        pytest.skip(f"pytorch-ood is not available: {exc}")


def version() -> str:
    from importlib.metadata import version as _version

    return _version("pytorch-ood")
