"""The quant CUDA kernels: group_matmul and group_matmul_int8 (W4A8 / W8A8) on a GPU
(skipped without one) against the reference, on the caller's stream, and the fallback
above group_matmul's row limit; quantize / dequantize bit for bit with the CPU on a
GPU, and their glue over tests/cuda_fake.py everywhere."""
from __future__ import annotations

import pytest
import torch

from gencore import _native, quant
from gencore.quant import reference

from tests.conftest import cuda_only, on_a_busy_side_stream


@cuda_only
@pytest.mark.parametrize("bits,group_size", [(4, 32), (4, 128), (8, 64), (4, -1)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 31), (3, 17, 129), (8, 33, 256), (64, 40, 300)])
def test_cuda_kernel_matches_the_reference(rng, bits, group_size, m, n, k):
    qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size).to("cuda")
    x = torch.randn(m, k, generator=rng).cuda()
    bias = torch.randn(n, generator=rng).cuda()
    y = quant.group_matmul(x, qw, bias)
    want = reference.group_matmul(x.double(), qw.data, qw.scales, qw.zeros, bias.double(), *qw.layout())
    scale = float((x.double().abs() @ quant.dequantize(qw).double().abs().T).max())
    assert float((y.double() - want).abs().max()) / scale < 1e-5


@cuda_only
def test_cuda_kernel_runs_on_the_callers_stream(rng):
    qw = quant.quantize(torch.randn(64, 256, generator=rng), 4, 128).to("cuda")
    x = torch.randn(4, 256, generator=rng).cuda()
    direct = quant.group_matmul(x, qw)
    torch.testing.assert_close(on_a_busy_side_stream(x, lambda t: quant.group_matmul(t, qw)), direct)


@cuda_only
def test_more_rows_than_the_kernel_takes_fall_back_with_a_warning(rng):
    qw = quant.quantize(torch.randn(16, 128, generator=rng), 4, 32).to("cuda")
    x = torch.randn(_native.cuda.group_matmul_max_rows() + 1, 128, generator=rng).cuda()
    with pytest.warns(RuntimeWarning, match="rows"):
        y = quant.group_matmul(x, qw)
    torch.testing.assert_close(y, x @ quant.dequantize(qw).T, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- int8 activations (W4A8 / W8A8)

INT8_CASES = [(1, 1, 31, 4, 32), (3, 17, 129, 4, 128), (8, 33, 256, 8, 64), (9, 5, 300, 8, -1), (70, 12, 96, 4, 32)]


def _int8_inputs(rng, m, n, k, bits, group_size):
    qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size)
    x = torch.randn(m, k, generator=rng) * 3
    x[0, ::7] *= 50  # outliers: their groups' other codes keep few levels
    return qw, x, torch.randn(n, generator=rng)


