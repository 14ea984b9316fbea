"""The canonical format: quantize (native vs the reference, bit for bit), pack /
unpack, dequantize, quantization error, bad input."""
from __future__ import annotations

import pytest
import torch

from gencore import quant
from gencore.quant import reference

from tests.conftest import native_cpu_only

SHAPES = [(1, 1), (3, 31), (5, 64), (4, 129), (7, 257), (2, 1000)]


def unpacked_by_loop(data: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """The documented order, element by element: element j in byte j // 2, low nibble for even j."""
    out = torch.empty(data.shape[0], k, dtype=torch.uint8)
    for n in range(data.shape[0]):
        for j in range(k):
            byte = int(data[n, j // 2]) if bits == 4 else int(data[n, j])
            out[n, j] = (byte >> (4 * (j % 2))) & 0x0F if bits == 4 else byte
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [1, 2, 7, 32, 33])
def test_pack_unpack_round_trip_in_the_documented_order(rng, bits, k):
    codes = torch.randint(0, 2 ** bits, (3, k), generator=rng, dtype=torch.uint8)
    data = quant.pack(codes, bits)
    assert data.dtype == torch.uint8 and data.shape == (3, reference.packed_columns(k, bits))
    assert torch.equal(quant.unpack(data, bits, k), codes)
    assert torch.equal(unpacked_by_loop(data, bits, k), codes)
    if bits == 4 and k % 2:
        assert int((data[:, -1] >> 4).max()) == 0, "the padding nibble of an odd row is 0"


@native_cpu_only
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_quantize_is_bit_exact_with_the_reference(rng, shape, bits, group_size, symmetric):
    w = torch.randn(*shape, generator=rng) * torch.rand(shape[0], 1, generator=rng) * 3
    qw = quant.quantize(w, bits, group_size, symmetric)
    group = shape[1] if group_size == -1 else group_size
    data, scales, zeros = reference.quantize(w, bits, group, symmetric)
    assert torch.equal(qw.data, data) and torch.equal(qw.scales, scales) and torch.equal(qw.zeros, zeros)
    assert qw.scales.shape == (shape[0], -(-shape[1] // group)) and qw.group_size == group


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_zeros_and_dequantized_values_obey_the_formulas(rng, bits, symmetric):
    w = torch.randn(6, 200, generator=rng)
    qw = quant.quantize(w, bits, 64, symmetric)
    codes = quant.unpack(qw.data, bits, 200).float()
    top = 2 ** bits - 1
    assert codes.min() >= 0 and codes.max() <= top
    assert torch.equal(qw.zeros, qw.zeros.round()) and qw.zeros.min() >= 0 and qw.zeros.max() <= top
    if symmetric:
        assert torch.all(qw.zeros == 2 ** (bits - 1))
    s = qw.scales.repeat_interleave(64, 1)[:, :200]
    z = qw.zeros.repeat_interleave(64, 1)[:, :200]
    w_hat = quant.dequantize(qw)
    assert torch.equal(w_hat, (codes - z) * s)
    # round to nearest: within half a step, except at the top of an asymmetric range, where the
    # rounded zero point can push the largest element half a step past the last code (then clipped)
    error = (w_hat - w).abs() / s
    assert torch.all(error <= 1 + 1e-5)
    assert float((error > 0.5 + 1e-5).float().mean()) < 0.05
    assert float(error.mean()) < 0.3  # uniform rounding error averages a quarter step


def sqnr_db(w, w_hat):
    return float(10 * torch.log10(w.pow(2).sum() / (w - w_hat).pow(2).sum()))


@pytest.mark.parametrize("bits,group_size,low", [(4, 32, 18.0), (4, 128, 16.0), (4, -1, 12.0), (8, 128, 40.0)])
def test_quantization_error_is_sane_and_shrinks_with_smaller_groups(rng, bits, group_size, low):
    # Gaussian weights: int4 uniform quantization gives ~20 dB, int8 ~45 dB; per channel is worst.
    w = torch.randn(64, 512, generator=rng)
    qw = quant.quantize(w, bits, group_size)
    db = sqnr_db(w, quant.dequantize(qw))
    assert db > low
    if group_size == 32:
        assert db > sqnr_db(w, quant.dequantize(quant.quantize(w, bits, 128)))


def test_zero_and_constant_groups_dequantize_exactly(rng):
    w = torch.zeros(2, 64)
    w[1, 32:] = 0.75
    for symmetric in (False, True):
        qw = quant.quantize(w, 4, 32, symmetric)
        assert torch.equal(quant.dequantize(qw)[0], w[0])
        assert torch.allclose(quant.dequantize(qw)[1], w[1], atol=0.75 / 14)
        assert qw.scales[0, 0] == 1.0


def test_low_precision_and_float64_weights_are_accepted(rng):
    w = torch.randn(4, 96, generator=rng, dtype=torch.float64)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        qw = quant.quantize(w.to(dtype), 4, 32)
        data, _, _ = reference.quantize(w.to(dtype).float(), 4, 32, False)
        assert torch.equal(qw.data, data)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_weight(value):
    w = torch.randn(3, 64)
    w[1, 5] = value
    with pytest.raises(ValueError, match="weight"):
        quant.quantize(w)


@pytest.mark.parametrize("kwargs,match", [({"bits": 3}, "bits"), ({"bits": 16}, "bits"), ({"group_size": 48}, "group_size"),
                                          ({"group_size": 0}, "group_size"), ({"bits": 4.0}, "bits"),
                                          ({"symmetric": 1}, "symmetric")])
def test_unsupported_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        quant.quantize(torch.randn(3, 64), **kwargs)


def test_quantize_refuses_non_tensors_and_wrong_ranks():
    with pytest.raises(TypeError, match="weight"):
        quant.quantize([[1.0, 2.0]])
    with pytest.raises(ValueError, match="weight"):
        quant.quantize(torch.randn(64))
    with pytest.raises(TypeError, match="weight"):
        quant.quantize(torch.ones(2, 64, dtype=torch.int32))


def test_the_container_refuses_tensors_that_disagree():
    qw = quant.quantize(torch.randn(4, 100), 4, 32)
    with pytest.raises(ValueError, match="scales"):
        quant.QuantizedWeight(qw.data, qw.scales[:, :3], qw.zeros, 4, 32, (4, 100))
    with pytest.raises(ValueError, match="zeros"):
        quant.QuantizedWeight(qw.data, qw.scales, qw.zeros[:3], 4, 32, (4, 100))
    with pytest.raises(ValueError, match="data"):
        quant.QuantizedWeight(qw.data[:, :49], qw.scales, qw.zeros, 4, 32, (4, 100))
    with pytest.raises(TypeError, match="data"):
        quant.QuantizedWeight(qw.data.to(torch.int32), qw.scales, qw.zeros, 4, 32, (4, 100))
    with pytest.raises(TypeError, match="scales"):
        quant.QuantizedWeight(qw.data, qw.scales.to(torch.int32), qw.zeros, 4, 32, (4, 100))
    with pytest.raises(TypeError, match="zeros"):
        quant.QuantizedWeight(qw.data, qw.scales, qw.zeros.half(), 4, 32, (4, 100))
    with pytest.raises(ValueError, match="bits"):
        quant.QuantizedWeight(qw.data, qw.scales, qw.zeros, 2, 32, (4, 100))
    with pytest.raises(ValueError, match="out_features"):
        quant.QuantizedWeight(qw.data, qw.scales, qw.zeros, 4, 32, (5, 100))


def test_quantize_leaves_the_weight_untouched(rng):
    w = torch.randn(5, 77, generator=rng)
    before = w.clone()
    quant.quantize(w, 4, 32)
    assert torch.equal(w, before)


@native_cpu_only
def test_dequantize_native_equals_the_reference_for_half_scales(rng):
    qw = quant.quantize(torch.randn(9, 130, generator=rng), 4, 64).to(scale_dtype=torch.float16)
    got = quant.dequantize(qw)
    want = reference.dequantize(qw.data, qw.scales, qw.zeros, 4, 64, 130)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="scales"):
        bad = qw.scales.clone()
        bad[3, 1] = float("nan")
        quant.dequantize(quant.QuantizedWeight(qw.data, bad, qw.zeros, 4, 64, qw.shape))


# ---------------------------------------------------------------- MSE-optimal clipping

def group_errors(w, qw):
    """[N, G] squared error of each group of qw's dequantized weight against w."""
    group = qw.group_size
    diff = (quant.dequantize(qw).double() - w.double()) ** 2
    padded = torch.nn.functional.pad(diff, (0, qw.scales.shape[1] * group - w.shape[1]))
    return padded.reshape(w.shape[0], -1, group).sum(2)


@native_cpu_only
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape,group_size,steps", [((5, 96), 32, 20), ((3, 130), 64, 7), ((1, 1), 32, 2),
                                                     ((4, 257), -1, 11), ((7, 33), 128, 20)], ids=str)
def test_mse_clipping_native_against_the_reference(rng, shape, group_size, steps, bits, symmetric):
    # heavy-tailed rows (outliers), so clipping pays
    w = torch.randn(*shape, generator=rng) * (1 + 4 * torch.rand(*shape, generator=rng) ** 8)
    qw = quant.quantize(w, bits, group_size, symmetric, clip="mse", clip_steps=steps)
    group = shape[1] if group_size == -1 else group_size
    data, scales, zeros = reference.quantize(w, bits, group, symmetric, clip_steps=steps)
    same = (qw.scales == scales) & (qw.zeros == zeros)
    # The two sum the group errors in different orders: a group whose best two ratios tie to
    # rounding may pick either; every group's error must still be the reference's minimum.
    assert same.float().mean() >= 0.9
    ref = quant.QuantizedWeight(data, scales, zeros, bits, group, shape)
    torch.testing.assert_close(group_errors(w, qw), group_errors(w, ref), rtol=1e-9, atol=1e-12)
    plain = quant.quantize(w, bits, group_size, symmetric)
    assert torch.all(group_errors(w, qw) <= group_errors(w, plain) * (1 + 1e-12))


def test_mse_clipping_beats_round_to_nearest_on_heavy_tails(rng):
    w = torch.distributions.StudentT(3.0).sample((64, 512))
    for symmetric, most in ((False, 0.95), (True, 0.85)):  # measured about 0.91 and 0.77
        rtn = quant.quantize(w, 4, 128, symmetric)
        mse = quant.quantize(w, 4, 128, symmetric, clip="mse")
        assert group_errors(w, mse).sum() / group_errors(w, rtn).sum() < most
    mse = quant.quantize(w, 4, 128, clip="mse")
    # and the search is exact: a finer grid never does worse than its own subgrid
    fine = quant.quantize(w, 4, 128, clip="mse", clip_steps=40)
    assert group_errors(w, fine).sum() <= group_errors(w, mse).sum() * (1 + 1e-12)


def test_clip_arguments_are_checked(rng):
    w = torch.randn(4, 64, generator=rng)
    with pytest.raises(ValueError, match="clip"):
        quant.quantize(w, clip="minmax")
    with pytest.raises(ValueError, match="clip_steps"):
        quant.quantize(w, clip="mse", clip_steps=1)
    with pytest.raises(TypeError, match="clip_steps"):
        quant.quantize(w, clip="mse", clip_steps=2.5)
    layer = quant.QuantLinear.from_linear(torch.nn.Linear(64, 8), clip="mse")
    assert layer(torch.randn(2, 64, generator=rng)).shape == (2, 8)
