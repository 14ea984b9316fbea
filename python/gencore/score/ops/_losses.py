"""score: the fused denoising-score-matching loss and the DMD gradient, one definition each.

gencore::score_dsm_loss(raw [B, ...], x [B, ...], target [B, ...], c_skip [B],
c_out [B], weight [B]) -> loss [B]:
    loss_b = weight_b * mean_j (c_skip_b x_bj + c_out_b raw_bj - target_bj)^2
in one pass over the batch; its backward is one more pass (a native kernel too).

gencore::score_dsm_loss_and_grad(..., float grad_scale) -> (loss [B], grad_raw [B, ...]):
the same pass also writes d (grad_scale sum_b loss_b) / d raw. Training with a
mean or sum loss knows its grad_loss (1/B or 1, times the upstream gradient,
which is 1 for loss.backward()), so ``losses.dsm_loss`` runs this op forward
and its backward has no pass left to make: one read of the three inputs per step
instead of two.

gencore::score_dmd_gradient(x0 [B, ...], denoised_real [B, ...],
denoised_fake [B, ...]) -> grad [B, ...], the DMD generator gradient.
"""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference


def _rows(t: torch.Tensor, b: int) -> torch.Tensor:
    """[B, ...] -> [B, M] (a view when t is contiguous)."""
    return t.reshape(b, -1)


def _check_same_shape(first_name: str, first: torch.Tensor, **named: torch.Tensor) -> None:
    _checks.tensor(first, first_name)
    if first.dim() < 1:
        raise ValueError(f"{first_name} must be [B, ...] (at least 1-D), got a 0-D tensor")
    for name, t in named.items():
        _checks.tensor(t, name)
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}, got {tuple(t.shape)}")
    _checks.same_device(**{first_name: first}, **named)
    _checks.same_dtype(first_name, first, **named)


# ====================================================================== DSM loss

def _check_dsm(raw, x, target, c_skip, c_out, weight):
    _check_same_shape("raw", raw, x=x, target=target)
    b = raw.shape[0]
    for name, t in (("c_skip", c_skip), ("c_out", c_out), ("weight", weight)):
        _checks.tensor(t, name, ndim=1)
        if t.shape[0] != b:
            raise ValueError(f"{name} must be [B] = [{b}] (one per sample), got {tuple(t.shape)}")
    _checks.same_device(raw=raw, c_skip=c_skip, c_out=c_out, weight=weight)
    return raw, x, target, c_skip, c_out, weight


def _dsm_fake(raw, *rest):
    return raw.new_empty((raw.shape[0],), dtype=reference.compute_dtype(raw.dtype))


def _dsm_cpu(raw, x, target, c_skip, c_out, weight):
    dtype = reference.compute_dtype(raw.dtype)
    b = raw.shape[0]
    loss, loss_array = _native_call.cpu_output((b,), dtype)
    _native.core.dsm_loss(*(_native_call.cpu_array(_rows(t, b), dtype) for t in (raw, x, target)),
                          *(_native_call.cpu_array(t, dtype) for t in (c_skip, c_out, weight)),
                          loss_array, _native_call.threads())
    return loss


def _dsm_cuda(raw, x, target, c_skip, c_out, weight):
    b = raw.shape[0]
    r, xs, tg = (_native_call.cuda_input(_rows(t, b)) for t in (raw, x, target))
    cs, co, w = (_native_call.cuda_input(t) for t in (c_skip, c_out, weight))
    loss = _native_call.output((b,), torch.float32, r.device)
    # Rows longer than one kernel segment are summed through per-segment partials (workspace).
    workspace = _native_call.cuda_workspace(_native.cuda.dsm_loss_workspace_bytes(b, r.shape[1]), r.device)
    _native.cuda.dsm_loss(r.data_ptr(), xs.data_ptr(), tg.data_ptr(), b, r.shape[1], cs.data_ptr(), co.data_ptr(),
                          w.data_ptr(), loss.data_ptr(), workspace.data_ptr(), workspace.numel(),
                          _native_call.cuda_stream(r.device), _native_call.device_index(r.device))
    return loss


def _dsm_grads_cpu(raw, x, target, c_skip, c_out, weight, grad_loss):
    dtype = reference.compute_dtype(raw.dtype)
    b = raw.shape[0]
    grad_raw, grad_raw_array = _native_call.cpu_output(raw.shape, dtype, (b, raw[0].numel()))
    _native.core.dsm_loss_backward(*(_native_call.cpu_array(_rows(t, b), dtype) for t in (raw, x, target)),
                                   *(_native_call.cpu_array(t, dtype) for t in (c_skip, c_out, weight, grad_loss)),
                                   grad_raw_array, _native_call.threads())
    return grad_raw


