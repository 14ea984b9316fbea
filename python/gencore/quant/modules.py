"""QuantLinear and quantize_model: nn.Linear layers with group-quantized weights."""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from . import reference
from .functions import group_matmul, quantize
from .weight import QuantizedWeight


_WEIGHT_BUFFERS = ("data", "scales", "zeros", "perm")


class QuantLinear(nn.Module):
    """y = x @ dequant(W)^T + bias with W [out_features, in_features] group-quantized.

    The weight lives in three buffers (plain tensors, so ``state_dict`` /
    ``load_state_dict`` / ``torch.save`` work as for any module): ``data``
    (uint8 packed codes), ``scales`` and ``zeros`` ([out, G] float32), in
    the canonical layout of ``gencore.quant.reference``; ``bias`` is a float
    Parameter (trainable) or None. ``bits`` and ``group_size`` are
    constructor arguments (a state dict loads into a module built with the
    same ones; shapes are checked by ``load_state_dict``).

    Forward: ``gencore.quant.group_matmul`` (native CPU kernels for
    float32/bf16/fp16 activations; works under ``torch.compile`` through the
    op's fake kernel). Gradients flow to the input and the bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 group_size: int = 128, device=None, dtype: torch.dtype = torch.float32, act_order: bool = False):
        super().__init__()
        if bits not in reference.BITS:
            raise ValueError(f"bits must be one of {reference.BITS}, got {bits}")
        if group_size not in reference.GROUP_SIZES:
            raise ValueError(f"group_size must be one of {reference.GROUP_SIZES}, got {group_size}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits = bits
        self.group_size = max(self.in_features, 1) if group_size == -1 else group_size
        g = reference.groups(self.in_features, self.group_size)
        columns = reference.packed_columns(self.in_features, bits)
        self.register_buffer("data", torch.zeros(out_features, columns, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, g, dtype=torch.float32, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, g, dtype=torch.float32, device=device))
        # act_order: an input-channel permutation buffer (GPTQ desc_act checkpoints, QuantizedWeight.perm)
        self.register_buffer("perm", torch.arange(self.in_features, device=device) if act_order else None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 128,
                    symmetric: bool = False, clip: Optional[str] = None,
                    perm: Optional[torch.Tensor] = None) -> "QuantLinear":
        """Quantizes ``linear.weight`` (round to nearest per group; clip="mse": MSE-optimal
        clipping; perm: an input-channel permutation such as ``outlier_permutation``'s, see
        ``gencore.quant.quantize``); copies the bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size,
                     device=weight.device, dtype=weight.dtype, act_order=perm is not None)
        module.set_weight(quantize(weight, bits, group_size, symmetric, clip=clip, perm=perm))
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> "QuantLinear":
        """A layer over an existing QuantizedWeight (from ``from_gptq`` / ``from_awq``, say)."""
        n, k = qw.shape
        module = cls(k, n, bias is not None, qw.bits, qw.group_size, device=qw.device,
                     dtype=bias.dtype if bias is not None else torch.float32, act_order=qw.perm is not None)
        module.set_weight(qw)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    def set_weight(self, qw: QuantizedWeight) -> None:
        """Replaces the quantized weight (same shape, bits, group size and act-order)."""
        if (qw.shape, qw.bits, qw.group_size) != ((self.out_features, self.in_features), self.bits, self.group_size):
            raise ValueError(f"qw {qw} does not fit this layer ({self.out_features} x {self.in_features}, "
                             f"bits={self.bits}, group_size={self.group_size})")
        if (qw.perm is None) != (self.perm is None):
            raise ValueError("qw and this layer disagree on act-order (an input permutation): build the layer "
                             "with act_order=True for a weight with perm")
        self.data, self.scales, self.zeros = qw.data.clone(), qw.scales.clone(), qw.zeros.clone()
        self.scales, self.zeros = self.scales.to(torch.float32), self.zeros.to(torch.float32)
        if qw.perm is not None:
            self.perm = qw.perm.clone()

    @property
    def weight(self) -> QuantizedWeight:
        """The quantized weight as a QuantizedWeight over this module's buffers (no copy).

        Built once per set of buffer tensors (rebuilding and re-checking it cost ~5 us of a
        ~45 us call at 256 x 256): replacing a buffer (``set_weight``, ``.to()``, assignment)
        drops it, so no replaced weight stays alive; the op checks the layout of every call anyway."""
        buffers = self._buffers
        data, scales, zeros, perm = buffers["data"], buffers["scales"], buffers["zeros"], buffers["perm"]
        if torch.compiler.is_compiling():  # traced: no module state read or written
            return self._make_weight(data, scales, zeros, perm)
        qw = self.__dict__.get("_weight_cache")
        if qw is None or qw.data is not data or qw.scales is not scales or qw.zeros is not zeros or qw.perm is not perm:
            qw = self.__dict__["_weight_cache"] = self._make_weight(data, scales, zeros, perm)
        return qw

    def _make_weight(self, data, scales, zeros, perm) -> QuantizedWeight:
        return QuantizedWeight(data, scales, zeros, self.bits, self.group_size, (self.out_features, self.in_features),
                               perm)

    def __setattr__(self, name, value):
        if name in _WEIGHT_BUFFERS:
            self.__dict__.pop("_weight_cache", None)
        super().__setattr__(name, value)

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_weight_cache", None)  # .to() / .cuda() / .half() replace the buffers
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.bias is None or self.bias.dtype == x.dtype else self.bias.to(x.dtype)
        return group_matmul(x, self.weight, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={self.group_size}")


Skip = Union[None, Iterable[str], Callable[[str, nn.Linear], bool]]


def quantize_model(model: nn.Module, bits: int = 4, group_size: int = 128, symmetric: bool = False,
                   skip: Skip = None, clip: Optional[str] = None) -> nn.Module:
    """Replaces every ``nn.Linear`` of ``model`` (in place) by a ``QuantLinear``; returns ``model``.

    Args:
        bits, group_size, symmetric, clip: as ``gencore.quant.quantize`` (clip="mse":
            MSE-optimal clipping per group).
        skip: layers to keep in float: qualified names (``"head"``, ``"blocks.0.proj"``;
            a name also skips everything below it) or a predicate ``(name, linear) -> bool``.
    An ``nn.Linear`` passed as ``model`` itself is returned quantized (it cannot replace itself).
    """
    if isinstance(model, nn.Linear):
        return QuantLinear.from_linear(model, bits, group_size, symmetric, clip)
    if callable(skip):
        skipped = skip
    else:
        names = tuple(skip or ())

        def skipped(name, _linear):
            return any(name == s or name.startswith(s + ".") for s in names)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(name, m)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(linear, bits, group_size, symmetric, clip))
    return model
