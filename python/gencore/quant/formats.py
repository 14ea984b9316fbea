"""Import and export of the common int4/int8 checkpoint layouts.

GPTQ (AutoGPTQ / GPTQModel "gptq" and "gptq_v2" checkpoints), for bits 4 and 8,
per = 32 // bits codes per int32:
    qweight int32 [K / per, N]: packed along K, code of (k, n) in bits
        [bits * (k % per), bits * (k % per + 1)) of qweight[k // per, n];
    qzeros  int32 [G, N / per]: packed along N the same way; version 1 ("gptq")
        stores zero - 1 (the historical off-by-one: the kernels add 1 back, so a
        zero point of 0 cannot be stored and reads back as 2**bits), version 2
        ("gptq_v2") stores the zero itself;
    scales  float16 [G, N];
    g_idx   int32 [K]: the group of input channel k. k // group_size without
        act-order; any assignment with group_size channels per group with it
        (desc_act): imported as a permutation ``perm`` of the input channels
        (QuantizedWeight.perm) that makes every group contiguous.
    W[n, k] = (code(k, n) - zero(g_idx[k], n)) * scales[g_idx[k], n].

AWQ (llm-awq / AutoAWQ GEMM checkpoints), 4 bits:
    qweight int32 [K, N / 8]: packed along N; the 8 columns 8c..8c+7 sit in the
        nibbles of qweight[k, c] in the order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i,
        bits 4i..4i+3, holds column 8c + ORDER[i]);
    qzeros  int32 [G, N / 8]: the zero points, packed the same way (no offset);
    scales  float16 [G, N];  W[n, k] = (code(k, n) - zero(k // group_size, n)) * scales[k // group_size, n].

torchao / tinygemm affine int4 (torchao's ``groupwise_affine_quantize_tensor``,
``Int4WeightOnlyConfig``'s "tinygemm" qparams; what torch's
``_convert_weight_to_int4pack_for_cpu`` + ``_weight_int4pack_mm_for_cpu`` and
the CUDA ``_weight_int4pack_mm`` take), 4 bits, full groups of 32/64/128/256:
    int_data         int32 [N, K]: the codes, one per element (torch's packing
                     ops pack them into their own kernel layouts);
    scales_and_zeros [G, N, 2] (bfloat16 usually): [..., 0] the scale,
                     [..., 1] a zero point in the *float* domain;
    W[n, k] = (code - 8) * scale + zero  (the mid-code 8 sits at ``zero``).
    In gencore's form that is (code - z) * scale with z = 8 - zero / scale: a
    fractional z in general (the float path of every kernel takes it; the int8-
    activation path refuses it), equal to the checkpoint's weight up to float32
    rounding of zero / scale. Exported zeros are (8 - z) * scale.

Every importer checks that the tensors agree with each other (ValueError /
TypeError naming the argument), never modifies them, and gives a
QuantizedWeight whose dequantized weight is exactly the checkpoint's (scales
converted to float32 exactly). Exporters refuse what the format cannot hold
(a K or N that does not fill whole int32 words, a zero point of 0 in GPTQ v1,
non-integer zeros, a partial group for tinygemm). tinygemm's float zero points
are the one import that is exact only to float32 rounding (see above).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from . import reference
from .weight import QuantizedWeight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column 8c + AWQ_ORDER[i]
_AWQ_COLUMN_TO_NIBBLE = tuple(AWQ_ORDER.index(j) for j in range(8))  # (0, 4, 1, 5, 2, 6, 3, 7)


def _int32(t, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype int32, got {str(t.dtype).replace('torch.', '')}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _unpack_words(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> codes (int64), the `per` codes of each word expanded along ``dim`` (low bits first)."""
    mask = (1 << bits) - 1
    shifts = torch.arange(0, 32, bits, device=words.device)
    w = words.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:  # [R, C] -> [R * per, C]
        return ((w[:, None, :] >> shifts[None, :, None]) & mask).reshape(-1, words.shape[1])
    return ((w[:, :, None] >> shifts[None, None, :]) & mask).reshape(words.shape[0], -1)