def _dsm_grads_cuda(raw, x, target, c_skip, c_out, weight, grad_loss):
    b = raw.shape[0]
    r, xs, tg = (_native_call.cuda_input(_rows(t, b)) for t in (raw, x, target))
    cs, co, w, g = (_native_call.cuda_input(t) for t in (c_skip, c_out, weight, grad_loss))
    grad_raw = _native_call.output(r.shape, torch.float32, r.device)
    _native.cuda.dsm_loss_backward(r.data_ptr(), xs.data_ptr(), tg.data_ptr(), b, r.shape[1], cs.data_ptr(),
                                   co.data_ptr(), w.data_ptr(), g.data_ptr(), grad_raw.data_ptr(),
                                   _native_call.cuda_stream(r.device), _native_call.device_index(r.device))
    return grad_raw.reshape(raw.shape)


def _check_dsm_and_grad(raw, x, target, c_skip, c_out, weight, grad_scale):
    _check_dsm(raw, x, target, c_skip, c_out, weight)
    return raw, x, target, c_skip, c_out, weight, _checks.real(grad_scale, "grad_scale")


def _dsm_and_grad_fake(raw, *rest):
    return _dsm_fake(raw), raw.new_empty(raw.shape, dtype=reference.compute_dtype(raw.dtype))


def _dsm_and_grad_reference(raw, x, target, c_skip, c_out, weight, grad_scale):
    grad_loss = torch.full((raw.shape[0],), grad_scale, dtype=reference.compute_dtype(raw.dtype), device=raw.device)
    return (reference.dsm_loss(raw, x, target, c_skip, c_out, weight),
            _dsm_grads_reference(raw, x, target, c_skip, c_out, weight, grad_loss))


def _dsm_and_grad_cpu(raw, x, target, c_skip, c_out, weight, grad_scale):
    dtype = reference.compute_dtype(raw.dtype)
    b = raw.shape[0]
    loss, loss_array = _native_call.cpu_output((b,), dtype)
    grad_raw, grad_raw_array = _native_call.cpu_output(raw.shape, dtype, (b, raw[0].numel()))
    _native.core.dsm_loss_and_grad(*(_native_call.cpu_array(_rows(t, b), dtype) for t in (raw, x, target)),
                                   *(_native_call.cpu_array(t, dtype) for t in (c_skip, c_out, weight)),
                                   grad_scale, loss_array, grad_raw_array, _native_call.threads())
    return loss, grad_raw


def _dsm_and_grad_cuda(raw, x, target, c_skip, c_out, weight, grad_scale):
    b = raw.shape[0]
    r, xs, tg = (_native_call.cuda_input(_rows(t, b)) for t in (raw, x, target))
    cs, co, w = (_native_call.cuda_input(t) for t in (c_skip, c_out, weight))
    loss = _native_call.output((b,), torch.float32, r.device)
    grad_raw = _native_call.output(r.shape, torch.float32, r.device)
    workspace = _native_call.cuda_workspace(_native.cuda.dsm_loss_workspace_bytes(b, r.shape[1]), r.device)
    _native.cuda.dsm_loss_and_grad(r.data_ptr(), xs.data_ptr(), tg.data_ptr(), b, r.shape[1], cs.data_ptr(),
                                   co.data_ptr(), w.data_ptr(), grad_scale, loss.data_ptr(), grad_raw.data_ptr(),
                                   workspace.data_ptr(), workspace.numel(), _native_call.cuda_stream(r.device),
                                   _native_call.device_index(r.device))
    return loss, grad_raw.reshape(raw.shape)


