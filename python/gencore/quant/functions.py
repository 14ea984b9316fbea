"""The public functions of gencore.quant over QuantizedWeight (the ops take its tensors)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _arrays, _checks
from .._op import checks_values_of
from . import reference
from .ops import DEQUANTIZE, GROUP_MATMUL, GROUP_MATMUL_INT8, QUANTIZE, _layout
from .weight import QuantizedWeight


CLIPS = (None, "mse")


def quantize(weight: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = False,
             clip: Optional[str] = None, clip_steps: int = 20, perm: Optional[torch.Tensor] = None) -> QuantizedWeight:
    """Group-wise round-to-nearest quantization of a weight.

    Args:
        weight: [N, K] float tensor (out_features, in_features); any float
            dtype (computed in float32). Must be finite: NaN/inf raise
            ValueError naming ``weight``.
        bits: 4 or 8.
        group_size: 32, 64, 128 (elements of one row sharing a scale and
            zero point), or -1 for one group per row (per channel). K need not
            be a multiple: the last group of a row is then partial.
        symmetric: False (default): scale = (max(w, 0) - min(w, 0)) / (2**bits - 1)
            and an integer zero point; True: scale = max|w| / (2**(bits-1) - 1),
            zero point 2**(bits-1) (codes 0..2**bits-1 stay unsigned).
        clip: None (default): each group's full range. "mse": MSE-optimal
            clipping: the range scaled by 1, 1 - 0.5/clip_steps, ..., down to
            just above 0.5, each group keeping the scale and zero point with the
            least squared weight error (outliers saturate; at 4 bits about 9%
            (asymmetric) to 25% (symmetric) less squared error on Gaussian or
            Student-t weights). Costs clip_steps quantization passes.
        clip_steps: the size of that search grid (2 .. 1000; default 20).
        perm: None, or an int64 permutation [K] of the input channels (e.g.
            ``outlier_permutation`` of calibration activations): the groups are
            formed over W[:, perm], and the result records it (``qw.perm``), so
            ``group_matmul`` gathers x[..., perm] first and ``dequantize``
            returns the columns in their original order.

    Returns:
        QuantizedWeight (packed uint8 codes, float32 scales and zeros [N, G]);
        see ``gencore.quant.reference`` for the formulas and the packing order
        (int4: two codes per byte, low nibble first). No gradient.
    """
    _checks.tensor(weight, "weight", ndim=2)
    group = _layout.group_size(group_size, weight.shape[1])
    if clip not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
    if clip == "mse":
        steps = _checks.integer(clip_steps, "clip_steps", low=2, high=1000)
    else:
        steps = 0
    if perm is not None:
        _checks.tensor(perm, "perm", ndim=1, dtypes=(torch.int64,))
        _checks.same_device(weight=weight, perm=perm)
        k = weight.shape[1]
        if perm.shape[0] != k or not torch.equal(torch.sort(perm).values, torch.arange(k, device=perm.device)):
            raise ValueError(f"perm must be a permutation of range(in_features={k}), got shape {tuple(perm.shape)}")
        weight = weight.index_select(1, perm)
    data, scales, zeros = QUANTIZE(weight, bits, group, symmetric, steps)
    return QuantizedWeight(data, scales, zeros, bits, group, tuple(weight.shape), perm)


def _weight(qw) -> QuantizedWeight:
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a gencore.quant.QuantizedWeight, got {type(qw).__name__}")
    return qw


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W [N, K] = (q - zeros) * scales, computed in float32 (bit-exact with the
    kernels' dequantization) and returned as ``dtype``. NaN/inf scales or zeros
    raise ValueError naming them (on the CPU)."""
    qw = _weight(qw)
    w = DEQUANTIZE(qw.data, qw.scales, qw.zeros, *qw.layout())
    if qw.perm is not None:  # packed column j is input channel perm[j]
        unpermuted = torch.empty_like(w)
        unpermuted[:, qw.perm] = w
        w = unpermuted
    return w if dtype == torch.float32 else w.to(dtype)


