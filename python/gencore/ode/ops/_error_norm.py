"""ode: the per-sample error norm of an adaptive step, one definition (gencore._op.Op).

gencore::ode_error_norm(err [B, M], y [B, M], y_new [B, M], atol, rtol) -> [B]:

    norm_b = sqrt(mean_j (err_bj / (atol + rtol max(|y_bj|, |y_new_bj|)))^2)

the mixed absolute / relative RMS norm of Hairer, Norsett & Wanner (II.4.11),
which torchdiffeq also uses, computed per sample so each sample gets its own
step size. One pass, double accumulation.
"""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op


def _check(err, y, y_new, atol, rtol):
    _checks.tensor(err, "err")
    if err.dim() < 1:
        raise ValueError("err must be [B, ...] (at least 1-D), got a 0-D tensor")
    for name, t in (("y", y), ("y_new", y_new)):
        _checks.tensor(t, name)
        if t.shape != err.shape:
            raise ValueError(f"{name} must have the shape of err {tuple(err.shape)}, got {tuple(t.shape)}")
    _checks.same_dtype("err", err, y=y, y_new=y_new)
    _checks.same_device(err=err, y=y, y_new=y_new)
    atol, rtol = _checks.real(atol, "atol"), _checks.real(rtol, "rtol")
    if atol < 0 or rtol < 0 or atol + rtol == 0:
        raise ValueError(f"atol and rtol must be >= 0 and not both 0, got atol={atol}, rtol={rtol}")
    return err, y, y_new, atol, rtol


def _dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake(err, *rest):
    return err.new_empty((err.shape[0],), dtype=_dtype(err))


def _reference(err, y, y_new, atol, rtol):
    dtype = _dtype(err)
    b = err.shape[0]
    e, a, c = (t.to(dtype).reshape(b, -1) for t in (err, y, y_new))
    scale = atol + rtol * torch.maximum(a.abs(), c.abs())
    if e.shape[1] == 0:
        return torch.zeros(b, dtype=dtype, device=err.device)
    return torch.sqrt(((e.double() / scale.double()) ** 2).mean(1)).to(dtype)


def _cpu(err, y, y_new, atol, rtol):
    dtype = _dtype(err)
    b = err.shape[0]
    out, out_array = _native_call.cpu_output((b,), dtype)
    # contiguous tensors keep their [B, ...] shape (the binding reads rows of prod(shape[1:]))
    _native.core.ode_error_norm(*(_native_call.cpu_array(t if t.is_contiguous() else t.reshape(b, -1), dtype)
                                  for t in (err, y, y_new)), atol, rtol, out_array, _native_call.threads())
    return out


def _cuda(err, y, y_new, atol, rtol):
    b = err.shape[0]
    e, a, c = (_native_call.cuda_input(t.reshape(b, -1)) for t in (err, y, y_new))
    out = _native_call.output((b,), torch.float32, e.device)
    _native.cuda.ode_error_norm(e.data_ptr(), a.data_ptr(), c.data_ptr(), b, e.shape[1], atol, rtol, out.data_ptr(),
                                _native_call.cuda_stream(e.device), _native_call.device_index(e.device))
    return out


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return [(randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), atol, rtol)
            for shape, dtype, atol, rtol in [((4, 3, 5), torch.float32, 1e-3, 1e-3), ((1, 1), torch.float64, 0.0, 1e-6),
                                             ((0, 3), torch.float32, 1e-4, 0.0), ((9, 1000), torch.float64, 1e-5, 1e-5)]]


ERROR_NORM = Op(
    "ode.error_norm", "(Tensor err, Tensor y, Tensor y_new, float atol, float rtol) -> Tensor",
    check=_check, fake=_fake, reference=_reference, cpu=_cpu, cuda=_cuda,
    finite=("err", "y", "y_new"), cpu_kernel_checks=("err", "y", "y_new"),
    empty=lambda err, *rest: err.shape[0] == 0, samples=_samples,
)
