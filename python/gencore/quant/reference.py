"""Pure-torch reference of the quant family: the specification and the fallback.

The canonical format (one layout, also what the native kernels read):

* weight W [N, K] (out_features, in_features) is quantized in groups of
  ``group_size`` consecutive elements along K; G = ceil(K / group_size)
  groups per row, the last one partial when K % group_size != 0 (no padding
  of the user's tensors).
* integer codes q in [0, 2**bits - 1] (unsigned), bits 4 or 8.
* ``scales`` and ``zeros`` [N, G] float32; ``zeros`` hold integers in
  [0, 2**bits - 1] (the code of the real value 0).
* dequant(W)[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size,
  computed in float32 (one rounding: the subtraction is exact).
* packing (``data``, uint8): int8 is [N, K], one code per byte. int4 is
  [N, ceil(K / 2)], two codes per byte, **low nibble first**: element k is in
  byte k // 2, bits 0-3 for even k and bits 4-7 for odd k; when K is odd the
  high nibble of each row's last byte is 0.

Quantization (round to nearest, ``torch.round``: ties to even), per group:

* asymmetric: lo = min(min w, 0), hi = max(max w, 0),
  scale = (hi - lo) / (2**bits - 1), zero = clamp(round(-lo / scale), 0, 2**bits - 1);
* symmetric: scale = max |w| / (2**(bits-1) - 1), zero = 2**(bits-1) (8 or 128);
* a group of zeros gets scale 1 (so dequant gives exact zeros);
* q = clamp(round(w / scale) + zero, 0, 2**bits - 1).
* optional MSE-optimal clipping (``clip="mse"``): the range (lo, hi), or max |w|,
  is scaled by r_i = float32(1 - 0.5 i / steps), i = 0 .. steps - 1, and each
  group keeps the scale / zero with the least sum of (w - dequant)^2 (ties: the
  wider range), clipped codes saturating at 0 and 2**bits - 1.

All arithmetic is float32 (float64 weights are rounded to float32 first), so
the native quantize kernel reproduces it bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128, -1)  # -1: one group per row (per-channel)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def groups(in_features: int, group_size: int) -> int:
    """G = ceil(K / group_size) (0 for K = 0)."""
    return -(-in_features // group_size) if in_features else 0


def packed_columns(in_features: int, bits: int) -> int:
    """Bytes per row of ``data``: ceil(K / 2) for int4, K for int8."""
    return (in_features + 1) // 2 if bits == 4 else in_features


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] integers in [0, 2**bits - 1] -> data [N, packed_columns(K)] uint8 (low nibble first)."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    n, k = codes.shape
    if k % 2:
        codes = torch.cat([codes, codes.new_zeros(n, 1)], dim=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack(data: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """data [N, packed_columns(K)] uint8 -> codes [N, K] uint8; the inverse of ``pack``."""
    if bits == 8:
        return data[:, :in_features].contiguous()
    low, high = data & 0x0F, data >> 4
    return torch.stack([low, high], dim=2).reshape(data.shape[0], -1)[:, :in_features].contiguous()


def _per_column(params: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """[N, G] -> [N, K]: each group's value repeated over its columns."""
    return params.repeat_interleave(group_size, dim=1)[:, :in_features]


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, group_size], the partial last group padded with zeros (which
    leave the min / max / max |w| of the formulas above unchanged)."""
    n, k = w.shape
    g = groups(k, group_size)
    if g * group_size != k:
        w = torch.cat([w, w.new_zeros(n, g * group_size - k)], dim=1)
    return w.reshape(n, g, group_size)


def clip_ratio(step: int, steps: int) -> float:
    """The step-th range scale of the clipping search, float32(1 - 0.5 step / steps)."""
    return float(torch.tensor(1.0 - 0.5 * step / steps, dtype=torch.float32))


def _group_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """scales, zeros [N, G] of groups with range [lo, hi] (symmetric: hi = max |w|)."""
    top = float(2 ** bits - 1)
    # Tensor / tensor divisions throughout: a Python-scalar divisor may become a
    # multiplication by its reciprocal, which would round differently from the native kernel.
    if symmetric:
        half = 2 ** (bits - 1)
        scales = hi / torch.full((), float(half - 1), device=hi.device)
        scales = torch.where(scales == 0, torch.ones_like(scales), scales)
        return scales, torch.full_like(scales, float(half))
    scales = (hi - lo) / torch.full((), top, device=hi.device)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    return scales, torch.round(-lo / scales).clamp(0.0, top)


def _codes(grouped: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """grouped [N, G, S] -> codes [N, G, S] (float) under per-group scales / zeros [N, G]."""
    top = float(2 ** bits - 1)
    return (torch.round(grouped / scales[..., None]) + zeros[..., None]).clamp(0.0, top)


def group_squared_error(grouped: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """[N, G] sum over each group of (w - dequant(quant(w)))^2, in float64 (padding adds 0)."""
    dequantized = (_codes(grouped, scales, zeros, bits) - zeros[..., None]) * scales[..., None]
    return ((grouped.double() - dequantized.double()) ** 2).sum(2)


def quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, clip_steps: int = 0):
    """weight [N, K] -> (data uint8 [N, packed_columns(K, bits)], scales [N, G] float32,
    zeros [N, G] float32). ``group_size`` is positive here (K for per-channel).
    clip_steps > 1: MSE-optimal clipping, the ranges scaled by clip_ratio(i, clip_steps)
    tried in turn, each group keeping the one with the least squared error (ties: the wider)."""
    w = weight.detach().to(torch.float32)
    n, k = w.shape
    if k == 0:
        empty = w.new_zeros(n, 0)
        return torch.zeros(n, 0, dtype=torch.uint8, device=w.device), empty, empty.clone()
    grouped = _grouped(w, group_size)  # padding with zeros: 0 quantizes exactly, errors add nothing
    if symmetric:
        lo, hi = torch.zeros_like(grouped[..., 0]), grouped.abs().amax(dim=2)
    else:
        lo, hi = grouped.amin(dim=2).clamp(max=0.0), grouped.amax(dim=2).clamp(min=0.0)
    scales, zeros = _group_params(lo, hi, bits, symmetric)
    if clip_steps > 1:
        best = group_squared_error(grouped, scales, zeros, bits)
        for step in range(1, clip_steps):
            ratio = torch.tensor(clip_ratio(step, clip_steps), dtype=torch.float32, device=w.device)
            s, z = _group_params(ratio * lo, ratio * hi, bits, symmetric)
            error = group_squared_error(grouped, s, z, bits)
            better = error < best
            scales, zeros, best = (torch.where(better, s, scales), torch.where(better, z, zeros),
                                   torch.where(better, error, best))
    codes = _codes(grouped, scales, zeros, bits).reshape(n, grouped.shape[1] * group_size)[:, :k].to(torch.uint8)
    return pack(codes, bits), scales.contiguous(), zeros.contiguous()


def dequantize(data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int,
               in_features: int) -> torch.Tensor:
    """-> W [N, K] float32 = (q - zeros) * scales (scales / zeros of any float dtype, used as float32)."""
    codes = unpack(data, bits, in_features).to(torch.float32)
    s = _per_column(scales.to(torch.float32), group_size, in_features)
    z = _per_column(zeros.to(torch.float32), group_size, in_features)
    return (codes - z) * s


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 activations are multiplied in float64 (the oracle); everything else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_matmul(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """x [M, K] -> y [M, N] = x . dequant(W)^T + bias, in x's dtype.

    Computed in float32 (float64 for float64 x) on the float32 dequantized
    weight: the specification the native kernels meet to float32 rounding (they
    sum per group, then scale)."""
    dtype = compute_dtype(x.dtype)
    w = dequantize(data, scales, zeros, bits, group_size, in_features).to(dtype)
    y = x.to(dtype) @ w.T
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype)


def quantize_activations(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row, per-group int8 activation quantization (DGQ-style, for
    studying the error an int8-activation kernel would add): x [M, K] ->
    (codes int8 [M, K], scales [M, G] float32) with x ~ codes * scales,
    scale = max |x| / 127 over the group (1 for a zero group)."""
    x = x.detach().to(torch.float32)
    m, k = x.shape
    grouped = _grouped(x, group_size)
    scales = grouped.abs().amax(dim=2) / torch.full((), 127.0, device=x.device)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    codes = torch.round(x / _per_column(scales, group_size, k)).clamp(-127, 127).to(torch.int8)
    return codes, scales


