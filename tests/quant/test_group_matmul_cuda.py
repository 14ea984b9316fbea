"""The quant CUDA kernels: group_matmul (a warp per output row for few rows, 3xTF32
tensor-core tiles from group_matmul_tile_rows() rows, any batch) and group_matmul_int8
(W4A8 / W8A8) on a GPU (skipped without one) against the reference and the CPU kernel,
on the caller's stream; quantize / dequantize bit for bit with the CPU on a GPU, and
their glue over tests/cuda_fake.py everywhere."""
from __future__ import annotations

import warnings

import pytest
import torch

from gencore import _native, _native_call, quant
from gencore.quant import reference
from gencore.quant.ops import _matmul, _quantize

from tests.conftest import cuda_only, on_a_busy_side_stream
from tests.cuda_fake import FakeCuda


@pytest.fixture
def fake_cuda(monkeypatch):
    """tests/cuda_fake.py's FakeCuda as gencore._cuda: the CUDA glue on host memory, poisoned outputs."""
    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    return fake


def _relative_error(y, x, qw, bias):
    """max |y - x . dequant(W)^T - bias| (float64 reference) / max |x| |dequant(W)|^T."""
    x, bias = x.double().cpu(), None if bias is None else bias.double().cpu()
    want = reference.group_matmul(x, qw.data.cpu(), qw.scales.cpu(), qw.zeros.cpu(), bias, *qw.layout())
    scale = float((x.abs() @ quant.dequantize(qw.to("cpu")).double().abs().T).max())
    return float((y.double().cpu() - want).abs().max()) / scale


def _inputs(rng, m, n, k, bits, group_size, device="cpu"):
    qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size)
    x, bias = torch.randn(m, k, generator=rng), torch.randn(n, generator=rng)
    return qw.to(device), x.to(device), bias.to(device)


@cuda_only
@pytest.mark.parametrize("bits,group_size", [(4, 32), (4, 128), (8, 64), (4, -1)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 31), (3, 17, 129), (8, 33, 256), (15, 40, 300)])
def test_cuda_kernel_matches_the_reference(rng, bits, group_size, m, n, k):
    qw, x, bias = _inputs(rng, m, n, k, bits, group_size, "cuda")
    assert _relative_error(quant.group_matmul(x, qw, bias), x, qw, bias) < 1e-5


@cuda_only
def test_cuda_kernel_runs_on_the_callers_stream(rng):
    qw = quant.quantize(torch.randn(64, 256, generator=rng), 4, 128).to("cuda")
    x = torch.randn(4, 256, generator=rng).cuda()
    direct = quant.group_matmul(x, qw)
    torch.testing.assert_close(on_a_busy_side_stream(x, lambda t: quant.group_matmul(t, qw)), direct)


# ---------------------------------------------------------------- the tensor-core tiles (larger batches)

# (M, N, K, bits, group_size): the tile-rows boundary (16, 17), whole and partial 64-row and
# 64-column tiles, odd N and K (int4: a half-used last byte), K not a multiple of the 32-wide
# chunk, partial last groups, per-channel groups, K below one chunk, and a long K.
TILE_CASES = [(16, 33, 96, 4, 32), (17, 1, 31, 8, -1), (64, 64, 128, 4, 128), (65, 65, 257, 4, 64),
              (200, 129, 300, 8, 64), (200, 17, 33, 4, -1), (130, 70, 1001, 4, 128), (16, 3, 7, 8, -1),
              (64, 96, 2048, 8, 32), (257, 200, 161, 4, 32)]


@cuda_only
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("m,n,k,bits,group_size", TILE_CASES)
def test_cuda_tiles_match_the_reference_and_the_cpu_kernel(rng, m, n, k, bits, group_size, with_bias):
    qw, x, bias = _inputs(rng, m, n, k, bits, group_size)
    bias = bias if with_bias else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the reference, whatever the batch
        y = quant.group_matmul(x.cuda(), qw.to("cuda"), None if bias is None else bias.cuda())
    assert y.is_cuda and y.shape == (m, n)
    assert _relative_error(y, x, qw, bias) < 1e-5
    cpu = quant.group_matmul(x, qw, bias)
    scale = float((x.abs() @ quant.dequantize(qw).abs().T).max())
    assert float((y.cpu() - cpu).abs().max()) / scale < 2e-5


