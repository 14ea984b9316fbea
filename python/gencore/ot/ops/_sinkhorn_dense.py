"""ot: log-domain Sinkhorn on given dense cost matrices, one definition (gencore._op.Op).

gencore::ot_sinkhorn_dense(M [B, n, m], a [B, n], b [B, m], reg, damping, tol, max_iter, plateau)
    -> (f [B, n], g [B, m], n_iter [B] int64, error [B], status [B] int64)

(f, g and error in float32 for float32 / fp16 / bf16 M, float64 for float64: the error
of a float32 problem is only known to float32 rounding.)

B independent problems, the whole alternating iteration native (see
gencore.ot.reference.sinkhorn_dense, the specification): each problem stops on
its own at error <= tol (status 0), max_iter (1) or a stalled error (2). CPU:
csrc/ot/sinkhorn_dense.cpp (one read of M per iteration: each row's
log-sum-exp in two L1-hot passes, its terms then fed to running column
log-sum-exps; SIMD exp; threads over problems, or over row blocks of one).
CUDA: cuda/ot/sinkhorn_dense.cu (one block per problem, no host sync).
Memory: O(B (n + m)) besides M.
"""
from __future__ import annotations

import math

import torch

from ... import _checks, _native, _native_call
from ..._op import Op
from .. import reference


def _check(M, a, b, reg, damping, tol, max_iter, plateau):
    _checks.tensor(M, "M", ndim=3)
    _checks.tensor(a, "a", ndim=2)
    _checks.tensor(b, "b", ndim=2)
    _checks.same_device(M=M, a=a, b=b)
    _checks.same_dtype("M", M, a=a, b=b)
    _checks.same_size("problems", **{"M.shape[0]": M.shape[0], "a.shape[0]": a.shape[0], "b.shape[0]": b.shape[0]})
    _checks.same_size("rows of M", **{"M.shape[1]": M.shape[1], "a.shape[1]": a.shape[1]})
    _checks.same_size("columns of M", **{"M.shape[2]": M.shape[2], "b.shape[1]": b.shape[1]})
    if M.shape[1] == 0 or M.shape[2] == 0:
        raise ValueError(f"M is empty (shape {tuple(M.shape)}): both measures need at least one point")
    reg = _checks.real(reg, "reg", positive=True)
    if not math.isfinite(reg):
        raise ValueError(f"reg must be finite, got {reg}")
    damping = _checks.real(damping, "damping", positive=True)
    if damping > 1.0:
        raise ValueError(f"damping must be in (0, 1] (1 / (1 + reg / reach)), got {damping}")
    tol = _checks.real(tol, "tol")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    max_iter = _checks.integer(max_iter, "max_iter", low=1)
    plateau = _checks.integer(plateau, "plateau", low=1)
    return M, a, b, reg, damping, tol, max_iter, plateau


def check_dense_weights(backend, M, a, b, *rest):
    """Weights >= 0 with some mass in every problem (the op's data-dependent check)."""
    for name, w in (("a", a), ("b", b)):
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be >= 0, got a minimum of {float(w.min())}")
        if not bool((w.sum(-1) > 0).all()):
            raise ValueError(f"{name} has a problem with no mass (all weights zero)")


def _fake(M, a, b, reg, damping, tol, max_iter, plateau):
    dtype = reference.compute_dtype(M.dtype)
    B, n, m = M.shape
    return (M.new_empty((B, n), dtype=dtype), M.new_empty((B, m), dtype=dtype),
            M.new_empty((B,), dtype=torch.int64), M.new_empty((B,), dtype=dtype),
            M.new_empty((B,), dtype=torch.int64))


