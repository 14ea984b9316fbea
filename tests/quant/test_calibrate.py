"""The DGQ-style outlier permutation: channel order, quantize(perm=), and that
it cuts the int8-activation error where outlier channels are scattered."""
from __future__ import annotations

import pytest
import torch

from gencore import quant


def outlier_activations(rng, rows, k, outliers, scale=50.0):
    x = torch.randn(rows, k, generator=rng)
    channels = torch.randperm(k, generator=rng)[:outliers]
    x[:, channels] *= scale
    return x, channels


def test_order_is_by_decreasing_magnitude_with_stable_ties(rng):
    x, channels = outlier_activations(rng, 64, 256, 5)
    perm = quant.outlier_permutation(x)
    assert perm.dtype == torch.int64 and torch.equal(torch.sort(perm).values, torch.arange(256))
    assert set(perm[:5].tolist()) == set(channels.tolist())
    magnitude = x.abs().amax(0)[perm]
    assert torch.all(magnitude[:-1] >= magnitude[1:])
    assert torch.equal(quant.outlier_permutation(torch.ones(2, 4)), torch.arange(4))  # ties: lower channel first
    assert torch.equal(quant.outlier_permutation(x.reshape(4, 16, 256)), perm)  # any leading shape
    assert torch.equal(quant.outlier_permutation(x.abs().amax(0)), perm)  # or per-channel magnitudes


def test_permuted_weight_is_the_same_weight(rng):
    w = torch.randn(24, 200, generator=rng)
    perm = torch.randperm(200, generator=rng)
    qw = quant.quantize(w, 4, 64, perm=perm)
    assert torch.equal(qw.perm, perm)
    plain_of_permuted = quant.quantize(w[:, perm], 4, 64)
    assert torch.equal(qw.data, plain_of_permuted.data)
    restored = torch.empty_like(w)
    restored[:, perm] = quant.dequantize(plain_of_permuted)
    assert torch.equal(quant.dequantize(qw), restored)  # original column order
    x = torch.randn(3, 200, generator=rng)
    torch.testing.assert_close(quant.group_matmul(x, qw), x @ quant.dequantize(qw).T, rtol=1e-5, atol=1e-5)
    layer = quant.QuantLinear.from_linear(torch.nn.Linear(200, 24), perm=perm)
    assert torch.equal(layer.perm, perm)
    state = layer.state_dict()
    again = quant.QuantLinear(200, 24, act_order=True)
    again.load_state_dict(state)
    torch.testing.assert_close(again(x), layer(x))


def test_permutation_cuts_the_int8_activation_error(rng):
    k, n = 1024, 64
    # 32 outlier channels 10x the rest: scattered, they set the activation scale of every
    # group they are in; sorted, they fill one group of 128 (measured: 0.54x the error)
    calibration, channels = outlier_activations(rng, 256, k, 32, scale=10.0)
    w = torch.randn(n, k, generator=rng)
    x = torch.randn(32, k, generator=rng)
    x[:, channels] *= 10.0
    exact = x @ w.T
    errors = {}
    for name, perm in (("natural", None), ("sorted", quant.outlier_permutation(calibration))):
        qw = quant.quantize(w, 4, 128, perm=perm)
        float_path = quant.group_matmul(x, qw)
        int8_path = quant.group_matmul(x, qw, activations="int8")
        errors[name] = float((int8_path - float_path).norm() / float_path.norm())
        assert float((float_path - exact).norm() / exact.norm()) < 0.2  # the 4-bit weight error itself
    assert errors["sorted"] < 0.7 * errors["natural"]


def test_bad_input_names_the_argument(rng):
    with pytest.raises(ValueError, match="activations"):
        quant.outlier_permutation(torch.zeros(0, 8))
    with pytest.raises(ValueError, match="activations"):
        quant.outlier_permutation(torch.tensor([1.0, float("nan")]))
    w = torch.randn(4, 64, generator=rng)
    with pytest.raises(ValueError, match="perm"):
        quant.quantize(w, perm=torch.arange(63))
    with pytest.raises(ValueError, match="perm"):
        quant.quantize(w, perm=torch.zeros(64, dtype=torch.int64))
    with pytest.raises(ValueError, match="perm"):
        quant.quantize(w, perm=torch.arange(64) + 1)
    with pytest.raises(TypeError, match="perm"):
        quant.quantize(w, perm=torch.arange(64, dtype=torch.int32))
