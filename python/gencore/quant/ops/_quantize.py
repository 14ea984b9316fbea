"""quant quantize op: float weight -> packed codes, scales, zeros (one gencore._op.Op)."""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference
from . import _layout


def _check(weight, bits, group_size, symmetric):
    _checks.tensor(weight, "weight", ndim=2)
    bits = _layout.bits(bits)
    group_size = _layout.kernel_group(group_size, weight.shape[1])
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    return weight, bits, group_size, symmetric


def _fake(weight, bits, group_size, symmetric):
    n, k = weight.shape
    g = reference.groups(k, group_size)
    return (weight.new_empty((n, reference.packed_columns(k, bits)), dtype=torch.uint8),
            weight.new_empty((n, g), dtype=torch.float32), weight.new_empty((n, g), dtype=torch.float32))


def _cpu(weight, bits, group_size, symmetric):
    data, scales, zeros = _fake(weight, bits, group_size, symmetric)
    if _native_call.POISON:
        scales.fill_(float("nan"))
        zeros.fill_(float("nan"))
        data.fill_(0xFF)
    _native.core.quant_quantize(_native_call.cpu_array(weight, torch.float32), bits, group_size, symmetric,
                                data.numpy(), scales.numpy(), zeros.numpy(), _native_call.threads())
    return data, scales, zeros


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return [
        (randn(5, 70), 4, 32, False),
        (randn(3, 33, dtype=torch.float64), 4, 33, True),
        (randn(0, 64), 8, 64, False),
        (randn(4, 130), 8, 128, True),
        (randn(1, 1), 4, 1, False),
        (randn(6, 257, dtype=torch.float64), 4, 128, False),
    ]


QUANTIZE = Op(
    "quant.quantize", "(Tensor weight, int bits, int group_size, bool symmetric) -> (Tensor, Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.quantize, cpu=_cpu,
    finite=("weight",), cpu_kernel_checks=("weight",),
    empty=lambda weight, bits, group_size, symmetric: weight.shape[0] == 0 or weight.shape[1] == 0,
    samples=_samples,
)
