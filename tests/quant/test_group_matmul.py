"""group_matmul: native kernels against the reference on fresh random inputs,
every SIMD level, shapes, dtypes, paths, threads; gradients; bad input."""
from __future__ import annotations

import pytest
import torch

from gencore import _native, quant
from gencore.quant import reference
from gencore.quant.ops._matmul import GROUP_MATMUL_INT8

from tests.conftest import native_cpu_only

# (M, N, K): odd K, partial last groups, N = 1, K below one block, rows on both paths
SHAPES = [(1, 1, 1), (1, 5, 31), (2, 3, 33), (1, 17, 100), (3, 16, 129), (8, 9, 256), (5, 40, 300),
          (9, 7, 257), (16, 24, 96), (37, 33, 200), (70, 9, 160)]


def kernel_error(y: torch.Tensor, x: torch.Tensor, qw) -> float:
    """max |y - x W^T| / max (|x| |W|^T), with W the dequantized weight and the product in float64:
    the relative kernel error, on a scale no cancellation can make small."""
    w = reference.dequantize(qw.data, qw.scales, qw.zeros, *qw.layout()).double()
    xd = x.double().reshape(-1, w.shape[1])
    want = xd @ w.T
    scale = float((xd.abs() @ w.abs().T).max()) if want.numel() else 1.0
    return float((y.double().reshape(want.shape) - want).abs().max()) / max(scale, 1e-30) if want.numel() else 0.0


@native_cpu_only
def test_each_level_runs_its_own_integer_row_kernel(simd_level):
    # what makes the tests parametrized over simd_level cover every unit: the VEX AVX-VNNI unit at
    # level avxvnni, the EVEX one at avx512 where the CPU has AVX512-VNNI
    vnni512 = _native.core.has_avx512_vnni()
    want = {"scalar": "portable", "avx2": "avx2", "avxvnni": "avxvnni",
            "avx512": "avx512vnni" if vnni512 else "avxvnni" if _native.core.has_avx_vnni() else "avx2"}
    assert _native.core.quant_row_kernel() == want[simd_level]


@native_cpu_only
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_matches_the_dequantized_product_at_every_level(rng, simd_level, bits, group_size, symmetric):
    for m, n, k in SHAPES:
        w = torch.randn(n, k, generator=rng)
        qw = quant.quantize(w, bits, group_size, symmetric)
        x = torch.randn(m, k, generator=rng)
        y = quant.group_matmul(x, qw)
        assert y.shape == (m, n) and y.dtype == torch.float32
        path = _native.core.last_group_matmul_path()
        assert path == ("blas" if m >= _native.core.group_matmul_blas_min_rows(bits) else "rows")
        assert kernel_error(y, x, qw) < 1e-5, (m, n, k, path)


@native_cpu_only
@pytest.mark.parametrize("bits", [4, 8])
def test_rows_path_for_every_batch_size_below_the_blas_path(rng, simd_level, bits):
    # every kernel-call split of the activation rows (8 per driver call, 1-8 per kernel call)
    # and of the weight rows (21: odd, pairs and a single one left)
    qw = quant.quantize(torch.randn(21, 161, generator=rng), bits, 32)
    for m in range(1, _native.core.group_matmul_blas_min_rows(bits)):
        x = torch.randn(m, 161, generator=rng)
        assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-5, m
        assert _native.core.last_group_matmul_path() == "rows"


@native_cpu_only
@pytest.mark.parametrize("bits", [4, 8])
def test_rows_path_keeps_float32_level_accuracy(rng, simd_level, bits):
    # The rows path rounds x per group to fixed point (23 bits for int4 weights, 21 for int8: three
    # int8 planes): ~1e-7 of the output's scale on Gaussian x, and still well inside 1e-5 when one
    # element in 37 is 1000x larger (the others keep fewer bits against their group's maximum).
    for m, n, k, group in ((1, 64, 4096, 128), (3, 40, 1000, 32), (5, 33, 300, -1), (12, 20, 512, 64)):
        qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group)
        x = torch.randn(m, k, generator=rng)
        assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-6, (m, n, k, group)
        x[:, ::37] *= 1000
        assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-5, (m, n, k, group)
        assert _native.core.last_group_matmul_path() == "rows"