def _dsm_residual(raw, x, target, c_skip, c_out, weight, grad_loss):
    """2 grad_loss_b weight_b (pred - target) / M: d loss / d pred, [B, ...]."""
    dtype = reference.compute_dtype(raw.dtype)
    b = raw.shape[0]
    m = max(raw.numel() // b, 1) if b else 1
    shape = (b,) + (1,) * (raw.dim() - 1)
    pred = c_skip.to(dtype).view(shape) * x.to(dtype) + c_out.to(dtype).view(shape) * raw.to(dtype)
    return ((2.0 / m) * (grad_loss.to(dtype) * weight.to(dtype)).view(shape)) * (pred - target.to(dtype))


def _dsm_grads_reference(raw, x, target, c_skip, c_out, weight, grad_loss):
    shape = (raw.shape[0],) + (1,) * (raw.dim() - 1)
    residual = _dsm_residual(raw, x, target, c_skip, c_out, weight, grad_loss)
    return c_out.to(residual.dtype).view(shape) * residual


def _dsm_setup(ctx, inputs, output):
    raw, x, target, c_skip, c_out, weight = inputs
    for name, t in (("c_skip", c_skip), ("c_out", c_out), ("weight", weight)):
        if t.requires_grad:
            raise NotImplementedError(f"gencore.score.dsm_loss: no gradient with respect to {name} "
                                      "(coefficients of sigma); pass it detached")
    ctx.save_for_backward(*inputs)


def _dsm_backward(ctx, grad_loss):
    # d loss_b / d raw = 2 weight_b c_out_b (pred - target) / M; x and target
    # get the same residual times c_skip_b / c_out_b and -1 / c_out_b.
    raw, x, target, c_skip, c_out, weight = ctx.saved_tensors
    shape = (raw.shape[0],) + (1,) * (raw.dim() - 1)
    grads = [None, None, None]
    if ctx.needs_input_grad[0]:
        # the forward call checked these; grad_loss is autograd's [B] of the loss's dtype
        grads[0] = DSM_LOSS_BACKWARD.trusted(raw, x, target, c_skip, c_out, weight, grad_loss).to(raw.dtype)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        residual = _dsm_residual(raw, x, target, c_skip, c_out, weight, grad_loss)
        if ctx.needs_input_grad[1]:
            grads[1] = (c_skip.to(residual.dtype).view(shape) * residual).to(x.dtype)
        if ctx.needs_input_grad[2]:
            grads[2] = (-residual).to(target.dtype)
    return grads[0], grads[1], grads[2], None, None, None


def _dsm_samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def coeffs(b, dtype):
        return tuple(0.1 + torch.rand(b, generator=gen, dtype=dtype) for _ in range(3))
    out = []
    for shape, dtype in [((8, 3, 4, 4), torch.float32), ((1, 1), torch.float64), ((0, 5), torch.float32),
                         ((17, 33), torch.float64), ((6, 1000), torch.float32)]:
        out.append((randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), randn(*shape, dtype=dtype),
                    *coeffs(shape[0], dtype)))
    return out


_DSM_KIT = dict(finite=("raw", "x", "target", "c_skip", "c_out", "weight"),
                cpu_kernel_checks=("raw", "x", "target", "c_skip", "c_out", "weight"),
                empty=lambda raw, *rest: raw.shape[0] == 0)

DSM_LOSS = Op(
    "score.dsm_loss", "(Tensor raw, Tensor x, Tensor target, Tensor c_skip, Tensor c_out, Tensor weight) -> Tensor",
    check=_check_dsm, fake=_dsm_fake, reference=reference.dsm_loss, cpu=_dsm_cpu, cuda=_dsm_cuda,
    backward=_dsm_backward, setup_context=_dsm_setup, samples=_dsm_samples, **_DSM_KIT,
)


DSM_LOSS_AND_GRAD = Op(
    "score.dsm_loss_and_grad",
    "(Tensor raw, Tensor x, Tensor target, Tensor c_skip, Tensor c_out, Tensor weight, float grad_scale) "
    "-> (Tensor, Tensor)",
    check=_check_dsm_and_grad, fake=_dsm_and_grad_fake, reference=_dsm_and_grad_reference, cpu=_dsm_and_grad_cpu,
    cuda=_dsm_and_grad_cuda,
    samples=lambda gen: [(*args, float(torch.rand((), generator=gen)) + 0.5) for args in _dsm_samples(gen)],
    **_DSM_KIT,
)


def _check_dsm_backward(raw, x, target, c_skip, c_out, weight, grad_loss):
    _check_dsm(raw, x, target, c_skip, c_out, weight)
    _checks.tensor(grad_loss, "grad_loss", ndim=1)
    _checks.same_device(raw=raw, grad_loss=grad_loss)
    _checks.same_size("samples", **{"raw.shape[0]": raw.shape[0], "grad_loss.shape[0]": grad_loss.shape[0]})
    return raw, x, target, c_skip, c_out, weight, grad_loss


DSM_LOSS_BACKWARD = Op(
    "score.dsm_loss_backward",
    "(Tensor raw, Tensor x, Tensor target, Tensor c_skip, Tensor c_out, Tensor weight, Tensor grad_loss) -> Tensor",
    check=_check_dsm_backward, fake=lambda raw, *rest: raw.new_empty(raw.shape, dtype=reference.compute_dtype(raw.dtype)),
    reference=_dsm_grads_reference, cpu=_dsm_grads_cpu, cuda=_dsm_grads_cuda,
    samples=lambda gen: [(*args, torch.randn(args[0].shape[0], generator=gen, dtype=args[0].dtype))
                         for args in _dsm_samples(gen)], **_DSM_KIT,
)


REDUCTIONS = ("mean", "sum", "none")