def _tf32(t):
    """t rounded to TF32 as the tensor cores' operands are (cvt.rna: 10 mantissa bits, ties away)."""
    return ((t.contiguous().view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)


@cuda_only
def test_cuda_tiles_keep_float32_accuracy_where_plain_tf32_does_not(rng):
    # The bound the tiles meet is one that a plain TF32 product (operands rounded to TF32,
    # exact float64 sums here) misses: the test can fail.
    qw, x, bias = _inputs(rng, 128, 96, 300, 4, 32)
    assert _relative_error(quant.group_matmul(x.cuda(), qw.to("cuda"), bias.cuda()), x, qw, bias) < 1e-5
    plain = _tf32(x).double() @ _tf32(quant.dequantize(qw)).double().T + bias.double()
    assert _relative_error(plain, x, qw, bias) > 1e-5


@cuda_only
@pytest.mark.parametrize("bits", [4, 8])
def test_cuda_tiles_agree_with_the_warp_kernel_at_the_boundary(rng, bits):
    rows = _native.cuda.group_matmul_tile_rows()
    qw, x, bias = _inputs(rng, rows, 77, 333, bits, 64, "cuda")
    tiles, warps = quant.group_matmul(x, qw, bias), quant.group_matmul(x[:rows - 1], qw, bias)
    scale = float((x.abs() @ quant.dequantize(qw).abs().T).max())
    assert float((tiles[:rows - 1] - warps).abs().max()) / scale < 2e-5


@cuda_only
def test_cuda_tiles_keep_non_finite_values_non_finite(rng):
    qw, x, bias = _inputs(rng, 40, 70, 100, 4, 32)
    x[3, 5], x[7, 60], x[9, 0] = float("inf"), float("-inf"), float("nan")
    y = quant.group_matmul(x.cuda(), qw.to("cuda"), bias.cuda()).cpu()
    want = reference.group_matmul(x.double(), qw.data, qw.scales, qw.zeros, bias.double(), *qw.layout())
    assert torch.equal(y.isfinite(), want.isfinite())
    finite = want.isfinite()
    torch.testing.assert_close(y[finite].double(), want[finite], rtol=1e-5, atol=1e-4)


@cuda_only
def test_cuda_tiles_run_on_the_callers_stream(rng):
    qw, x, bias = _inputs(rng, 200, 130, 257, 4, 64, "cuda")
    direct = quant.group_matmul(x, qw, bias)
    torch.testing.assert_close(on_a_busy_side_stream(x, lambda t: quant.group_matmul(t, qw, bias)), direct)


@pytest.mark.parametrize("m,n,k,bits,group_size", TILE_CASES + [(15, 9, 70, 4, 32)])
def test_cuda_glue_takes_any_batch_over_the_fake(rng, fake_cuda, m, n, k, bits, group_size):
    # The CUDA glue of group_matmul over tests/cuda_fake.py (host memory): every batch goes to
    # the kernel (no row limit), poisoned outputs, bias or none.
    qw, x, bias = _inputs(rng, m, n, k, bits, group_size)
    run = _matmul.GROUP_MATMUL.implementation("native-cuda")
    group = k if group_size == -1 else group_size
    for b in (bias, None):
        assert _relative_error(run(x, qw.data, qw.scales, qw.zeros, b, bits, group, k), x, qw, b) < 1e-6
    assert fake_cuda.calls["group_matmul"] == 2


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
def test_cuda_int8_activation_glue_over_the_fake(rng, fake_cuda, m, n, k, bits, group_size):
    # The CUDA glue of group_matmul_int8 over tests/cuda_fake.py (host memory): pointers, sizes,
    # the workspace (the fake poisons it first), bias or none, against the exact reference.
    qw, x, bias = _int8_inputs(rng, m, n, k, bits, group_size)
    run = _matmul.GROUP_MATMUL_INT8.implementation("native-cuda")
    group = k if group_size == -1 else group_size
    for b in (bias, None):
        y = run(x, qw.data, qw.scales, qw.zeros, b, bits, group, k)
        _close_to_the_int8_reference(y, x, qw, torch.zeros(n) if b is None else b)
    assert fake_cuda.calls["group_matmul_int8"] == 2
    need = fake_cuda.group_matmul_int8_workspace_bytes(m, k, group)
    assert fake_cuda.workspaces == [("group_matmul_int8", max(need, 1))] * 2


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
def test_cuda_quantize_glue_over_the_fake(rng, fake_cuda, shape, bits, group_size, symmetric, clip):
    # The CUDA glue of quantize / dequantize over tests/cuda_fake.py (host memory): round to
    # nearest bit for bit with the reference; the clipping search to the reference's errors.
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
    assert fake_cuda.calls["quant_quantize"] == 1 and fake_cuda.calls["quant_dequantize"] == 1