def _pack_words(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """codes (integers in [0, 2**bits)) -> int32 words, `per` consecutive codes along ``dim`` per word."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, device=codes.device)
    c = codes.to(torch.int64)
    if dim == 0:
        words = (c.reshape(-1, per, c.shape[1]) << shifts[None, :, None]).sum(1)
    else:
        words = (c.reshape(c.shape[0], -1, per) << shifts[None, None, :]).sum(2)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)  # the same 32 bits, as a signed int32
    return words.to(torch.int32)


def _scales(scales, name: str, shape: tuple) -> torch.Tensor:
    _checks.tensor(scales, name, ndim=2, dtypes=reference.SCALE_DTYPES)
    if tuple(scales.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(scales.shape)}")
    return scales


def _group(group_size: int, in_features: int) -> int:
    group_size = _checks.integer(group_size, "group_size")
    if group_size == -1:
        return in_features
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1 or -1, got {group_size}")
    return group_size


def _words_fit(count: int, per: int, what: str) -> None:
    if count % per:
        raise ValueError(f"{what}={count} is not a multiple of {per}: the format packs {per} codes per int32")


def _ours(codes_nk: torch.Tensor, scales_gn: torch.Tensor, zeros_gn: torch.Tensor, bits: int, group: int,
          perm: Optional[torch.Tensor]) -> QuantizedWeight:
    n, k = codes_nk.shape
    if perm is not None:
        codes_nk = codes_nk[:, perm]
    data = reference.pack(codes_nk.to(torch.uint8), bits)
    scales = scales_gn.T.to(torch.float32).contiguous()
    zeros = zeros_gn.T.to(torch.float32).contiguous()
    return QuantizedWeight(data, scales, zeros, bits, group, (n, k), perm)


def _four_bit_in_order(qw: QuantizedWeight, what: str) -> None:
    """What the 4-bit formats without an input permutation (AWQ, tinygemm) refuse."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a gencore.quant.QuantizedWeight, got {type(qw).__name__}")
    if qw.bits != 4:
        raise ValueError(f"{what} holds 4-bit codes, qw has bits={qw.bits}")
    if qw.perm is not None:
        raise ValueError(f"{what} has no input-channel permutation; qw has one (act-order)")


def _theirs(qw: QuantizedWeight, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, K] in the original channel order, zeros [G, N] int64, scales [G, N])."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a gencore.quant.QuantizedWeight, got {type(qw).__name__}")
    codes = reference.unpack(qw.data, qw.bits, qw.in_features).to(torch.int64)
    if qw.perm is not None:
        original = torch.empty_like(codes)
        original[:, qw.perm] = codes
        codes = original
    zeros = qw.zeros.to(torch.float32)
    if not torch.equal(zeros, zeros.round()):
        raise ValueError(f"qw.zeros must hold integers to be exported to {what}")
    return codes, zeros.round().to(torch.int64).T, qw.scales.T


# ---------------------------------------------------------------- GPTQ

