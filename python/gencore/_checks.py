"""Argument checks shared by every family. Errors name the argument and the
expected and received values; they run before any native code."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

import numpy as np
import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(x, name: str, *, ndim: Optional[int] = None, dtypes: Iterable[torch.dtype] = FLOATING) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (or a numpy / CuPy array), got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    return x


def same_device(**named: torch.Tensor) -> torch.device:
    # A plain loop: this runs on every eager call (about 1 us saved per call
    # over building a dict of devices); the listing is built only to raise.
    tensors = iter(named.values())
    first = next(tensors).device
    for t in tensors:
        if t.device != first:
            listing = ", ".join(f"{n} on {t.device}" for n, t in named.items())
            raise ValueError(f"tensors must be on one device, got {listing}")
    return first


def same_dtype(anchor_name: str, anchor: torch.Tensor, **named: torch.Tensor) -> None:
    """Every tensor in ``named`` has the dtype of ``anchor``."""
    for name, t in named.items():
        if t.dtype != anchor.dtype:
            raise TypeError(f"{name} must have the dtype of {anchor_name} ({anchor.dtype}), got {t.dtype}")


def same_size(dim_name: str, **named: int) -> None:
    # Pairwise != rather than a set: sizes may be SymInts (torch.compile, dynamic shapes).
    values = list(named.values())
    if any(v != values[0] for v in values[1:]):
        listing = ", ".join(f"{n}={v}" for n, v in named.items())
        raise ValueError(f"{dim_name} mismatch: {listing}")


# Up to this many elements a plain CPU tensor is checked through numpy: ~2 us against
# torch's ~7 us for isfinite + all (per-call overhead; larger tensors are bandwidth-bound
# either way). numpy has no bfloat16, so only these dtypes take that path.
_NUMPY_FINITE_MAX = 1 << 16
_NUMPY_FINITE_DTYPES = (torch.float32, torch.float64, torch.float16)
#: Tensors with data of their own (not fake / functional / subclass tensors).
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _all_finite(x: torch.Tensor) -> bool:
    if (type(x) in PLAIN_TENSOR_TYPES and x.is_cpu and x.dtype in _NUMPY_FINITE_DTYPES
            and x.numel() <= _NUMPY_FINITE_MAX):
        try:
            return bool(np.isfinite(x.detach().numpy()).all())
        except (RuntimeError, TypeError):   # conjugate / negative-bit views have no numpy view
            pass
    return bool(torch.isfinite(x).all())


def finite(x: torch.Tensor, name: str) -> None:
    """Refuses NaN/inf; costs one pass over x. Skipped for fake/meta tensors."""
    if x.is_meta or x.numel() == 0:
        return
    if not _all_finite(x):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {bad}: gencore ops refuse NaN or inf, inputs must be finite")


def integer(v, name: str, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """An integer (int or numpy integer; not bool) within [low, high], as int."""
    if type(v) is not int:  # the common case skips the (slow) abstract-class check
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        v = int(v)
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def real(v, name: str, *, positive: bool = False) -> float:
    """A finite real number (int, float, numpy scalar; not bool), > 0 if ``positive``; as float."""
    if type(v) is not float:  # the common case skips the (slow) abstract-class check
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def choice(v, name: str, options: Iterable[str]) -> str:
    options = tuple(options)
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str, one of {options}, got {type(v).__name__}")
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")
    return v
