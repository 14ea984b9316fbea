"""QuantizedWeight: the plain-tensor container of one group-quantized weight."""
from __future__ import annotations

from typing import Optional

import torch

from .ops import _layout


class QuantizedWeight:
    """A weight W [N, K] in gencore's canonical group-quantized layout.

    Attributes (plain tensors and ints, nothing else; see ``gencore.quant.reference``
    for the format):
        data: uint8 [N, ceil(K / 2)] (int4, two codes per byte, low nibble
            first: element k in byte k // 2, bits 0-3 for even k) or [N, K] (int8).
        scales, zeros: [N, G], G = ceil(K / group_size), float32 from
            ``quantize`` (float16 / bfloat16 accepted from importers; the kernels
            read them as float32). ``zeros`` hold integer codes.
        bits: 4 or 8.
        group_size: elements per group along K (32, 64, 128, or K itself for one group per row).
        shape: (N, K) = (out_features, in_features).
        perm: None, or int64 [K]: an input-channel permutation (GPTQ act-order
            checkpoints): the packed columns are those of W[:, perm], so
            y = x[..., perm] @ dequant(packed)^T, and ``dequantize`` puts the columns back.

    dequant(W)[n, k] = (q[n, k] - zeros[n, k // group_size]) * scales[n, k // group_size].
    Construction checks that the tensors agree with each other (ValueError / TypeError naming the argument).
    """

    __slots__ = ("data", "scales", "zeros", "bits", "group_size", "shape", "perm")

    def __init__(self, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int,
                 shape, perm: Optional[torch.Tensor] = None):
        if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
            raise ValueError(f"shape must be (out_features, in_features), got {shape!r}")
        n, k = (int(s) for s in shape)
        bits, group_size, k = _layout.packed(data, scales, zeros, bits, group_size, k)
        if data.shape[0] != n:
            raise ValueError(f"data has {data.shape[0]} rows, shape says out_features={n}")
        if perm is not None:
            if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or tuple(perm.shape) != (k,):
                raise ValueError(f"perm must be an int64 tensor of shape [{k}] (a permutation of the input channels)")
            if perm.device.type != "meta" and not torch.equal(torch.sort(perm).values,
                                                              torch.arange(k, device=perm.device)):
                raise ValueError("perm must be a permutation of range(in_features)")
        self.data, self.scales, self.zeros = data, scales, zeros
        self.bits, self.group_size, self.shape, self.perm = bits, group_size, (n, k), perm

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def layout(self) -> tuple[int, int, int]:
        """(bits, group_size, in_features): the integer arguments of the quant ops."""
        return self.bits, self.group_size, self.shape[1]

    def to(self, device=None, scale_dtype: Optional[torch.dtype] = None) -> "QuantizedWeight":
        """A copy on ``device`` and/or with scales and zeros in ``scale_dtype``."""
        def move(t, dtype=None):
            return t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
        return QuantizedWeight(move(self.data), move(self.scales, scale_dtype), move(self.zeros, scale_dtype),
                               self.bits, self.group_size, self.shape, None if self.perm is None else move(self.perm))

    def nbytes(self) -> int:
        """Bytes of the packed codes, scales and zeros."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, self.zeros))

    def __repr__(self) -> str:
        return (f"QuantizedWeight(shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
                f"scales={str(self.scales.dtype).replace('torch.', '')}, device={self.device}"
                f"{', act-order perm' if self.perm is not None else ''})")