def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: Optional[torch.Tensor] = None,
              bits: int = 4, group_size: int = 128, version: int = 1) -> QuantizedWeight:
    """A GPTQ checkpoint's tensors (see the module docstring) -> QuantizedWeight.

    ``version`` 1 ("gptq": zeros stored minus one) or 2 ("gptq_v2"). With an
    act-order ``g_idx`` the result carries ``perm`` (input channels sorted by
    group, stable), so group_matmul gathers x's columns once per call.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8 for GPTQ, got {bits}")
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (zeros stored minus one) or 2, got {version}")
    per = 32 // bits
    _int32(qweight, "qweight", 2)
    _int32(qzeros, "qzeros", 2)
    k, n = qweight.shape[0] * per, qweight.shape[1]
    group = _group(group_size, k)
    g = reference.groups(k, group)
    if tuple(qzeros.shape) != (g, -(-n // per)) or n % per:
        raise ValueError(f"qzeros must have shape [{g}, {n // per}] for qweight {tuple(qweight.shape)} "
                         f"(K={k}, N={n}) and group_size={group}, got {tuple(qzeros.shape)}")
    _scales(scales, "scales", (g, n))
    perm = None
    if g_idx is not None:
        if not isinstance(g_idx, torch.Tensor) or g_idx.dtype not in (torch.int32, torch.int64):
            raise TypeError("g_idx must be an int32 or int64 tensor")
        if tuple(g_idx.shape) != (k,):
            raise ValueError(f"g_idx must have shape [{k}], got {tuple(g_idx.shape)}")
        order = torch.sort(g_idx.to(torch.int64), stable=True)
        if not torch.equal(order.values, torch.arange(k, device=g_idx.device) // group):
            raise ValueError(f"g_idx must put exactly group_size={group} input channels in each group "
                             f"0..{g - 1} (the last one partial)")
        if not torch.equal(order.indices, torch.arange(k, device=g_idx.device)):
            perm = order.indices
    codes = _unpack_words(qweight, bits, dim=0).T  # [N, K]
    zeros = _unpack_words(qzeros, bits, dim=1)[:, :n] + (1 if version == 1 else 0)  # [G, N]
    return _ours(codes, scales, zeros, bits, group, perm)


def to_gptq(qw: QuantizedWeight, version: int = 1, scale_dtype: torch.dtype = torch.float16) -> dict:
    """QuantizedWeight -> {"qweight", "qzeros", "scales", "g_idx"} in GPTQ's layout
    (g_idx int32; from ``perm`` when the weight has one). ``scales`` are cast
    to ``scale_dtype`` (GPTQ checkpoints hold float16: exact only for scales
    that float16 represents, e.g. after ``qw.to(scale_dtype=torch.float16)``)."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (zeros stored minus one) or 2, got {version}")
    codes, zeros, scales = _theirs(qw, "GPTQ")
    per = 32 // qw.bits
    n, k = qw.shape
    _words_fit(k, per, "in_features")
    _words_fit(n, per, "out_features")
    stored = zeros - (1 if version == 1 else 0)
    if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) >= 2 ** qw.bits):
        raise ValueError(f"qw.zeros do not fit GPTQ v{version}: stored zero points must lie in "
                         f"[0, {2 ** qw.bits - 1}] (v1 stores zero - 1, so a zero point of 0 cannot be exported)")
    channel_group = torch.arange(k, device=qw.device) // qw.group_size
    g_idx = torch.empty_like(channel_group)
    if qw.perm is not None:
        g_idx[qw.perm] = channel_group
    else:
        g_idx = channel_group
    return {"qweight": _pack_words(codes.T, qw.bits, dim=0), "qzeros": _pack_words(stored, qw.bits, dim=1),
            "scales": scales.to(scale_dtype).contiguous(), "g_idx": g_idx.to(torch.int32)}


# ---------------------------------------------------------------- AWQ

def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int = 128) -> QuantizedWeight:
    """An AWQ GEMM checkpoint's tensors (4 bits; see the module docstring) -> QuantizedWeight."""
    _int32(qweight, "qweight", 2)
    _int32(qzeros, "qzeros", 2)
    k, n = qweight.shape[0], qweight.shape[1] * 8
    group = _group(group_size, k)
    g = reference.groups(k, group)
    if tuple(qzeros.shape) != (g, n // 8):
        raise ValueError(f"qzeros must have shape [{g}, {n // 8}] for qweight {tuple(qweight.shape)} "
                         f"and group_size={group}, got {tuple(qzeros.shape)}")
    _scales(scales, "scales", (g, n))
    column_order = torch.tensor(_AWQ_COLUMN_TO_NIBBLE, device=qweight.device)

    def unpack(words):  # [R, C] -> [R, 8 C] in column order
        nibbles = _unpack_words(words, 4, dim=1).reshape(words.shape[0], -1, 8)
        return nibbles[:, :, column_order].reshape(words.shape[0], -1)
    return _ours(unpack(qweight).T, scales, unpack(qzeros), 4, group, None)


def to_awq(qw: QuantizedWeight, scale_dtype: torch.dtype = torch.float16) -> dict:
    """QuantizedWeight (4 bits, no input permutation) -> {"qweight", "qzeros", "scales"} in AWQ's layout."""
    _four_bit_in_order(qw, "AWQ")
    codes, zeros, scales = _theirs(qw, "AWQ")
    _words_fit(qw.out_features, 8, "out_features")
    nibble_order = torch.tensor(AWQ_ORDER, device=qw.device)

    def pack(values):  # [R, 8 C] -> [R, C]: nibble i of word c holds column 8c + AWQ_ORDER[i]
        grouped = values.reshape(values.shape[0], -1, 8)[:, :, nibble_order]
        return _pack_words(grouped.reshape(values.shape[0], -1), 4, dim=1)
    return {"qweight": pack(codes.T), "qzeros": pack(zeros), "scales": scales.to(scale_dtype).contiguous()}


# ---------------------------------------------------------------- torchao / tinygemm affine int4

TINYGEMM_MID_CODE = 8
TINYGEMM_GROUP_SIZES = (32, 64, 128, 256)


def _tinygemm_group(group_size: int, k: int) -> int:
    group = _checks.integer(group_size, "group_size")
    if group not in TINYGEMM_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {TINYGEMM_GROUP_SIZES} for tinygemm, got {group}")
    if k % group:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group}: tinygemm has no partial groups")
    return group


