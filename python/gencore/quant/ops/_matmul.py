"""quant dequantize and group_matmul ops (one gencore._op.Op each)."""
from __future__ import annotations

import torch

from ... import _checks, _dispatch, _native, _native_call
from ..._op import Op
from .. import reference
from . import _layout

# The activation dtypes with a native CPU kernel (fp16 / bf16 are converted to float32 rows).
_FLOAT16_32 = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- dequantize

def _check_dequantize(data, scales, zeros, bits, group_size, in_features):
    bits, group_size, in_features = _layout.packed(data, scales, zeros, bits, group_size, in_features)
    return data, scales, zeros, bits, group_size, in_features


def _fake_dequantize(data, scales, zeros, bits, group_size, in_features):
    return scales.new_empty((data.shape[0], in_features), dtype=torch.float32)


def _cpu_dequantize(data, scales, zeros, bits, group_size, in_features):
    out, out_array = _native_call.cpu_output((data.shape[0], in_features), torch.float32)
    _native.core.quant_dequantize(_layout.kernel_data(data).numpy(), _layout.kernel_params(scales).numpy(),
                                  _layout.kernel_params(zeros).numpy(), bits, group_size, in_features, out_array,
                                  _native_call.threads())
    return out


def _cuda_dequantize(data, scales, zeros, bits, group_size, in_features):
    codes = data.detach().contiguous()
    s, z = _native_call.cuda_input(scales), _native_call.cuda_input(zeros)
    out = _native_call.output((data.shape[0], in_features), torch.float32, codes.device)
    _native.cuda.quant_dequantize(codes.data_ptr(), s.data_ptr(), z.data_ptr(), data.shape[0], in_features, bits,
                                  group_size, out.data_ptr(), _native_call.cuda_stream(codes.device),
                                  _native_call.device_index(codes.device))
    return out


def _samples_dequantize(gen):
    out = []
    for n, k, bits, group, symmetric in ((5, 70, 4, 32, False), (3, 33, 4, 33, True), (0, 64, 8, 64, False),
                                         (4, 130, 8, 128, True), (2, 7, 4, 7, False)):
        data, scales, zeros = reference.quantize(torch.randn(n, k, generator=gen), bits, group, symmetric)
        out.append((data, scales, zeros, bits, group, k))
    return out


DEQUANTIZE = Op(
    "quant.dequantize",
    "(Tensor data, Tensor scales, Tensor zeros, int bits, int group_size, int in_features) -> Tensor",
    check=_check_dequantize, fake=_fake_dequantize, reference=reference.dequantize, cpu=_cpu_dequantize,
    cuda=_cuda_dequantize, cpu_dtypes=_FLOAT16_32, anchor=1, finite=("scales", "zeros"), cpu_kernel_checks=("scales", "zeros"),
    empty=lambda data, scales, zeros, bits, group_size, in_features: data.shape[0] * in_features == 0,
    samples=_samples_dequantize,
)


# ---------------------------------------------------------------- group_matmul

def _check_matmul(x, data, scales, zeros, bias, bits, group_size, in_features):
    _checks.tensor(x, "x", ndim=2)
    bits, group_size, in_features = _layout.packed(data, scales, zeros, bits, group_size, in_features)
    if bias is not None:
        _checks.tensor(bias, "bias", ndim=1)
        _checks.same_dtype("x", x, bias=bias)
        _checks.same_size("out_features", **{"bias.shape[0]": bias.shape[0], "data.shape[0]": data.shape[0]})
        _checks.same_device(x=x, data=data, bias=bias)
    else:
        _checks.same_device(x=x, data=data)
    _checks.same_size("in_features", **{"x.shape[1]": x.shape[1], "in_features": in_features})
    return x, data, scales, zeros, bias, bits, group_size, in_features


def _fake_matmul(x, data, scales, zeros, bias, bits, group_size, in_features):
    return x.new_empty((x.shape[0], data.shape[0]))


def _cpu_matmul(x, data, scales, zeros, bias, bits, group_size, in_features, int8_activations=False):
    n = data.shape[0]
    y, y_array = _native_call.cpu_output((x.shape[0], n), torch.float32)
    bias_array = None if bias is None else _native_call.cpu_array(bias, torch.float32)
    _native.core.group_matmul(_native_call.cpu_array(x, torch.float32), _layout.kernel_data(data).numpy(),
                              _layout.kernel_params(scales).numpy(), _layout.kernel_params(zeros).numpy(),
                              bias_array, bits, group_size, in_features, y_array, _native_call.threads(),
                              int8_activations)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _cuda_operands(x, data, scales, zeros, bias):
    """The CUDA kernels' inputs (float32, contiguous) and a float32 output [M, N]."""
    rows = _native_call.cuda_input(x)
    codes = data.detach().contiguous()
    s, z = _native_call.cuda_input(scales), _native_call.cuda_input(zeros)
    b = None if bias is None else _native_call.cuda_input(bias)
    y = _native_call.output((rows.shape[0], data.shape[0]), torch.float32, rows.device)
    return rows, codes, s, z, b, y