@native_cpu_only
@pytest.mark.parametrize("activations", ["float", "int8"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_rows_of_whole_groups(rng, simd_level, bits, group_size, activations):
    # One activation row against weights whose K is a whole number of groups (of whole blocks, or
    # int4 pairs of 32) has its own kernel: rows 4 or 2 at a time with the 1-3 left over one by
    # one (N), M = 9 ending on a single-row call, outliers; against the reference of each path.
    # Several rows of such weights (M = 2-9: activation rows 1-4 a call, N below, at and above
    # multiples of the weight rows a call).
    for m, n, k in ((1, 1, 384), (1, 7, 384), (9, 23, 768), (1, 6, 1536), (2, 5, 384), (3, 4, 256), (5, 8, 640),
                    (8, 17, 128), (7, 3, 384)):
        qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size)
        x = torch.randn(m, k, generator=rng)
        x[:, ::41] *= 100
        if activations == "float":
            y = quant.group_matmul(x, qw)
            assert kernel_error(y, x, qw) < 1e-5, (m, n, k)
        else:
            y = quant.group_matmul(x, qw, activations="int8")
            want = reference.group_matmul_int8(x, qw.data, qw.scales, qw.zeros, None, *qw.layout())
            scale = float((x.abs() @ quant.dequantize(qw).abs().T).max())  # one no cancellation makes small
            assert float((y - want).abs().max()) < 1e-6 * scale, (m, n, k)
        assert _native.core.last_group_matmul_path() == "rows"


@native_cpu_only
@pytest.mark.parametrize("symmetric", [False, True])
def test_int8_rows_path_at_the_code_extremes(rng, simd_level, symmetric):
    # Codes 0 and 255 against activations at +-max |x| (the largest products vpmaddubsw pairs: its
    # int16 sums must not saturate), constant rows (every digit plane at its limit), and a positive
    # mean (large zero-point shares against small results).
    n, k = 9, 300
    w = torch.randn(n, k, generator=rng)
    w[0], w[1] = w[0].abs(), -w[1].abs()  # all codes at one end of the range
    w[2, ::2], w[2, 1::2] = 5.0, -5.0
    qw = quant.quantize(w, 8, 64, symmetric)
    codes = quant.unpack(qw.data, 8, k)
    assert int(codes.max()) == 255 and (symmetric or int(codes.min()) == 0)
    for x in (torch.full((2, k), 3.0), torch.randn(3, k, generator=rng).sign() * 7, torch.rand(4, k, generator=rng) + 2,
              torch.cat([torch.ones(1, k), -torch.ones(1, k)])):
        assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-6
        want = reference.group_matmul_int8(x, qw.data, qw.scales, qw.zeros, None, *qw.layout())
        got = quant.group_matmul(x, qw, activations="int8")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@native_cpu_only
def test_int8_per_channel_groups_longer_than_one_exact_run(simd_level):
    # One per-channel group of K = 3 x 2^18 weights, every code 255 against activation codes 127:
    # a vpdpbusd lane would sum 24576 blocks of 4 x 255 x 127 = 3.2e9 > 2^31 in one run, so the
    # kernels sum the group in int32 runs of 2^18 weights.
    k = 3 << 18
    w = torch.ones(2, k)
    w[1] = -1.0
    qw = quant.quantize(w, 8, -1)
    assert bool((quant.unpack(qw.data, 8, k)[0] == 255).all())
    x = torch.ones(2, k)
    x[1] = -0.5
    want = reference.group_matmul_int8(x, qw.data, qw.scales, qw.zeros, None, *qw.layout())
    torch.testing.assert_close(quant.group_matmul(x, qw, activations="int8"), want, rtol=1e-5, atol=0)
    assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-6


@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_result(rng, num_threads, threads):
    qw = quant.quantize(torch.randn(70, 256, generator=rng), 4, 128)
    for m in (1, 5, 20):
        x = torch.randn(m, 256, generator=rng)
        num_threads(1)
        one = quant.group_matmul(x, qw)
        num_threads(threads)
        assert torch.equal(quant.group_matmul(x, qw), one), m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_activation_dtypes_leading_shapes_and_bias(rng, dtype):
    qw = quant.quantize(torch.randn(12, 96, generator=rng), 4, 32)
    x = torch.randn(2, 3, 96, generator=rng).to(dtype)
    bias = torch.randn(12, generator=rng).to(dtype)
    y = quant.group_matmul(x, qw, bias)
    assert y.shape == (2, 3, 12) and y.dtype == dtype
    want = reference.group_matmul(x.reshape(6, 96), qw.data, qw.scales, qw.zeros, bias, *qw.layout())
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]  # one rounding of the output
    torch.testing.assert_close(y.reshape(6, 12).float(), want.float(), rtol=tol, atol=tol * float(want.abs().max()))
    assert quant.group_matmul(torch.randn(96, generator=rng).to(dtype), qw).shape == (12,)


