"""ode: the fused solver step, one definition (gencore._op.Op).

gencore::ode_step(x [B, M], d_cond [B, M], d_uncond [B, M]?, h1?, h2?, h3? [B, M],
noise [B, M]?, coeffs [B, 6], guidance [B]?, rescale, threshold, threshold_max)
    -> (x_next [B, M], d [B, M])

One pass per sample over its M elements:

1. d = d_cond, or with guidance w_b: d = d_uncond + w_b (d_cond - d_uncond)
   (classifier-free guidance; w_b = 1 is the conditional model alone);
2. rescale phi > 0 (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
   Steps are Flawed", eq. 15-16): d = phi d std(d_cond) / std(d) + (1 - phi) d,
   std over the sample's elements;
3. threshold q in (0, 1) (dynamic thresholding, Saharia et al. 2022, Imagen):
   t = max(1, quantile_q |d|) clipped at threshold_max, d = clamp(d, -t, t) / t;
4. x_next = c_x x + c_d d + c_1 h1 + c_2 h2 + c_3 h3 + c_z noise, coeffs[b] =
   (c_x, c_d, c_1, c_2, c_3, c_z); absent inputs must have coefficient 0.

d is returned too: multistep solvers keep it as the next steps' history. Every
linear step of every solver (Euler, DPM-Solver++ 2M/3M/SDE, UniPC predictor and
corrector, Heun's stages) is one such call, with coefficients computed on the
host in float64 (expm1, not exp - 1).
"""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op

