"""ot sliced-Wasserstein 1-D op (sort each projection, integrate the quantile
distance) and its gradient op, through the op kit. CPU: one native kernel (radix
sort + merge); CUDA: torch's segmented sort, then gencore's integration kernel
(cuda/ot/sliced.cu)."""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference


def _dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x, y, wx, wy, p):
    _checks.tensor(x, "x", ndim=2)
    _checks.tensor(y, "y", ndim=2)
    _checks.tensor(wx, "wx", ndim=1)
    _checks.tensor(wy, "wy", ndim=1)
    _checks.same_device(x=x, y=y, wx=wx, wy=wy)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("projections", **{"x.shape[0]": x.shape[0], "y.shape[0]": y.shape[0]})
    _checks.same_size("points of x", **{"x.shape[1]": x.shape[1], "wx.shape[0]": wx.shape[0]})
    _checks.same_size("points of y", **{"y.shape[1]": y.shape[1], "wy.shape[0]": wy.shape[0]})
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(f"x and y need at least one point each, got {x.shape[1]} and {y.shape[1]}")
    p = _checks.real(p, "p", positive=True)
    return x, y, wx, wy, p


def _fake(x, y, wx, wy, p):
    return x.new_empty((x.shape[0],), dtype=_dtype(x))


def _reference(x, y, wx, wy, p):
    """Sort each row (torch.sort), gather the weights, integrate (reference.wasserstein_1d)."""
    xs, ox = x.sort(dim=1, stable=True)
    ys, oy = y.sort(dim=1, stable=True)
    return reference.wasserstein_1d(xs.to(_dtype(x)), ys.to(_dtype(x)), wx.double()[ox], wy.double()[oy], p)


def _call(x, y, wx, wy, p, with_grads):
    dtype = _dtype(x)
    out, out_array = _native_call.cpu_output((x.shape[0],), dtype)
    grads = [_native_call.cpu_output(tuple(t.shape), dtype) if with_grads else (None, None) for t in (x, y)]
    _native.core.sliced_1d(_native_call.cpu_array(x, dtype), _native_call.cpu_array(y, dtype),
                           _native_call.cpu_array(wx, torch.float64), _native_call.cpu_array(wy, torch.float64), p,
                           out_array, grads[0][1], grads[1][1], _native_call.threads())
    return out, grads[0][0], grads[1][0]


def _cuda_call(x, y, wx, wy, p, with_grads):
    """torch's segmented sort and cumulative sums on the device, then gencore's kernel on
    the sorted rows; gradients go back to the rows' own order through the sort's permutation."""
    xs, ox = x.float().sort(dim=1, stable=True)
    ys, oy = y.float().sort(dim=1, stable=True)
    cx, cy = wx.double()[ox].cumsum(1), wy.double()[oy].cumsum(1)
    P, n, m = x.shape[0], x.shape[1], y.shape[1]
    out = _native_call.output((P,), torch.float32, x.device)
    grad_xs, grad_ys = (torch.empty_like(t) if with_grads else None for t in (xs, ys))
    _native.cuda.sliced_1d(xs.data_ptr(), ys.data_ptr(), cx.data_ptr(), cy.data_ptr(), P, n, m, p, out.data_ptr(),
                           0 if grad_xs is None else grad_xs.data_ptr(), 0 if grad_ys is None else grad_ys.data_ptr(),
                           _native_call.cuda_stream(x.device), _native_call.device_index(x.device))
    if not with_grads:
        return out, None, None
    return out, torch.empty_like(grad_xs).scatter_(1, ox, grad_xs), torch.empty_like(grad_ys).scatter_(1, oy, grad_ys)


def _cuda(x, y, wx, wy, p):
    return _cuda_call(x, y, wx, wy, p, False)[0]


def _grad_cuda(x, y, wx, wy, p):
    return _cuda_call(x, y, wx, wy, p, True)[1:]


def _cpu(x, y, wx, wy, p):
    return _call(x, y, wx, wy, p, False)[0]


def _grad_fake(x, y, wx, wy, p):
    dtype = _dtype(x)
    return x.new_empty(x.shape, dtype=dtype), y.new_empty(y.shape, dtype=dtype)


def _grad_cpu(x, y, wx, wy, p):
    return _call(x, y, wx, wy, p, True)[1:]


def _grad_reference(x, y, wx, wy, p):
    dtype = _dtype(x)
    with torch.enable_grad():
        xs = x.detach().to(dtype).requires_grad_()
        ys = y.detach().to(dtype).requires_grad_()
        gx, gy = torch.autograd.grad(_reference(xs, ys, wx, wy, p).sum(), (xs, ys))
    return gx, gy


def _setup_context(ctx, inputs, output):
    x, y, wx, wy, p = inputs
    ctx.save_for_backward(x, y, wx, wy)
    ctx.p = p


def _backward(ctx, grad_out):
    x, y, wx, wy = ctx.saved_tensors
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise NotImplementedError("sliced_1d has no gradient with respect to the weights wx, wy")
    gx, gy = SLICED_1D_GRAD.trusted(x.detach(), y.detach(), wx.detach(), wy.detach(), ctx.p)
    g = grad_out.to(gx.dtype)[:, None]
    return (g * gx).to(x.dtype), (g * gy).to(y.dtype), None, None, None


def _samples(gen):
    def points(*shape, dtype=torch.float64):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def weights(n):
        w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
        return w / w.sum()

    return [
        (points(4, 7), points(4, 5), weights(7), weights(5), 2.0),
        (points(1, 1), points(1, 1), weights(1), weights(1), 1.0),
        (points(3, 9, dtype=torch.float32), points(3, 9, dtype=torch.float32), weights(9), weights(9), 2.0),
        (points(6, 4), points(6, 11), weights(4), weights(11), 1.5),
        (points(0, 3), points(0, 2), weights(3), weights(2), 2.0),
    ]


SLICED_1D = Op(
    "ot.sliced_1d", "(Tensor x, Tensor y, Tensor wx, Tensor wy, float p) -> Tensor",
    check=_check, fake=_fake, reference=_reference, cpu=_cpu, cuda=_cuda,
    finite=("x", "y", "wx", "wy"), cpu_kernel_checks=("x", "y"), empty=lambda x, y, wx, wy, p: x.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)

SLICED_1D_GRAD = Op(
    "ot.sliced_1d_grad", "(Tensor x, Tensor y, Tensor wx, Tensor wy, float p) -> (Tensor, Tensor)",
    check=_check, fake=_grad_fake, reference=_grad_reference, cpu=_grad_cpu, cuda=_grad_cuda,
    finite=("x", "y", "wx", "wy"), cpu_kernel_checks=("x", "y"), empty=lambda x, y, wx, wy, p: x.shape[0] == 0, samples=_samples,
)
