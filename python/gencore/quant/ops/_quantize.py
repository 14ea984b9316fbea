"""quant quantize op: float weight -> packed codes, scales, zeros (one gencore._op.Op).
Native CPU and CUDA kernels, bit for bit the reference (float32 arithmetic)."""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference
from . import _layout


MAX_CLIP_STEPS = 1000  # a search grid finer than 0.05% of the range buys nothing


def _check(weight, bits, group_size, symmetric, clip_steps):
    _checks.tensor(weight, "weight", ndim=2)
    bits = _layout.bits(bits)
    group_size = _layout.kernel_group(group_size, weight.shape[1])
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    clip_steps = _checks.integer(clip_steps, "clip_steps", low=0, high=MAX_CLIP_STEPS)
    return weight, bits, group_size, symmetric, clip_steps


def _fake(weight, bits, group_size, symmetric, clip_steps):
    n, k = weight.shape
    g = reference.groups(k, group_size)
    return (weight.new_empty((n, reference.packed_columns(k, bits)), dtype=torch.uint8),
            weight.new_empty((n, g), dtype=torch.float32), weight.new_empty((n, g), dtype=torch.float32))


def _cpu(weight, bits, group_size, symmetric, clip_steps):
    data, scales, zeros = _fake(weight, bits, group_size, symmetric, clip_steps)
    if _native_call.POISON:
        scales.fill_(float("nan"))
        zeros.fill_(float("nan"))
        data.fill_(0xFF)
    _native.core.quant_quantize(_native_call.cpu_array(weight, torch.float32), bits, group_size, symmetric,
                                clip_steps, data.numpy(), scales.numpy(), zeros.numpy(), _native_call.threads())
    return data, scales, zeros


def _cuda(weight, bits, group_size, symmetric, clip_steps):
    w = _native_call.cuda_input(weight)
    data, scales, zeros = _fake(w, bits, group_size, symmetric, clip_steps)
    _native.cuda.quant_quantize(w.data_ptr(), w.shape[0], w.shape[1], bits, group_size, symmetric, clip_steps,
                                data.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
                                _native_call.cuda_stream(w.device), _native_call.device_index(w.device))
    return data, scales, zeros


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return [
        (randn(5, 70), 4, 32, False, 0),
        (randn(3, 33, dtype=torch.float64), 4, 33, True, 0),
        (randn(0, 64), 8, 64, False, 0),
        (randn(4, 130), 8, 128, True, 0),
        (randn(1, 1), 4, 1, False, 0),
        (randn(6, 257, dtype=torch.float64), 4, 128, False, 0),
        (randn(4, 100), 4, 32, False, 8),
        (randn(3, 64), 8, 64, True, 5),
    ]


QUANTIZE = Op(
    "quant.quantize",
    "(Tensor weight, int bits, int group_size, bool symmetric, int clip_steps) -> (Tensor, Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.quantize, cpu=_cpu, cuda=_cuda,
    cuda_dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),  # weights are quantized in float32
    finite=("weight",), cpu_kernel_checks=("weight",),
    empty=lambda weight, *rest: weight.shape[0] == 0 or weight.shape[1] == 0,
    samples=_samples,
)
