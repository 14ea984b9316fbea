"""Skip markers for tests of code built on ops from other branches (mahalanobis, logits, metrics)."""
from __future__ import annotations

import importlib

import pytest

import gencore.ood

_BRANCH = {"mahalanobis": "mahalanobis", "relative_mahalanobis": "mahalanobis", "energy": "logits",
           "msp": "logits", "max_logit": "logits", "vim": "logits", "metrics": "metrics"}


def _has(name: str) -> bool:
    if name == "metrics":
        try:
            importlib.import_module("gencore.ood.metrics")
        except ImportError:
            return False
        return True
    return hasattr(gencore.ood, name)


def needs(*names: str):
    """Skips unless gencore.ood has every op in ``names``."""
    missing = [n for n in names if not _has(n)]
    return pytest.mark.skipif(bool(missing), reason="needs gencore.ood." + ", ".join(missing) + " (branch "
                              + ", ".join(sorted({_BRANCH.get(n, "?") for n in missing})) + ")")