_HISTORY = ("h1", "h2", "h3")
N_COEFFS = 6


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _positive_or_inf(v, name: str) -> float:
    """A number > 0, +inf allowed (no cap)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        v = _checks.real(v, name)  # raises TypeError for non-numbers, numpy scalars pass
    v = float(v)
    if not v > 0:
        raise ValueError(f"{name} must be > 0 (inf: no cap), got {v}")
    return v


_COEFF_DTYPES = (torch.float64, torch.float32)


def _common_call(x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max):
    """True for a call that the checks below accept unchanged (plain tensors of x's dtype,
    shape and device, coeffs [B, 6], float parameters in range), told in one pass: the
    step is called once per solver step, often on small tensors. Anything else (other
    types, fake tensors while tracing, ints for floats, errors) takes the full checks."""
    tensor = torch.Tensor
    if (type(x) is not tensor or type(d_cond) is not tensor or type(coeffs) is not tensor or x.dim() < 1
            or x.dtype not in _checks.FLOATING):
        return False
    shape, dtype, device = x.shape, x.dtype, x.device
    for t in (d_cond, d_uncond, h1, h2, h3, noise):
        if t is not None and (type(t) is not tensor or t.dtype is not dtype or t.shape != shape
                              or t.device != device):
            return False
    b = shape[0]
    if coeffs.dtype not in _COEFF_DTYPES or coeffs.shape != (b, N_COEFFS) or coeffs.device != device:
        return False
    if guidance is not None and (type(guidance) is not tensor or d_uncond is None or guidance.dtype not in
                                 _COEFF_DTYPES or guidance.shape != (b,) or guidance.device != device):
        return False
    return (type(rescale) is float and 0.0 <= rescale <= 1.0 and type(threshold) is float
            and 0.0 <= threshold < 1.0 and type(threshold_max) is float and threshold_max > 0.0)


def _check(x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max):
    args = (x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max)
    if _common_call(*args):
        return args
    _checks.tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must be [B, ...] (at least 1-D), got a 0-D tensor")
    named = {"d_cond": d_cond}
    for name, t in (("d_uncond", d_uncond), ("h1", h1), ("h2", h2), ("h3", h3), ("noise", noise)):
        if t is not None:
            named[name] = t
    for name, t in named.items():
        _checks.tensor(t, name)
        if t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    _checks.same_dtype("x", x, **named)
    b = x.shape[0]
    _checks.tensor(coeffs, "coeffs", ndim=2, dtypes=(torch.float64, torch.float32))
    if coeffs.shape[0] != b or coeffs.shape[1] != N_COEFFS:
        raise ValueError(f"coeffs must be [B, {N_COEFFS}] = [{b}, {N_COEFFS}], got {tuple(coeffs.shape)}")
    if guidance is not None:
        _checks.tensor(guidance, "guidance", ndim=1, dtypes=(torch.float64, torch.float32))
        if guidance.shape[0] != b:
            raise ValueError(f"guidance must be [B] = [{b}], got {tuple(guidance.shape)}")
        if d_uncond is None:
            raise ValueError("guidance needs d_uncond (the unconditional model's prediction)")
    _checks.same_device(x=x, coeffs=coeffs, **named, **({} if guidance is None else {"guidance": guidance}))
    rescale = _checks.real(rescale, "rescale")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")
    threshold = _checks.real(threshold, "threshold")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (0: off), got {threshold}")
    threshold_max = _positive_or_inf(threshold_max, "threshold_max")
    return x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max


def _fake(x, *rest):
    dtype = _compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape, dtype=dtype)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def _reference(x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max):
    dtype = _compute_dtype(x.dtype)
    b = x.shape[0]
    cond = d_cond.to(dtype)
    d = cond
    if guidance is not None:
        u = d_uncond.to(dtype)
        d = u + _per_sample(guidance, cond) * (cond - u)
    if rescale > 0 and d[0].numel() > 1:
        std_cond = cond.reshape(b, -1).std(1, correction=0)
        std_d = d.reshape(b, -1).std(1, correction=0)
        ratio = torch.where(std_d > 0, std_cond / torch.where(std_d > 0, std_d, torch.ones_like(std_d)),
                            torch.ones_like(std_d))
        d = rescale * d * _per_sample(ratio, d) + (1 - rescale) * d
    if threshold > 0 and d[0].numel() > 0:
        t = torch.quantile(d.reshape(b, -1).abs(), threshold, dim=1).clamp(1.0, threshold_max)
        t = _per_sample(t, d)
        d = torch.maximum(torch.minimum(d, t), -t) / t
    c = coeffs.to(dtype)
    out = _per_sample(c[:, 0], d) * x.to(dtype) + _per_sample(c[:, 1], d) * d
    for j, h in enumerate((h1, h2, h3, noise)):
        if h is not None:
            out = out + _per_sample(c[:, 2 + j], d) * h.to(dtype)
    return out, d


def _rows(t, b):
    return None if t is None else t.reshape(b, -1)


def _cpu_array(t, b, dtype):
    """The numpy view _core.ode_step reads: the tensor's own [B, ...] shape when it is
    contiguous (the binding takes rows of prod(shape[1:]), no reshape), else [B, M] rows."""
    if t is None:
        return None
    return _native_call.cpu_array(t if t.is_contiguous() else t.reshape(b, -1), dtype)


def _cpu(x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max):
    dtype = _compute_dtype(x.dtype)
    b = x.shape[0]
    x_next, x_next_array = _native_call.cpu_output(x.shape, dtype)
    d, d_array = _native_call.cpu_output(x.shape, dtype)
    _native.core.ode_step(_cpu_array(x, b, dtype), _cpu_array(d_cond, b, dtype), _cpu_array(d_uncond, b, dtype),
                          _cpu_array(h1, b, dtype), _cpu_array(h2, b, dtype), _cpu_array(h3, b, dtype),
                          _cpu_array(noise, b, dtype), _native_call.cpu_array(coeffs, torch.float64),
                          None if guidance is None else _native_call.cpu_array(guidance, torch.float64),
                          rescale, threshold, threshold_max, x_next_array, d_array, _native_call.threads())
    return x_next, d


def _cuda(x, d_cond, d_uncond, h1, h2, h3, noise, coeffs, guidance, rescale, threshold, threshold_max):
    b = x.shape[0]
    m = x[0].numel() if b else 0
    inputs = [None if t is None else _native_call.cuda_input(_rows(t, b)) for t in (x, d_cond, d_uncond, h1, h2, h3,
                                                                                     noise)]
    c = coeffs.detach().to(torch.float64).contiguous()
    g = None if guidance is None else guidance.detach().to(torch.float64).contiguous()
    x_next = _native_call.output(x.shape, torch.float32, x.device)
    d = _native_call.output(x.shape, torch.float32, x.device)
    _native.cuda.ode_step(*(0 if t is None else t.data_ptr() for t in inputs), b, m, c.data_ptr(),
                          0 if g is None else g.data_ptr(), rescale, threshold, threshold_max,
                          x_next.data_ptr(), d.data_ptr(), _native_call.cuda_stream(x.device),
                          _native_call.device_index(x.device))
    return x_next, d


def _samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def coeffs(b):
        return torch.randn(b, N_COEFFS, generator=gen, dtype=torch.float64)
    out = []
    for shape, dtype, full in [((3, 4, 2, 2), torch.float32, True), ((1, 1), torch.float64, False),
                               ((0, 5), torch.float32, True), ((7, 33), torch.float64, True),
                               ((2, 4, 16, 16), torch.float32, False)]:
        b = shape[0]
        c = coeffs(b)
        if full:
            out.append((randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), randn(*shape, dtype=dtype),
                        randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), None, randn(*shape, dtype=dtype),
                        c, 1 + 3 * torch.rand(b, generator=gen, dtype=torch.float64), 0.7, 0.9, 5.0))
        else:
            c[:, 3:] = 0
            out.append((randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), None, randn(*shape, dtype=dtype),
                        None, None, None, c, None, 0.0, 0.0, 1.0))
    return out


STEP = Op(
    "ode.step",
    "(Tensor x, Tensor d_cond, Tensor? d_uncond, Tensor? h1, Tensor? h2, Tensor? h3, Tensor? noise, Tensor coeffs, "
    "Tensor? guidance, float rescale, float threshold, float threshold_max) -> (Tensor, Tensor)",
    check=_check, fake=_fake, reference=_reference, cpu=_cpu, cuda=_cuda,
    finite=("x", "d_cond", "d_uncond", "h1", "h2", "h3", "noise", "coeffs", "guidance"),
    cpu_kernel_checks=("x", "d_cond", "d_uncond", "h1", "h2", "h3", "noise", "coeffs", "guidance"),
    empty=lambda x, *rest: x.shape[0] == 0, samples=_samples,
)