@_arrays.accepts_arrays
def group_matmul(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
                 activations: str = "float") -> torch.Tensor:
    """y = x @ dequant(W)^T + bias, with W group-quantized (a ``QuantizedWeight``).

    Args:
        x: [..., K] float32, bfloat16 or float16 (native CPU kernels; float32
            arithmetic) or float64 (the reference, in float64). Any leading
            shape, any strides (copied only when the last dimension is strided).
        qw: the quantized weight, shape (N, K).
        bias: optional [N] tensor of x's dtype.
        activations: ``"float"`` (default: the product of x with the float32
            dequantized weight, to float32 rounding) or ``"int8"`` (W4A8 for
            int4 weights, W8A8 for int8: x quantized symmetrically per row and
            weight group to int8, then exact integer dot products per group (the
            default path's kernels with one plane instead of three): faster on
            the CPU and ~1e-3 relative output error from the activation
            rounding; ``reference.group_matmul_int8`` is its exact definition;
            zeros must hold integers (ValueError otherwise); the gradient is
            straight-through, grad @ dequant(W)).

    Returns:
        [..., N] in x's dtype.

    Math and kernels (CPU): few rows stream the packed weight once (int4:
    < 64 rows with AVX2 or AVX512-VNNI; int8: < 56 with AVX512-VNNI, < 32 with
    AVX2; < 16 otherwise): each row of x is rounded per weight group to a
    fixed-point code (max |x| of the group = 2^22 for int4 weights, 2^20 for
    int8, ties to even), split into three int8 planes whose dot products with
    the weight codes are exact integers (vpmaddubsw / vpdpbusd), scaled per
    group in float32; the zero points are folded in through the rounded
    activations' group sums. The result matches ``reference.group_matmul``
    (float32 dequantize, then matmul) to ~2e-7 of max(|x| @ |W|^T) (float32
    level; an element far below its group's largest keeps fewer bits). More rows
    dequantize tiles of 64 weight rows once and run SciPy's sgemm on them.
    CUDA (float path), any batch: below 16 rows one warp per output row
    dequantizes in registers; from 16 rows a block owns a 64 x 64 output tile,
    dequantizes the weight tile into shared memory with the CPU's rounding and
    multiplies on tensor cores in 3xTF32 (each operand a TF32 part plus a TF32
    remainder, three products into float32 sums), keeping float32 accuracy
    rather than TF32's; GPUs before sm_80 keep the warp kernel. Non-finite
    inputs are not checked on CUDA and give non-finite outputs (an inf may
    become NaN). CUDA int8 path: a warp
    per (row, group) quantizes x, a warp per output row sums the integer group
    dots (any batch).

    Gradients flow to ``x`` (grad @ dequant(W)) and ``bias``; asking for the
    gradient of the quantized parameters raises NotImplementedError. NaN/inf in
    x, scales, zeros or bias raise ValueError naming it on the CPU.
    A weight with an input permutation (``qw.perm``, GPTQ act-order) gathers
    x's columns first (one [..., K] copy).
    """
    qw = _weight(qw)
    _checks.tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension [..., in_features], got a 0-D tensor")
    lead = x.shape[:-1]
    if qw.perm is not None:
        x = x.index_select(-1, qw.perm)
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    op = {"float": GROUP_MATMUL, "int8": GROUP_MATMUL_INT8}.get(activations) if isinstance(activations, str) else None
    if op is None:
        raise ValueError(f"activations must be 'float' or 'int8', got {activations!r}")
    args = (rows, qw.data, qw.scales, qw.zeros, bias, *qw.layout())
    if bias is not None and bias.requires_grad and not rows.requires_grad and rows.dtype == torch.float32 \
            and op.eager_autograd(args) and not (qw.scales.requires_grad or qw.zeros.requires_grad):
        # Only the bias needs a gradient (a layer called outside no_grad): the kernel without it, then
        # torch's add, which records the bias's gradient natively instead of through the op's
        # autograd.Function (~10 us a call); the same float32 sum, as the kernel adds the bias last.
        # Every argument is checked as the op checks it, the bias's values by the ops' policy.
        args = op._check(*args)
        if checks_values_of(bias):
            _checks.finite(bias, "bias")
        y = op.trusted(*args[:4], None, *args[5:]) + bias
    else:
        y = op(*args)
    return y.reshape(*lead, qw.out_features) if x.dim() != 2 else y


pack, unpack = reference.pack, reference.unpack