def test_batch_zero_and_non_contiguous_x(rng):
    qw = quant.quantize(torch.randn(10, 64, generator=rng), 8, 32)
    assert quant.group_matmul(torch.empty(0, 64), qw).shape == (0, 10)
    assert quant.group_matmul(torch.empty(4, 0, 64), qw).shape == (4, 0, 10)
    base = torch.randn(64, 6, generator=rng)
    x = base.T  # [6, 64], column stride 6
    assert torch.equal(quant.group_matmul(x, qw), quant.group_matmul(x.contiguous(), qw))
    x = torch.randn(5, 128, generator=rng)[:, ::2]
    assert torch.equal(quant.group_matmul(x, qw), quant.group_matmul(x.contiguous(), qw))


@pytest.mark.filterwarnings("ignore:.*no native CPU kernel for float64")  # the one-time fallback warning
def test_float64_runs_the_reference_in_float64(rng):
    qw = quant.quantize(torch.randn(6, 40, generator=rng), 4, 32)
    x = torch.randn(3, 40, generator=rng, dtype=torch.float64)
    y = quant.group_matmul(x, qw)
    assert y.dtype == torch.float64
    w = quant.dequantize(qw).double()
    torch.testing.assert_close(y, x @ w.T, rtol=1e-12, atol=1e-12)


def test_reference_backend_and_native_agree(rng, monkeypatch):
    qw = quant.quantize(torch.randn(30, 200, generator=rng), 4, 64)
    x = torch.randn(4, 200, generator=rng)
    native = quant.group_matmul(x, qw)
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    assert kernel_error(native, x, qw) < 1e-5
    torch.testing.assert_close(quant.group_matmul(x, qw), native, rtol=1e-5, atol=1e-5)


def test_caller_data_is_never_modified(rng):
    qw = quant.quantize(torch.randn(8, 70, generator=rng), 4, 32)
    x, bias = torch.randn(20, 70, generator=rng), torch.randn(8, generator=rng)
    saved = [t.clone() for t in (x, bias, qw.data, qw.scales, qw.zeros)]
    for rows in (x[:3], x):
        quant.group_matmul(rows, qw, bias)
    for t, before in zip((x, bias, qw.data, qw.scales, qw.zeros), saved):
        assert torch.equal(t, before)


# ---------------------------------------------------------------- gradients

