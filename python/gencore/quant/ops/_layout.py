"""Checks of the packed layout shared by the quant ops (metadata only: they trace)."""
from __future__ import annotations

import torch

from ... import _checks
from .. import reference


def bits(value) -> int:
    value = _checks.integer(value, "bits")
    if value not in reference.BITS:
        raise ValueError(f"bits must be one of {reference.BITS}, got {value}")
    return value


def group_size(value, in_features: int) -> int:
    """The public group size (32, 64, 128 or -1 = per channel) -> the positive group the kernels take."""
    value = _checks.integer(value, "group_size")
    if value not in reference.GROUP_SIZES:
        raise ValueError(f"group_size must be one of {reference.GROUP_SIZES} (-1: one group per row), got {value}")
    return max(int(in_features), 1) if value == -1 else value


def kernel_group(value, in_features: int) -> int:
    """The positive group size an op receives: 32, 64, 128, or anything >= K (per channel)."""
    value = _checks.integer(value, "group_size", low=1)
    if value not in (32, 64, 128) and value < in_features:
        raise ValueError(f"group_size must be 32, 64, 128 or >= in_features ({in_features}), got {value}")
    return value


# Layouts packed() accepted, keyed by everything it reads (tensor types, shapes, dtypes, devices
# and the three integers): a QuantLinear call validates the same weight twice (its
# QuantizedWeight, then the op), ~4.5 us each, against ~1.5 us for the key. Bounded; plain
# tensors and ints only (fake and symbolic values under torch.compile are checked every time).
_ACCEPTED_LAYOUTS: dict = {}
_MAX_ACCEPTED_LAYOUTS = 1024


def _layout_key(data, scales, zeros, bits_value, group, in_features):
    # Straight-line: generator expressions here cost more than the key saves.
    plain = _checks.PLAIN_TENSOR_TYPES
    if type(data) not in plain or type(scales) not in plain or type(zeros) not in plain or \
            type(bits_value) is not int or type(group) is not int or type(in_features) is not int:
        return None
    return (bits_value, group, in_features, type(data), data.shape, data.dtype, data.device, type(scales),
            scales.shape, scales.dtype, scales.device, type(zeros), zeros.shape, zeros.dtype, zeros.device)


def packed(data, scales, zeros, bits_value, group, in_features):
    """The packed weight's tensors agree with each other and with (bits, group_size, in_features)."""
    key = _layout_key(data, scales, zeros, bits_value, group, in_features)
    accepted = _ACCEPTED_LAYOUTS.get(key) if key is not None else None
    if accepted is not None:
        return accepted
    accepted = _check_packed(data, scales, zeros, bits_value, group, in_features)
    if key is not None:
        if len(_ACCEPTED_LAYOUTS) >= _MAX_ACCEPTED_LAYOUTS:
            _ACCEPTED_LAYOUTS.clear()
        _ACCEPTED_LAYOUTS[key] = accepted
    return accepted


def _check_packed(data, scales, zeros, bits_value, group, in_features):
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor of dtype uint8, got {type(data).__name__}")
    if data.dtype != torch.uint8:
        raise TypeError(f"data must have dtype uint8 (packed codes), got {str(data.dtype).replace('torch.', '')}")
    if data.dim() != 2:
        raise ValueError(f"data must be 2-D [N, packed columns], got shape {tuple(data.shape)}")
    _checks.tensor(scales, "scales", ndim=2, dtypes=reference.SCALE_DTYPES)
    _checks.tensor(zeros, "zeros", ndim=2, dtypes=reference.SCALE_DTYPES)
    _checks.same_device(data=data, scales=scales, zeros=zeros)
    bits_value = bits(bits_value)
    in_features = _checks.integer(in_features, "in_features", low=0)
    group = kernel_group(group, in_features)
    n = data.shape[0]
    columns = reference.packed_columns(in_features, bits_value)
    if data.shape[1] != columns:
        raise ValueError(f"data must have shape [N, {columns}] for in_features={in_features} at {bits_value} bits, "
                         f"got {tuple(data.shape)}")
    g = reference.groups(in_features, group)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (n, g):
            raise ValueError(f"{name} must have shape [{n}, {g}] (N, ceil(in_features / group_size)), "
                             f"got {tuple(t.shape)}")
    if scales.dtype != zeros.dtype:
        raise TypeError(f"zeros must have the dtype of scales ({scales.dtype}), got {zeros.dtype}")
    return bits_value, group, in_features


def kernel_params(t: torch.Tensor) -> torch.Tensor:
    """scales / zeros as the float32 rows the CPU kernels read (a copy only for other dtypes or layouts)."""
    if t.dtype is torch.float32 and not t.requires_grad and t.is_contiguous():
        return t  # the usual case, without a no-op .to() (~0.5 us a call)
    if t.requires_grad:
        t = t.detach()
    t = t.to(torch.float32)
    return t if t.is_contiguous() else t.contiguous()


def kernel_data(t: torch.Tensor) -> torch.Tensor:
    """Packed codes with unit column stride and non-overlapping rows."""
    return t if t.stride(-1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1]) else t.contiguous()