def from_tinygemm(int_data: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = 128) -> QuantizedWeight:
    """torchao's tinygemm affine int4 (``int_data`` [N, K] int32 codes, ``scales_and_zeros``
    [G, N, 2]; see the module docstring) -> QuantizedWeight with float32 scales and zeros
    z = 8 - zero / scale (fractional in general). Groups of 256 come in as pairs of
    groups of 128 sharing a scale and zero (the same weight; gencore's kernels take <= 128)."""
    _checks.tensor(int_data, "int_data", ndim=2, dtypes=(torch.int32,))
    n, k = int_data.shape
    group = _tinygemm_group(group_size, k)
    g = k // group
    _checks.tensor(scales_and_zeros, "scales_and_zeros", ndim=3, dtypes=reference.SCALE_DTYPES)
    if tuple(scales_and_zeros.shape) != (g, n, 2):
        raise ValueError(f"scales_and_zeros must have shape [{g}, {n}, 2] for int_data {tuple(int_data.shape)} "
                         f"and group_size={group}, got {tuple(scales_and_zeros.shape)}")
    _checks.same_device(int_data=int_data, scales_and_zeros=scales_and_zeros)
    if int_data.numel() and bool(((int_data < 0) | (int_data > 15)).any()):
        raise ValueError("int_data must hold 4-bit codes in [0, 15]")
    _checks.finite(scales_and_zeros, "scales_and_zeros")
    scales_gn, zero_gn = scales_and_zeros[..., 0].to(torch.float32), scales_and_zeros[..., 1].to(torch.float32)
    if bool((scales_gn == 0).any()):
        raise ValueError("scales_and_zeros holds a zero scale: its float zero point has no code")
    zeros_gn = TINYGEMM_MID_CODE - zero_gn / scales_gn
    if group not in reference.GROUP_SIZES and group < k:
        # gencore's kernels take groups of up to 128: a group of 256 is two of 128 with its scale and zero
        split = group // 128
        scales_gn, zeros_gn = (t.repeat_interleave(split, 0) for t in (scales_gn, zeros_gn))
        group = 128
    return _ours(int_data, scales_gn, zeros_gn, 4, group, None)


def to_tinygemm(qw: QuantizedWeight, scale_dtype: torch.dtype = torch.bfloat16) -> dict:
    """QuantizedWeight (4 bits, whole groups of 32-256, no input permutation) ->
    {"int_data", "scales_and_zeros", "group_size"} in torchao's tinygemm layout:
    ``torch.ops.aten._convert_weight_to_int4pack_for_cpu(int_data, 1)`` then
    ``torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)``
    computes x @ W^T (with x in ``scale_dtype``)."""
    _four_bit_in_order(qw, "tinygemm")
    group = _tinygemm_group(qw.group_size, qw.in_features)
    codes = reference.unpack(qw.data, 4, qw.in_features).to(torch.int32)
    scales = qw.scales.to(torch.float32)
    zero = (TINYGEMM_MID_CODE - qw.zeros.to(torch.float32)) * scales
    scales_and_zeros = torch.stack([scales.T, zero.T], dim=-1).to(scale_dtype).contiguous()
    return {"int_data": codes, "scales_and_zeros": scales_and_zeros, "group_size": group}