@pytest.mark.filterwarnings("ignore:.*no native CPU kernel for float64")
def test_gradients_flow_to_x_and_bias_only(rng):
    qw = quant.quantize(torch.randn(5, 40, generator=rng), 4, 32)
    x = torch.randn(3, 40, generator=rng, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: quant.group_matmul(a, qw, b), (x, bias))  # float64: the reference
    x32 = x.detach().float().requires_grad_()
    g = torch.randn(3, 5, generator=rng)
    quant.group_matmul(x32, qw).backward(g)
    torch.testing.assert_close(x32.grad, g @ quant.dequantize(qw), rtol=1e-5, atol=1e-5)
    scales = qw.scales.clone().requires_grad_()
    qs = quant.QuantizedWeight(qw.data, scales, qw.zeros, *qw.layout()[:2], qw.shape)
    with pytest.raises(NotImplementedError, match="no gradient with respect to scales"):
        quant.group_matmul(x32.detach(), qs).sum().backward()


def test_a_bias_alone_needing_its_gradient_gets_it_with_the_ops_checks(rng):
    # float32 x without grad, a bias that needs one (a layer outside no_grad): torch adds the bias
    # after the kernel; the same result, the bias's gradient, and the op's checks of the bias.
    qw = quant.quantize(torch.randn(6, 64, generator=rng), 4, 32)
    x = torch.randn(3, 64, generator=rng)
    bias = torch.randn(6, generator=rng, requires_grad=True)
    y = quant.group_matmul(x, qw, bias)
    assert torch.equal(y, quant.group_matmul(x, qw, bias.detach()))
    y.square().sum().backward()
    torch.testing.assert_close(bias.grad, 2 * y.detach().sum(0))
    for bad, error, match in ((torch.full((6,), float("nan")), ValueError, "bias contains NaN"),
                              (torch.randn(1), ValueError, "out_features"),
                              (torch.randn(6, 1), ValueError, "bias must be 1-D"),
                              (torch.randn(6, dtype=torch.float64), TypeError, "bias must have the dtype of x")):
        with pytest.raises(error, match=match):
            quant.group_matmul(x, qw, bad.requires_grad_())


def test_torch_compile_through_the_fake_kernel(rng):
    qw = quant.quantize(torch.randn(9, 64, generator=rng), 4, 32)
    x = torch.randn(2, 4, 64, generator=rng)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: quant.group_matmul(a, qw) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), quant.group_matmul(x, qw) * 2)


# ---------------------------------------------------------------- bad input

@native_cpu_only
@pytest.mark.parametrize("activations", ["float", "int8"])
@pytest.mark.parametrize("rows, k", [(1, 64), (70, 64), (3, 0)])  # rows path, BLAS path (float), an empty sum
def test_every_path_refuses_a_non_finite_bias_itself(rng, activations, rows, k):
    # the native kernels check the bias (the op kit leaves it to them): any element, any row block
    qw = quant.quantize(torch.randn(37, k, generator=rng), 4, 32)
    x = torch.randn(rows, k, generator=rng)
    for value in (float("nan"), float("inf"), -float("inf")):
        for position in (0, 20, 36):
            bias = torch.randn(37, generator=rng)
            bias[position] = value
            before = bias.clone()
            with pytest.raises(ValueError, match=f"bias contains NaN or inf \\(element {position}\\)"):
                quant.group_matmul(x, qw, bias, activations=activations)
            assert torch.equal(bias.nan_to_num(), before.nan_to_num())


def test_bad_input_names_the_argument(rng):
    qw = quant.quantize(torch.randn(6, 64, generator=rng), 4, 32)
    x = torch.randn(2, 64, generator=rng)
    with pytest.raises(ValueError, match="in_features"):
        quant.group_matmul(torch.randn(2, 63), qw)
    with pytest.raises(TypeError, match="x"):
        quant.group_matmul(x.to(torch.int64), qw)
    with pytest.raises(TypeError, match="qw"):
        quant.group_matmul(x, qw.data)
    with pytest.raises(ValueError, match="bias"):
        quant.group_matmul(x, qw, torch.randn(5))
    with pytest.raises(TypeError, match="bias"):
        quant.group_matmul(x, qw, torch.randn(6, dtype=torch.float64))
    for name in ("x", "bias"):
        bad_x, bad_bias = x.clone(), torch.randn(6)
        (bad_x if name == "x" else bad_bias)[1] = float("nan")
        with pytest.raises(ValueError, match=name):
            quant.group_matmul(bad_x, qw, bad_bias)
    for name in ("scales", "zeros"):
        params = {"scales": qw.scales.clone(), "zeros": qw.zeros.clone()}
        params[name][2, 1] = float("inf")
        bad = quant.QuantizedWeight(qw.data, params["scales"], params["zeros"], 4, 32, qw.shape)
        with pytest.raises(ValueError, match=name):
            quant.group_matmul(x, bad)