def _cuda_matmul(x, data, scales, zeros, bias, bits, group_size, in_features):
    rows, codes, s, z, b, y = _cuda_operands(x, data, scales, zeros, bias)
    _native.cuda.group_matmul(rows.data_ptr(), rows.shape[0], in_features, codes.data_ptr(), codes.shape[0],
                              s.data_ptr(), z.data_ptr(), group_size, bits, 0 if b is None else b.data_ptr(),
                              y.data_ptr(), _native_call.cuda_stream(rows.device),
                              _native_call.device_index(rows.device))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _setup_context(ctx, inputs, output):
    x, data, scales, zeros, bias, bits, group_size, in_features = inputs
    ctx.save_for_backward(data, scales, zeros)
    ctx.layout = (bits, group_size, in_features)
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    # y = x W^T + b: dx = grad W (W dequantized once more, float32), db = sum of grad over rows.
    for name, index in (("scales", 2), ("zeros", 3)):
        if ctx.needs_input_grad[index]:
            raise NotImplementedError(f"gencore.quant.group_matmul has no gradient with respect to {name} "
                                      "(the weight is quantized; only x and bias are differentiable)")
    data, scales, zeros = ctx.saved_tensors
    grad_x = grad_bias = None
    dtype = reference.compute_dtype(ctx.x_dtype)
    if ctx.needs_input_grad[0]:
        w = DEQUANTIZE.trusted(data, scales, zeros, *ctx.layout)
        grad_x = (grad.to(dtype) @ w.to(dtype)).to(ctx.x_dtype)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.to(dtype).sum(0).to(ctx.x_dtype)
    return grad_x, None, None, None, grad_bias, None, None, None


def _samples_matmul(gen):
    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    out = []
    # (M, N, K, bits, group, symmetric, bias): odd K, partial groups, N = 1, M = 0, the BLAS path (M >= 16)
    for m, n, k, bits, group, symmetric, bias in ((3, 5, 70, 4, 32, False, True), (1, 1, 33, 4, 33, True, False),
                                                  (0, 4, 64, 8, 64, False, True), (2, 7, 130, 8, 128, True, True),
                                                  (20, 9, 100, 4, 64, False, False), (8, 3, 257, 4, 128, False, True)):
        data, scales, zeros = reference.quantize(randn(n, k), bits, group, symmetric)
        out.append((randn(m, k), data, scales, zeros, randn(n) if bias else None, bits, group, k))
    return out


GROUP_MATMUL = Op(
    "quant.group_matmul",
    "(Tensor x, Tensor data, Tensor scales, Tensor zeros, Tensor? bias, int bits, int group_size, "
    "int in_features) -> Tensor",
    check=_check_matmul, fake=_fake_matmul, reference=reference.group_matmul, cpu=_cpu_matmul, cuda=_cuda_matmul,
    cpu_dtypes=_FLOAT16_32, finite=("x", "scales", "zeros", "bias"),
    cpu_kernel_checks=("x", "scales", "zeros", "bias"),
    empty=lambda x, data, *rest: x.shape[0] * data.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples_matmul,
)


# ---------------------------------------------------------------- group_matmul_int8 (W4A8 / W8A8)

def _check_integral_zeros(backend, x, data, scales, zeros, bias, bits, group_size, in_features):
    # The integer kernels fold the zero points into integer dot products; the native CPU kernel
    # refuses fractional ones itself, row by row, as it reads them.
    if backend != _dispatch.NATIVE_CPU and zeros.numel() and not bool((zeros == zeros.round()).all()):
        raise ValueError("zeros must hold integers for int8 activations (a tinygemm import's float zeros "
                         "take activations='float')")


def _cpu_matmul_int8(x, data, scales, zeros, bias, bits, group_size, in_features):
    return _cpu_matmul(x, data, scales, zeros, bias, bits, group_size, in_features, int8_activations=True)


def _cuda_matmul_int8(x, data, scales, zeros, bias, bits, group_size, in_features):
    rows, codes, s, z, b, y = _cuda_operands(x, data, scales, zeros, bias)
    m = rows.shape[0]
    workspace = _native_call.cuda_workspace(_native.cuda.group_matmul_int8_workspace_bytes(m, in_features, group_size),
                                            rows.device)
    _native.cuda.group_matmul_int8(rows.data_ptr(), m, in_features, codes.data_ptr(), codes.shape[0], s.data_ptr(),
                                   z.data_ptr(), group_size, bits, 0 if b is None else b.data_ptr(), y.data_ptr(),
                                   workspace.data_ptr(), workspace.numel(), _native_call.cuda_stream(rows.device),
                                   _native_call.device_index(rows.device))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _samples_matmul_int8(gen):
    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    out = []
    for m, n, k, bits, group, symmetric, bias in (
            (3, 5, 70, 4, 32, False, True), (1, 1, 33, 4, 33, False, False), (0, 4, 64, 4, 64, False, True),
            (2, 7, 130, 4, 128, False, True), (9, 6, 256, 4, 64, False, False), (4, 3, 200, 4, 200, False, True),
            (3, 5, 70, 8, 32, False, True), (1, 1, 33, 8, 33, True, False), (2, 7, 130, 8, 128, True, True),
            (9, 6, 256, 8, 64, False, False)):
        data, scales, zeros = reference.quantize(randn(n, k), bits, group, symmetric)
        out.append((randn(m, k), data, scales, zeros, randn(n) if bias else None, bits, group, k))
    return out


GROUP_MATMUL_INT8 = Op(
    "quant.group_matmul_int8",
    "(Tensor x, Tensor data, Tensor scales, Tensor zeros, Tensor? bias, int bits, int group_size, "
    "int in_features) -> Tensor",
    check=_check_matmul, fake=_fake_matmul, reference=reference.group_matmul_int8, cpu=_cpu_matmul_int8,
    cuda=_cuda_matmul_int8, cpu_dtypes=_FLOAT16_32, finite=("x", "scales", "zeros", "bias"),
    cpu_kernel_checks=("x", "scales", "zeros", "bias"),
    check_values=_check_integral_zeros,
    empty=lambda x, data, *rest: x.shape[0] * data.shape[0] == 0,
    # the straight-through gradient: the activation rounding is treated as the identity
    backward=_backward, setup_context=_setup_context, samples=_samples_matmul_int8,
)
