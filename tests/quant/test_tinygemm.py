"""torchao / tinygemm affine int4 import / export, tested against torchao's own
quantizer and dequantizer and torch's int4 CPU kernel (the format's code, not a
reading of it), round trips, and bad tensors."""
from __future__ import annotations

import pytest
import torch

from gencore import quant

try:  # torchao builds for particular torch versions: any failure to import is a skip, with its reason
    import torchao.quantization.utils as torchao_utils
except Exception as error:  # noqa: BLE001
    pytest.skip(f"torchao (pip install torchao; in the test extra) does not import here: {error!r}",
                allow_module_level=True)


def weight(rng, n, k, offset=0.0):
    return torch.randn(n, k, generator=rng) + offset


@pytest.mark.parametrize("n,k,group", [(8, 64, 32), (24, 256, 128), (3, 512, 256), (16, 128, 64)], ids=str)
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_import_of_torchaos_own_quantization(rng, n, k, group, offset):
    w = weight(rng, n, k, offset).to(torch.bfloat16)
    int_data, scales_and_zeros = torchao_utils.groupwise_affine_quantize_tensor(w, 4, group, dtype=torch.bfloat16)
    assert int_data.dtype == torch.int32 and int_data.shape == (n, k)  # the CPU form: one code per element
    theirs = torchao_utils.groupwise_affine_dequantize_tensor(int_data, scales_and_zeros, 4, group).float()
    before = (int_data.clone(), scales_and_zeros.clone())
    qw = quant.from_tinygemm(int_data, scales_and_zeros, group)
    assert torch.equal(int_data, before[0]) and torch.equal(scales_and_zeros, before[1])  # inputs untouched
    assert torch.equal(quant.unpack(qw.data, 4, k).to(torch.int32), int_data)
    ours = quant.dequantize(qw)
    # torchao dequantizes in bfloat16; ours in float32 from the float zero point
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2 * float(theirs.abs().max()))
    exact = ((int_data.float() - 8) * scales_and_zeros[..., 0].T.float().repeat_interleave(group, 1)
             + scales_and_zeros[..., 1].T.float().repeat_interleave(group, 1))
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-6 * float(exact.abs().max()))
    x = torch.randn(5, k, generator=rng)
    torch.testing.assert_close(quant.group_matmul(x, qw), x @ exact.T, rtol=1e-4,
                               atol=1e-5 * float((x.abs() @ exact.abs().T).max()))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n,k,group", [(16, 128, 32), (64, 256, 128), (32, 256, -1)], ids=str)
def test_export_runs_in_torchs_int4_kernel(rng, symmetric, n, k, group):
    qw = quant.quantize(weight(rng, n, k), bits=4, group_size=group, symmetric=symmetric)
    group = k if group == -1 else group  # per channel: one group of 256
    exported = quant.to_tinygemm(qw)
    assert exported["group_size"] == group and exported["scales_and_zeros"].shape == (k // group, n, 2)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(exported["int_data"], 1)
    x = torch.randn(4, k, generator=rng).to(torch.bfloat16)
    theirs = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, exported["scales_and_zeros"]).float()
    ours = quant.group_matmul(x.float(), qw)
    torch.testing.assert_close(theirs, ours, rtol=2e-2, atol=2e-2 * float(ours.abs().max()))
    back = torchao_utils.groupwise_affine_dequantize_tensor(exported["int_data"], exported["scales_and_zeros"], 4,
                                                           group).float()
    want = quant.dequantize(qw)
    torch.testing.assert_close(back, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()))


def test_round_trip_keeps_codes_and_weights(rng):
    qw = quant.quantize(weight(rng, 12, 256), bits=4, group_size=64)
    exported = quant.to_tinygemm(qw, scale_dtype=torch.float32)
    again = quant.from_tinygemm(exported["int_data"], exported["scales_and_zeros"], exported["group_size"])
    assert torch.equal(again.data, qw.data)
    torch.testing.assert_close(again.scales, qw.scales, rtol=0, atol=0)
    torch.testing.assert_close(again.zeros, qw.zeros, rtol=1e-6, atol=1e-5)  # integer z through (8 - z) s / s
    torch.testing.assert_close(quant.dequantize(again), quant.dequantize(qw), rtol=1e-6, atol=1e-6)


def test_bad_tensors_name_the_argument(rng):
    qw = quant.quantize(weight(rng, 8, 128), bits=4, group_size=32)
    good = quant.to_tinygemm(qw)
    int_data, sz = good["int_data"], good["scales_and_zeros"]
    with pytest.raises(TypeError, match="int_data"):
        quant.from_tinygemm(int_data.to(torch.int64), sz, 32)
    with pytest.raises(ValueError, match="scales_and_zeros must have shape"):
        quant.from_tinygemm(int_data, sz[:, :4], 32)
    with pytest.raises(ValueError, match="group_size"):
        quant.from_tinygemm(int_data, sz, 48)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        quant.from_tinygemm(int_data + 9, sz, 32)
    bad = sz.clone()
    bad[0, 0, 0] = 0
    with pytest.raises(ValueError, match="zero scale"):
        quant.from_tinygemm(int_data, bad, 32)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="scales_and_zeros"):
        quant.from_tinygemm(int_data, bad, 32)
    with pytest.raises(ValueError, match="4-bit"):
        quant.to_tinygemm(quant.quantize(weight(rng, 8, 128), bits=8, group_size=32))
    with pytest.raises(ValueError, match="partial groups"):
        quant.to_tinygemm(quant.quantize(weight(rng, 8, 100), bits=4, group_size=32))
