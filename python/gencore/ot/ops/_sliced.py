"""ot 1-D Wasserstein op (the inner step of sliced Wasserstein) and its gradient op."""
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
    _checks.tensor(wx, "wx")
    _checks.tensor(wy, "wy")
    _checks.same_device(x=x, y=y, wx=wx, wy=wy)
    _checks.same_dtype("x", x, y=y)
    _checks.same_size("projections", **{"x.shape[0]": x.shape[0], "y.shape[0]": y.shape[0]})
    for name, w, pts in (("wx", wx, x), ("wy", wy, y)):
        if w.dim() not in (1, 2) or w.shape[-1] != pts.shape[1] or (w.dim() == 2 and w.shape[0] != pts.shape[0]):
            raise ValueError(f"{name} must be [{pts.shape[1]}] or [{pts.shape[0]}, {pts.shape[1]}], "
                             f"got shape {tuple(w.shape)}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(f"x and y need at least one point each, got {x.shape[1]} and {y.shape[1]}")
    p = _checks.real(p, "p", positive=True)
    return x, y, wx, wy, p


def _fake(x, y, wx, wy, p):
    return x.new_empty((x.shape[0],), dtype=_dtype(x))


def _weights(w, rows, cols):
    return _native_call.rows(w.reshape(-1, cols), torch.float64).contiguous().numpy()


def _cpu(x, y, wx, wy, p):
    dtype = _dtype(x)
    out, out_array = _native_call.cpu_output((x.shape[0],), dtype)
    _native.core.wasserstein_1d(_native_call.cpu_array(x, dtype), _native_call.cpu_array(y, dtype),
                                _weights(wx, x.shape[0], x.shape[1]), _weights(wy, y.shape[0], y.shape[1]), p,
                                out_array, None, None, _native_call.threads())
    return out


def _grad_fake(x, y, wx, wy, p):
    dtype = _dtype(x)
    return x.new_empty(x.shape, dtype=dtype), y.new_empty(y.shape, dtype=dtype)


def _grad_cpu(x, y, wx, wy, p):
    dtype = _dtype(x)
    gx, gx_array = _native_call.cpu_output(tuple(x.shape), dtype)
    gy, gy_array = _native_call.cpu_output(tuple(y.shape), dtype)
    out_array = _native_call.cpu_output((x.shape[0],), dtype)[1]
    _native.core.wasserstein_1d(_native_call.cpu_array(x, dtype), _native_call.cpu_array(y, dtype),
                                _weights(wx, x.shape[0], x.shape[1]), _weights(wy, y.shape[0], y.shape[1]), p,
                                out_array, gx_array, gy_array, _native_call.threads())
    return gx, gy


def _grad_reference(x, y, wx, wy, p):
    dtype = _dtype(x)
    with torch.enable_grad():
        xs = x.detach().to(dtype).requires_grad_()
        ys = y.detach().to(dtype).requires_grad_()
        value = reference.wasserstein_1d(xs, ys, wx, wy, p).sum()
        gx, gy = torch.autograd.grad(value, (xs, ys))
    return gx, gy


def _setup_context(ctx, inputs, output):
    x, y, wx, wy, p = inputs
    ctx.save_for_backward(x, y, wx, wy)
    ctx.p = p


def _backward(ctx, grad_out):
    x, y, wx, wy = ctx.saved_tensors
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise NotImplementedError("wasserstein_1d has no gradient with respect to the weights wx, wy")
    gx, gy = WASSERSTEIN_1D_GRAD.trusted(x.detach(), y.detach(), wx.detach(), wy.detach(), ctx.p)
    g = grad_out.to(gx.dtype)[:, None]
    return (g * gx).to(x.dtype), (g * gy).to(y.dtype), None, None, None


def _samples(gen):
    def sorted_rows(*shape, dtype=torch.float64):
        return torch.randn(*shape, generator=gen, dtype=dtype).sort(-1).values

    def weights(*shape):
        w = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1
        return w / w.sum(-1, keepdim=True)

    return [
        (sorted_rows(4, 7), sorted_rows(4, 5), weights(7), weights(5), 2.0),
        (sorted_rows(1, 1), sorted_rows(1, 1), weights(1), weights(1), 1.0),
        (sorted_rows(3, 9, dtype=torch.float32), sorted_rows(3, 9, dtype=torch.float32), weights(3, 9),
         weights(9), 2.0),
        (sorted_rows(6, 4), sorted_rows(6, 11), weights(6, 4), weights(6, 11), 1.5),
        (sorted_rows(0, 3), sorted_rows(0, 2), weights(3), weights(2), 2.0),
    ]


WASSERSTEIN_1D = Op(
    "ot.wasserstein_1d", "(Tensor x, Tensor y, Tensor wx, Tensor wy, float p) -> Tensor",
    check=_check, fake=_fake, reference=reference.wasserstein_1d, cpu=_cpu, cuda=None,
    finite=("x", "y", "wx", "wy"), empty=lambda x, y, wx, wy, p: x.shape[0] == 0,
    backward=_backward, setup_context=_setup_context, samples=_samples,
)

WASSERSTEIN_1D_GRAD = Op(
    "ot.wasserstein_1d_grad", "(Tensor x, Tensor y, Tensor wx, Tensor wy, float p) -> (Tensor, Tensor)",
    check=_check, fake=_grad_fake, reference=_grad_reference, cpu=_grad_cpu, cuda=None,
    finite=("x", "y", "wx", "wy"), empty=lambda x, y, wx, wy, p: x.shape[0] == 0, samples=_samples,
)
