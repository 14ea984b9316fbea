"""The one place that picks the native CPU kernel, the CUDA kernel or the reference.

Rules, in order, for one call of an op (``gencore._op.Op`` asks here):

1. ``GENCORE_BACKEND=reference`` forces the reference, quietly.
2. Tensors on a device other than CPU or CUDA (meta, mps, xla...) run the
   reference, quietly: it is plain torch and works wherever torch does.
3. CPU tensors run ``_core`` when it loaded and the op has a native CPU kernel
   for the dtype; CUDA tensors run ``_cuda`` when it loaded, sees the device,
   holds a kernel image for the device's compute capability, the op has a
   CUDA kernel for the dtype, and the call is within the kernel's limits
   (say, CUDA kNN's largest k).
4. Anything else runs the reference and warns once per (op, device, reason),
   naming the reason, so a fallback is never silent to someone who asks
   (``gencore.info()`` lists the backend of every op, device and dtype).
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional

import torch

from . import _native

NATIVE_CPU, NATIVE_CUDA, REFERENCE = "native-cpu", "native-cuda", "reference"

_warned: set[tuple[str, str, str]] = set()


def forced_reference() -> bool:
    """True when GENCORE_BACKEND=reference (read on every call, so tests may set it)."""
    value = _native.env("GENCORE_BACKEND")
    if not value:
        return False
    value = value.strip().lower()
    if value not in ("", "auto", "native", "reference"):
        raise ValueError(f"GENCORE_BACKEND must be 'auto' or 'reference', got {value!r}")
    return value == "reference"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def choose(device: torch.device, dtype: torch.dtype, *, cpu_dtypes: Iterable[torch.dtype],
           cuda_dtypes: Iterable[torch.dtype], cuda_limit: Optional[Callable[[], Optional[str]]] = None
           ) -> tuple[str, Optional[str]]:
    """(backend, reason): the reason is set only when a native path was expected but is not taken."""
    if forced_reference():
        return REFERENCE, None
    kind = device.type
    if kind == "cpu":
        if _native.core is None:
            return REFERENCE, f"gencore._core is not available ({_native.core_error})"
        if dtype not in cpu_dtypes:
            return REFERENCE, f"no native CPU kernel for {_dtype_name(dtype)}"
        return NATIVE_CPU, None
    if kind == "cuda":
        reason = _native.cuda_unavailable_reason(device.index or 0)
        if reason is not None:
            return REFERENCE, reason
        if dtype not in cuda_dtypes:
            return REFERENCE, f"no native CUDA kernel for {_dtype_name(dtype)}"
        if cuda_limit is not None:
            reason = cuda_limit()
            if reason is not None:
                return REFERENCE, reason
        return NATIVE_CUDA, None
    return REFERENCE, None


def warn_fallback(op: str, device_type: str, reason: str) -> None:
    """Warns once per (op, device type, reason) that ``op`` runs the reference."""
    key = (op, device_type, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"gencore.{op}: {reason}; running the pure-torch reference on {device_type} "
                      "(see gencore.info())", RuntimeWarning, stacklevel=4)