def group_matmul_int8(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """The int8-activation product (W4A8 for bits=4, W8A8 for bits=8), exactly as the native
    kernels define it: x [M, K] -> y [M, N] in x's dtype with c, sx = quantize_activations(x, group_size) and

        y[m, n] = sum_g s[n, g] * sx[m, g] * (sum_{k in g} c[m, k] q[n, k] - z[n, g] * sum_{k in g} c[m, k]) + bias[n]

    The integer sums are exact (float64 here); only the per-group scaling rounds. zeros must
    hold integers (the op refuses others)."""
    m, k = x.shape
    n = data.shape[0]
    codes_x, sx = quantize_activations(x, group_size)
    q = unpack(data, bits, in_features)
    g = groups(k, group_size)
    cx = _grouped(codes_x.to(torch.float64), group_size)           # [M, G, g]
    cw = _grouped(q.to(torch.float64), group_size)                 # [N, G, g]
    dots = torch.einsum("mgk,ngk->mng", cx, cw) if g else x.new_zeros(m, n, 0, dtype=torch.float64)
    sums = cx.sum(2)                                                # [M, G]
    z = zeros.to(torch.float32).to(torch.float64)
    s = scales.to(torch.float32).to(torch.float64)
    y = ((dots - z[None] * sums[:, None, :]) * s[None] * sx.to(torch.float64)[:, None, :]).sum(2)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32).to(x.dtype) if x.dtype != torch.float64 else y