def _close_to_the_int8_reference(y, x, qw, bias):
    want = reference.group_matmul_int8(x.cpu(), qw.data.cpu(), qw.scales.cpu(), qw.zeros.cpu(), bias.cpu(),
                                       *qw.layout())
    torch.testing.assert_close(y.cpu(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@cuda_only
@pytest.mark.parametrize("m,n,k,bits,group_size", INT8_CASES)
def test_cuda_int8_activation_kernel_matches_its_reference(rng, m, n, k, bits, group_size):
    qw, x, bias = _int8_inputs(rng, m, n, k, bits, group_size)
    y = quant.group_matmul(x.cuda(), qw.to("cuda"), bias.cuda(), activations="int8")
    assert y.is_cuda
    _close_to_the_int8_reference(y, x, qw, bias)


@cuda_only
def test_cuda_int8_activation_kernel_runs_on_the_callers_stream(rng):
    qw = quant.quantize(torch.randn(64, 256, generator=rng), 8, 128).to("cuda")
    x = torch.randn(4, 256, generator=rng).cuda()
    direct = quant.group_matmul(x, qw, activations="int8")
    torch.testing.assert_close(on_a_busy_side_stream(x, lambda t: quant.group_matmul(t, qw, activations="int8")),
                               direct)


@pytest.mark.parametrize("m,n,k,bits,group_size", INT8_CASES)
def test_cuda_int8_activation_glue_over_the_fake(rng, monkeypatch, m, n, k, bits, group_size):
    # The CUDA glue of group_matmul_int8 over tests/cuda_fake.py (host memory): pointers, sizes,
    # the workspace (the fake poisons it first), bias or none, against the exact reference.
    from gencore import _native_call
    from gencore.quant.ops import _matmul

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    qw, x, bias = _int8_inputs(rng, m, n, k, bits, group_size)
    run = _matmul.GROUP_MATMUL_INT8.implementation("native-cuda")
    group = k if group_size == -1 else group_size
    for b in (bias, None):
        y = run(x, qw.data, qw.scales, qw.zeros, b, bits, group, k)
        _close_to_the_int8_reference(y, x, qw, torch.zeros(n) if b is None else b)
    assert fake.calls["group_matmul_int8"] == 2
    need = fake.group_matmul_int8_workspace_bytes(m, k, group)
    assert fake.workspaces == [("group_matmul_int8", max(need, 1))] * 2


# ---------------------------------------------------------------- quantize / dequantize

QUANTIZE_CASES = [((5, 70), 4, 32, False, None), ((3, 33), 4, -1, True, None), ((4, 130), 8, 128, True, None),
                  ((6, 257), 4, 128, False, None), ((7, 96), 4, 32, False, "mse"), ((2, 64), 8, 64, True, "mse")]


@cuda_only
@pytest.mark.parametrize("shape,bits,group_size,symmetric,clip", QUANTIZE_CASES, ids=str)
def test_cuda_quantize_and_dequantize_are_bit_exact_with_the_cpu(rng, shape, bits, group_size, symmetric, clip):
    w = torch.randn(*shape, generator=rng) * (1 + 3 * torch.rand(*shape, generator=rng) ** 8)
    cpu = quant.quantize(w, bits, group_size, symmetric, clip=clip)
    gpu = quant.quantize(w.cuda(), bits, group_size, symmetric, clip=clip)
    assert torch.equal(gpu.data.cpu(), cpu.data) and torch.equal(gpu.scales.cpu(), cpu.scales)
    assert torch.equal(gpu.zeros.cpu(), cpu.zeros)
    assert torch.equal(quant.dequantize(gpu).cpu(), quant.dequantize(cpu))


@pytest.mark.parametrize("shape,bits,group_size,symmetric,clip", QUANTIZE_CASES, ids=str)
def test_cuda_quantize_glue_over_the_fake(rng, monkeypatch, shape, bits, group_size, symmetric, clip):
    # The CUDA glue of quantize / dequantize over tests/cuda_fake.py (host memory): round to
    # nearest bit for bit with the reference; the clipping search to the reference's errors.
    from gencore import _native_call
    from gencore.quant.ops import _matmul, _quantize

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    w = torch.randn(*shape, generator=rng) * (1 + 3 * torch.rand(*shape, generator=rng) ** 8)
    group = shape[1] if group_size == -1 else group_size
    steps = 20 if clip == "mse" else 0
    data, scales, zeros = _quantize.QUANTIZE.implementation("native-cuda")(w, bits, group, symmetric, steps)
    want = reference.quantize(w, bits, group, symmetric, clip_steps=steps)
    if clip is None:
        assert torch.equal(data, want[0]) and torch.equal(scales, want[1]) and torch.equal(zeros, want[2])
    dequantized = _matmul.DEQUANTIZE.implementation("native-cuda")(data, scales, zeros, bits, group, shape[1])
    assert torch.equal(dequantized, reference.dequantize(data, scales, zeros, bits, group, shape[1]))
    error = (dequantized - w).double().pow(2).sum()
    best = (reference.dequantize(*want, bits, group, shape[1]) - w).double().pow(2).sum()
    torch.testing.assert_close(error, best, rtol=1e-9, atol=0)
    assert fake.calls["quant_quantize"] == 1 and fake.calls["quant_dequantize"] == 1
