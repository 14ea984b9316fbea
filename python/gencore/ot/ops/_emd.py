"""ot EMD op (exact OT by the network simplex, batched): one Op definition.

The op's outputs have shapes known from the inputs alone (so it traces and
has a fake kernel): the sparse plan is a padded [..., 2, K] index / [..., K]
mass layout with K = n + m - 1 (the most basic arcs any plan uses) and a
count ``nnz``; gencore.ot.exact turns them into an EMDResult.
"""
from __future__ import annotations

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference

#: Relative tolerance on |sum a - sum b| / max(sum a, sum b) (b is then rescaled to a's total).
SUM_TOLERANCE = 1e-6


def _check(a, b, M, max_iter):
    _checks.tensor(M, "M")
    if M.dim() not in (2, 3):
        raise ValueError(f"M must be 2-D [n, m] or 3-D [B, n, m], got shape {tuple(M.shape)}")
    batched = M.dim() == 3
    for name, w in (("a", a), ("b", b)):
        _checks.tensor(w, name)
        if w.dim() != M.dim() - 1:
            layout = "[B, n, m], so a must be [B, n] and b [B, m]" if batched else "[n, m], so a must be [n] and b [m]"
            raise ValueError(f"{name} has shape {tuple(w.shape)} but M has shape {tuple(M.shape)}: M is {layout}")
    _checks.same_device(a=a, b=b, M=M)
    n, m = M.shape[-2], M.shape[-1]
    _checks.same_size("rows of M", **{"a.shape[-1]": a.shape[-1], "M.shape[-2]": n})
    _checks.same_size("columns of M", **{"b.shape[-1]": b.shape[-1], "M.shape[-1]": m})
    if batched:
        _checks.same_size("batch size", **{"a.shape[0]": a.shape[0], "b.shape[0]": b.shape[0],
                                           "M.shape[0]": M.shape[0]})
    if n == 0 or m == 0:
        raise ValueError(f"M is empty (shape {tuple(M.shape)}): EMD needs n >= 1 and m >= 1")
    max_iter = _checks.integer(max_iter, "max_iter", low=0)
    return a, b, M, max_iter


def _fake(a, b, M, max_iter):
    lead = tuple(M.shape[:-2])
    n, m = M.shape[-2], M.shape[-1]
    K = n + m - 1
    f64, i64 = torch.float64, torch.int64
    return (M.new_empty(lead, dtype=f64), M.new_empty(lead + (2, K), dtype=i64), M.new_empty(lead + (K,), dtype=f64),
            M.new_empty(lead, dtype=i64), M.new_empty(lead + (n,), dtype=f64), M.new_empty(lead + (m,), dtype=f64),
            M.new_empty(lead, dtype=i64), M.new_empty(lead, dtype=i64))


def _check_weights(backend, a, b, M, max_iter):
    """Non-negative weights with positive, equal totals per problem."""
    for name, w in (("a", a), ("b", b)):
        if w.numel() and bool((w < 0).any()):
            raise ValueError(f"{name} has negative weights; EMD weights must be >= 0")
    sa, sb = a.double().sum(-1), b.double().sum(-1)
    if bool((sa <= 0).any()) or bool((sb <= 0).any()):
        raise ValueError("a and b must each have a positive total mass (every problem)")
    gap = (sa - sb).abs() / torch.maximum(sa, sb)
    if bool((gap > SUM_TOLERANCE).any()):
        worst = int(gap.argmax()) if gap.dim() else 0
        raise ValueError(f"a and b must have equal totals (balanced OT): sum(a)={float(sa.reshape(-1)[worst]):.9g}, "
                         f"sum(b)={float(sb.reshape(-1)[worst]):.9g} (relative tolerance {SUM_TOLERANCE})")


def _kernel(a, b, M, max_iter):
    """The native CPU kernel on CPU tensors (the CUDA path runs it on host copies)."""
    batched = M.dim() == 3
    lead = tuple(M.shape[:-2])
    n, m = M.shape[-2], M.shape[-1]
    B = M.shape[0] if batched else 1
    K = n + m - 1
    dtype = torch.float32 if M.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float64
    if batched:
        cost = M.detach().to(dtype)
        if not cost.is_contiguous():
            cost = cost.contiguous()
        cost_array = cost.numpy()
    else:
        cost_array = _native_call.cpu_array(M, dtype)
    a_array = _native_call.rows(a.reshape(B, n), torch.float64).contiguous().numpy()
    b_array = _native_call.rows(b.reshape(B, m), torch.float64).contiguous().numpy()
    shapes = ((lead, torch.float64), (lead + (2, K), torch.int64), (lead + (K,), torch.float64),
              (lead, torch.int64), (lead + (n,), torch.float64), (lead + (m,), torch.float64),
              (lead, torch.int64), (lead, torch.int64))
    outs = [_native_call.cpu_output(shape, dt) for shape, dt in shapes]
    _native.core.emd(a_array, b_array, cost_array, max_iter, *[array.reshape(B, -1) for _, array in outs],
                     _native_call.threads())
    return tuple(t for t, _ in outs)


def _cuda(a, b, M, max_iter):
    # The network simplex is a sequential pointer-chasing loop with no good GPU form: the
    # CUDA entry solves on host copies with the CPU kernel and returns device tensors.
    # The copy is a host synchronisation anyway, so the weights and costs are checked here too.
    a, b, M_host = a.cpu(), b.cpu(), M.cpu()
    for name, t in (("a", a), ("b", b)):
        _checks.finite(t, name)
    _check_weights("native-cuda", a, b, M_host, max_iter)
    outputs = _kernel(a, b, M_host, max_iter)
    return tuple(t.to(M.device) for t in outputs)


def _samples(gen):
    def weights(*shape):
        w = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1
        return w / w.sum(-1, keepdim=True)

    def cost(*shape, dtype=torch.float64):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return [
        (weights(5), weights(7), cost(5, 7), 10_000),
        (weights(1), weights(1), cost(1, 1), 10),
        (weights(6).float(), weights(4).float(), cost(6, 4, dtype=torch.float32), 10_000),
        (weights(3, 4), weights(3, 5), cost(3, 4, 5), 10_000),
        (weights(9), weights(2), cost(9, 2), 10_000),
    ]


EMD = Op(
    "ot.emd", "(Tensor a, Tensor b, Tensor M, int max_iter) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.emd, cpu=_kernel, cuda=_cuda, anchor=2,
    finite=("a", "b", "M"), cpu_kernel_checks=("M",), check_values=_check_weights, samples=_samples,
    empty=lambda a, b, M, max_iter: M.dim() == 3 and M.shape[0] == 0,
    cuda_dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
)