def _cpu(M, a, b, reg, damping, tol, max_iter, plateau):
    dtype = reference.compute_dtype(M.dtype)
    B, n, m = M.shape
    shapes = (((B, n), dtype), ((B, m), dtype), ((B,), torch.int64), ((B,), torch.float64), ((B,), torch.int64))
    outs = [_native_call.cpu_output(shape, dt) for shape, dt in shapes]
    cost = M.detach().to(dtype)
    if not (cost.stride(2) == 1 and cost.stride(1) == m and (B == 1 or cost.stride(0) >= n * m)):
        # the kernel reads each problem C-contiguous, problems apart (a broadcast batch is copied)
        cost = cost.contiguous()
    _native.core.sinkhorn_dense(cost.numpy(), _native_call.rows(a, dtype).contiguous().numpy(),
                                _native_call.rows(b, dtype).contiguous().numpy(),
                                reg, damping, tol, max_iter, plateau, *[array for _, array in outs],
                                _native_call.threads())
    f, g, n_iter, error, status = (t for t, _ in outs)
    return f, g, n_iter, error.to(dtype), status


def _cuda(M, a, b, reg, damping, tol, max_iter, plateau):
    B, n, m = M.shape
    device = M.device
    cost, wa, wb = (_native_call.cuda_input(t) for t in (M, a, b))
    f = _native_call.output((B, n), torch.float32, device)
    g = _native_call.output((B, m), torch.float32, device)
    n_iter = _native_call.output((B,), torch.int64, device)
    error = _native_call.output((B,), torch.float64, device)
    status = _native_call.output((B,), torch.int64, device)
    workspace = _native_call.cuda_workspace(_native.cuda.sinkhorn_dense_workspace_bytes(B, n, m), device)
    _native.cuda.sinkhorn_dense(cost.data_ptr(), wa.data_ptr(), wb.data_ptr(), B, n, m, reg, damping, tol, max_iter,
                                plateau, f.data_ptr(), g.data_ptr(), n_iter.data_ptr(), error.data_ptr(),
                                status.data_ptr(), workspace.data_ptr(), workspace.numel(),
                                _native_call.cuda_stream(device), _native_call.device_index(device))
    return f, g, n_iter, error.float(), status


def _samples(gen):
    def weights(*shape, dtype=torch.float64, zeros=0):
        w = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1
        w[..., :zeros] = 0.0
        return (w / w.sum(-1, keepdim=True)).to(dtype)

    def cost(*shape, dtype=torch.float64):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)

    # tol = 0 with few iterations: the iteration count is max_iter on every backend
    # (a stopping decision within rounding of tol could differ between them).
    return [
        (cost(3, 5, 7), weights(3, 5), weights(3, 7), 0.1, 1.0, 0.0, 6, 40),
        (cost(1, 1, 1), weights(1, 1), weights(1, 1), 0.5, 1.0, 0.0, 3, 40),
        (cost(2, 9, 4, dtype=torch.float32), weights(2, 9, dtype=torch.float32), weights(2, 4, dtype=torch.float32),
         0.05, 1.0, 0.0, 5, 40),
        (cost(4, 6, 37), weights(4, 6, zeros=2), 0.5 * weights(4, 37, zeros=5), 0.2, 1.0 / (1.0 + 0.2 / 0.7), 0.0,
         7, 40),
        (cost(0, 3, 2), weights(0, 3), weights(0, 2), 0.1, 1.0, 0.0, 5, 40),
        (cost(1, 40, 300, dtype=torch.float32), weights(1, 40, dtype=torch.float32),
         weights(1, 300, dtype=torch.float32), 0.02, 1.0, 0.0, 4, 40),
    ]


SINKHORN_DENSE = Op(
    "ot.sinkhorn_dense",
    "(Tensor M, Tensor a, Tensor b, float reg, float damping, float tol, int max_iter, int plateau) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor)",
    check=_check, fake=_fake, reference=reference.sinkhorn_dense, cpu=_cpu, cuda=_cuda,
    finite=("M", "a", "b"), check_values=check_dense_weights, samples=_samples,
    empty=lambda M, *rest: M.shape[0] == 0,
)