@native_cpu_only
def test_half_precision_scales_run_natively(rng):
    qw = quant.quantize(torch.randn(11, 300, generator=rng), 4, 128).to(scale_dtype=torch.bfloat16)
    x = torch.randn(3, 300, generator=rng)
    assert kernel_error(quant.group_matmul(x, qw), x, qw) < 1e-5


# ---------------------------------------------------------------- int8 activations (W4A8)

@native_cpu_only
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activation_kernel_matches_its_reference_at_every_level(rng, simd_level, bits, group_size, symmetric):
    for m, n, k in SHAPES + [(0, 5, 64), (63, 6, 96)]:
        qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size, symmetric)
        x = torch.randn(m, k, generator=rng) * 3
        if m > 2:
            x[1, ::29] *= 200  # outliers: the rest of their groups keep few levels
        bias = torch.randn(n, generator=rng)
        y = quant.group_matmul(x, qw, bias, activations="int8")
        want = reference.group_matmul_int8(x, qw.data, qw.scales, qw.zeros, bias, *qw.layout())
        scale = float(want.abs().max()) if want.numel() else 1.0
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5 * scale, msg=f"{(m, n, k)}")


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_cost_a_bounded_accuracy_against_the_float_product(rng, bits):
    qw = quant.quantize(torch.randn(64, 512, generator=rng), bits, 128)
    x = torch.randn(16, 512, generator=rng)
    exact = x @ quant.dequantize(qw).T
    float_error = float((quant.group_matmul(x, qw) - exact).norm() / exact.norm())
    int8_error = float((quant.group_matmul(x, qw, activations="int8") - exact).norm() / exact.norm())
    # int8 rounding of Gaussian activations per group of 128: ~0.5% of the output's norm
    assert float_error < 1e-6 < int8_error < 2e-2


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_bad_input_names_the_argument(rng, monkeypatch, backend, bits):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    x = torch.randn(2, 64, generator=rng)
    qw = quant.quantize(torch.randn(4, 64, generator=rng), bits, 32)
    with pytest.raises(ValueError, match="activations"):
        quant.group_matmul(x, qw, activations="int4")
    with pytest.raises(ValueError, match="in_features"):
        quant.group_matmul(torch.randn(2, 63), qw, activations="int8")
    with pytest.raises(ValueError, match="bits"):
        GROUP_MATMUL_INT8(x, qw.data, qw.scales, qw.zeros, None, 2, 32, 64)
    bad_x = x.clone()
    bad_x[1, 5] = float("inf")
    with pytest.raises(ValueError, match="x"):
        quant.group_matmul(bad_x, qw, activations="int8")
    fractional = qw.zeros.clone()
    fractional[3, 1] += 0.5  # a tinygemm-style float zero: the integer dot products cannot take it
    bad = quant.QuantizedWeight(qw.data, qw.scales, fractional, bits, 32, qw.shape)
    saved = [t.clone() for t in (x, qw.data, qw.scales, fractional)]
    with pytest.raises(ValueError, match="zeros"):
        quant.group_matmul(x, bad, activations="int8")
    for t, before in zip((x, qw.data, qw.scales, fractional), saved):
        assert torch.equal(t, before)
    # the float path takes fractional zeros
    assert kernel_error(quant.group_matmul(x, bad), x, bad) < 1e-5
