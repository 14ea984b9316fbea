"""The one place that picks the native CPU kernel, the CUDA kernel, or the reference.

Rules, in order: ``GENCORE_BACKEND=reference`` forces the reference; CPU
tensors go to ``_core``; CUDA tensors go to ``_cuda`` when it was built and
sees a device; anything else (other devices, missing modules) runs the
reference, with a one-time warning when a native path was expected.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import _native

_FAMILIES = ("ood",)
_warned: set[str] = set()


def families() -> tuple[str, ...]:
    return _FAMILIES


def _forced_reference() -> bool:
    value = os.environ.get("GENCORE_BACKEND", "").strip().lower()
    if value not in ("", "auto", "native", "reference"):
        raise ValueError(f"GENCORE_BACKEND must be 'auto' or 'reference', got {value!r}")
    return value == "reference"


def backend_name(device_type: str) -> str:
    """'native-cpu', 'native-cuda' or 'reference' for tensors on ``device_type``."""
    if _forced_reference():
        return "reference"
    if device_type == "cpu" and _native.core is not None:
        return "native-cpu"
    if device_type == "cuda" and _native.cuda is not None and _native.cuda_device_count() > 0:
        return "native-cuda"
    return "reference"


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def select(op: str, tensor: torch.Tensor) -> str:
    """Backend for ``op`` on ``tensor``'s device; warns once when falling back."""
    backend = backend_name(tensor.device.type)
    if backend == "reference" and not _forced_reference() and tensor.device.type in ("cpu", "cuda"):
        module = "_core" if tensor.device.type == "cpu" else "_cuda"
        reason = getattr(_native, f"{module[1:]}_error", None) or "no CUDA device visible"
        warn_once(
            f"{op}:{tensor.device.type}",
            f"gencore.{op}: native {tensor.device.type} kernel unavailable ({reason}); "
            "using the pure-torch reference (see gencore.info())",
        )
    return backend