def reduce_samples(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses [B] -> their mean or sum, or themselves ("none")."""
    _checks.choice(reduction, "reduction", REDUCTIONS)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


class _GradientFromForward(torch.autograd.Function):
    """A reduced DSM loss whose gradient comes out of the forward pass
    (DSM_LOSS_AND_GRAD): the backward hands it over without touching the inputs
    again, and without a copy (the only reference goes to autograd, which keeps
    it as raw.grad). It holds one raw-sized tensor from forward to backward."""

    @staticmethod
    def forward(ctx, raw, x, target, c_skip, c_out, weight, reduction):
        grad_scale = 1.0 / raw.shape[0] if reduction == "mean" else 1.0
        per_sample, grad_raw = DSM_LOSS_AND_GRAD.trusted(raw, x, target, c_skip, c_out, weight, grad_scale)
        ctx.grad_raw, ctx.grad_scale = grad_raw, grad_scale
        ctx.save_for_backward(raw, x, target, c_skip, c_out, weight)
        return reduce_samples(per_sample, reduction)

    @staticmethod
    def backward(ctx, grad_total):
        raw, x, target, c_skip, c_out, weight = ctx.saved_tensors
        grad_raw, ctx.grad_raw = ctx.grad_raw, None
        if grad_raw is None or torch.is_grad_enabled():
            # A second backward (retain_graph) or create_graph: the backward kernel from the inputs.
            grad_loss = (grad_total * ctx.grad_scale).to(reference.compute_dtype(raw.dtype)).expand(raw.shape[0])
            grad_raw = DSM_LOSS_BACKWARD.trusted(raw, x, target, c_skip, c_out, weight, grad_loss.contiguous())
        elif not (grad_total.is_cpu and float(grad_total) == 1.0):  # loss.backward() passes 1: nothing to do
            grad_raw = grad_raw * grad_total
        return grad_raw.to(raw.dtype), None, None, None, None, None, None


def reduced_dsm_loss(raw, x, target, c_skip, c_out, weight, reduction: str) -> torch.Tensor:
    """DSM_LOSS reduced over the batch ("mean" / "sum" / "none"). Eager training
    calls that need only raw's gradient take _GradientFromForward; every other
    call (tracing, gradients to x, target or a coefficient, no gradient) the
    registered ops."""
    args = DSM_LOSS._check(raw, x, target, c_skip, c_out, weight)
    only_raw = raw.requires_grad and not any(t.requires_grad for t in args[1:])
    if reduction != "none" and raw.shape[0] > 0 and only_raw and DSM_LOSS.eager_autograd(args):
        return _GradientFromForward.apply(*args, reduction)
    return reduce_samples(DSM_LOSS.trusted(*args), reduction)


# ====================================================================== DMD gradient

def _check_dmd(x0, denoised_real, denoised_fake):
    _check_same_shape("x0", x0, denoised_real=denoised_real, denoised_fake=denoised_fake)
    return x0, denoised_real, denoised_fake


def _dmd_cpu(x0, denoised_real, denoised_fake):
    dtype = reference.compute_dtype(x0.dtype)
    b = x0.shape[0]
    grad, grad_array = _native_call.cpu_output(x0.shape, dtype, (b, x0[0].numel()))
    _native.core.dmd_gradient(*(_native_call.cpu_array(_rows(t, b), dtype) for t in (x0, denoised_real,
                                                                                      denoised_fake)),
                              grad_array, _native_call.threads())
    return grad


def _dmd_cuda(x0, denoised_real, denoised_fake):
    b = x0.shape[0]
    x, real, fake = (_native_call.cuda_input(_rows(t, b)) for t in (x0, denoised_real, denoised_fake))
    grad = _native_call.output(x.shape, torch.float32, x.device)
    # Rows longer than one kernel segment get their normaliser through per-segment partials (workspace).
    workspace = _native_call.cuda_workspace(_native.cuda.dmd_gradient_workspace_bytes(b, x.shape[1]), x.device)
    _native.cuda.dmd_gradient(x.data_ptr(), real.data_ptr(), fake.data_ptr(), b, x.shape[1], grad.data_ptr(),
                              workspace.data_ptr(), workspace.numel(), _native_call.cuda_stream(x.device),
                              _native_call.device_index(x.device))
    return grad.reshape(x0.shape)


def _dmd_samples(gen):
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return [tuple(randn(*shape, dtype=dtype) for _ in range(3))
            for shape, dtype in [((4, 3, 8, 8), torch.float32), ((1, 1), torch.float64), ((0, 7), torch.float32),
                                 ((9, 31), torch.float64), ((3, 2000), torch.float32)]]


DMD_GRADIENT = Op(
    "score.dmd_gradient", "(Tensor x0, Tensor denoised_real, Tensor denoised_fake) -> Tensor",
    check=_check_dmd, fake=lambda x0, *rest: x0.new_empty(x0.shape, dtype=reference.compute_dtype(x0.dtype)),
    reference=reference.dmd_gradient, cpu=_dmd_cpu, cuda=_dmd_cuda,
    finite=("x0", "denoised_real", "denoised_fake"), cpu_kernel_checks=("x0", "denoised_real", "denoised_fake"),
    empty=lambda x0, *rest: x0.shape[0] == 0, samples=_dmd_samples,
)
