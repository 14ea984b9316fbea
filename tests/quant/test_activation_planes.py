"""The integer-activation paths' quantization of one activation row into planes
(csrc/quant/activation_planes.h), byte for byte against its definition
(csrc/quant/group_matmul_planes.h), written here in numpy, at every SIMD level."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gencore import _native

from tests.conftest import native_cpu_only

PLANES = 3  # the float path's planes (kMaxPlanes); 1 is the int8-activation path


def digit_bits(bits: int) -> int:
    return 8 if bits == 4 else 7


def code_limit(planes: int, bits: int) -> float:
    return 127.0 if planes == 1 else 64.0 * 2.0 ** (2 * digit_bits(bits))


def int4_blocks(k: int, group: int) -> list[int]:
    """Starts of the 64-element blocks the int4 layout reorders."""
    if group == 32:
        return list(range(0, k - 63, 64))
    return [b for g0 in range(0, k, group) for b in range(g0, min(k, g0 + group) - 63, 64)]


def expected_planes(x: np.ndarray, bits: int, group: int, planes: int):
    """The definition: per-group scale max|x| / L (float32; 1 for an all-zero group), codes rounded
    ties to even after clamping, balanced base-2^D digits (least significant plane last), int4
    blocks as 32 even then 32 odd elements; xz = float32(float64(scale) * sum of the codes)."""
    k = x.shape[0]
    limit = np.float32(code_limit(planes, bits))
    codes = np.zeros(k, np.int64)
    sx, xz = [], []
    for g0 in range(0, k, group):
        part = x[g0:g0 + group]
        scale = np.float32(np.abs(part).max()) / limit
        scale = np.float32(1.0) if scale == 0 else np.float32(scale)
        c = np.rint(np.clip(part / scale, -limit, limit)).astype(np.int64)  # float32 division, ties to even
        codes[g0:g0 + group] = c
        sx.append(scale)
        xz.append(np.float32(np.float64(scale) * np.float64(c.sum())))
    digit = digit_bits(bits)
    out = np.zeros((planes, k), np.int8)
    rest = codes.copy()
    for p in range(planes - 1, 0, -1):
        low = ((rest & ((1 << digit) - 1)) ^ (1 << (digit - 1))) - (1 << (digit - 1))
        out[p] = low
        rest = (rest - low) >> digit
    out[0] = rest
    if bits == 4:
        for b in int4_blocks(k, group):
            block = out[:, b:b + 64].copy()
            out[:, b:b + 32], out[:, b + 32:b + 64] = block[:, 0::2], block[:, 1::2]
    return out, np.array(sx, np.float32), np.array(xz, np.float32)


def native_planes(x: np.ndarray, bits: int, group: int, planes: int):
    k = x.shape[0]
    groups = -(-k // group)
    codes = np.empty((planes, k), np.int8)
    sx, xz = np.empty((1, groups), np.float32), np.empty((1, groups), np.float32)
    _native.core._test_activation_planes(x.reshape(1, k), bits, group, planes, codes, sx, xz)
    return codes, sx[0], xz[0]


def assert_same(x, bits, group, planes):
    got, want = native_planes(x, bits, group, planes), expected_planes(x, bits, group, planes)
    for name, g, w in zip(("planes", "sx", "xz"), got, want):
        np.testing.assert_array_equal(g, w, err_msg=f"{name}: K={x.shape[0]} group={group} bits={bits} P={planes}")


@native_cpu_only
@pytest.mark.parametrize("planes", [1, PLANES])
@pytest.mark.parametrize("bits", [4, 8])
def test_planes_match_their_definition_at_every_level(rng, simd_level, bits, planes):
    for k in (1, 7, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 257, 300, 1000, 4101):
        for group in sorted({32, 64, 96, 128, k}):
            x = (torch.randn(k, generator=rng) * 3).numpy()
            if k > 40:
                x[::37] *= 300  # outliers: the rest of their groups keep few levels
                x[32:40] = 0.0  # a zero run (an all-zero group at group 32)
            assert_same(x, bits, group, planes)


@native_cpu_only
@pytest.mark.parametrize("planes", [1, PLANES])
@pytest.mark.parametrize("bits", [4, 8])
def test_planes_round_ties_to_even_and_clamp_at_the_limit(simd_level, bits, planes):
    # scale = 2^-10 exactly (the group's max is L * 2^-10), so every other element sits on a tie
    limit = code_limit(planes, bits)
    k = 200
    n = np.arange(k, dtype=np.float64) - k / 2
    x = ((n + 0.5) * 2.0 ** -10).astype(np.float32)
    x[0], x[1] = limit * 2.0 ** -10, -limit * 2.0 ** -10
    assert_same(x, bits, 64, planes)
    # all-zero groups get scale 1 and zero codes
    assert_same(np.zeros(130, np.float32), bits, 64, planes)


@native_cpu_only
def test_planes_hook_refuses_bad_arguments():
    x = np.ones((1, 64), np.float32)
    codes, s = np.empty((3, 64), np.int8), np.empty((1, 2), np.float32)
    with pytest.raises(ValueError, match="bits"):
        _native.core._test_activation_planes(x, 3, 32, 3, codes, s, s.copy())
    with pytest.raises(ValueError, match="planes"):
        _native.core._test_activation_planes(x, 4, 32, 2, codes, s, s.copy())
