"""ood logit-score and residual/ViM ops: one definition each (gencore._op.Op) and the public functions.

Every score: higher = more in-distribution. The score ops (gencore::ood_msp,
_energy, _max_logit, _gen, _kl_matching) share their checks and native
kernels: csrc/ood/logits.cpp on the CPU, cuda/ood/logits.cu on CUDA; residual
and ViM (gencore::ood_residual, _vim) run csrc/ood/vim.cpp and the CUDA
residual epilogue. The CPU kernels refuse NaN/inf logits and features in
their first pass; the kit checks the small inputs (templates, principal,
center) on the CPU; CUDA checks nothing (see gencore._op's policy).
"""

from __future__ import annotations

import torch

from ... import _arrays, _checks, _native, _native_call
from ..._op import Op
from .. import reference

_SCORE_CODES = {"max_logit": 0, "msp": 1, "energy": 2, "gen": 3, "kl_matching": 4}


# ====================================================================== checks

def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    _checks.tensor(logits, name, ndim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {tuple(logits.shape)}); scores need C >= 1")


def _check_tempered(logits, temperature):
    _check_logits(logits)
    return logits, _checks.real(temperature, "temperature", positive=True)


def _check_max_logit(logits):
    _check_logits(logits)
    return (logits,)


def _check_gen(logits, gamma, top_m):
    _check_logits(logits)
    return logits, _checks.real(gamma, "gamma", positive=True), _checks.integer(top_m, "top_m", low=1)


_KL_RULES = ("min", "predicted")


def _check_kl(logits, templates, rule):
    _check_logits(logits)
    _checks.tensor(templates, "templates", ndim=2)
    _checks.same_device(logits=logits, templates=templates)
    _checks.choice(rule, "rule", _KL_RULES)
    c = logits.shape[1]
    if rule == "predicted" and (templates.shape[0] != c or templates.shape[1] != c):
        raise ValueError(f"templates must be [C, C] = [{c}, {c}] for rule='predicted' and logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(templates.shape)}")
    if rule == "min" and (templates.shape[0] < 1 or templates.shape[1] != c):
        raise ValueError(f"templates must be [K, C] = [K >= 1, {c}] for rule='min' and logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(templates.shape)}")
    return logits, templates, rule


def _check_templates_nonnegative(backend, logits, templates, rule):
    if templates.numel() and bool((templates < 0).any()):
        raise ValueError("templates must be >= 0 (rows are class-mean softmax distributions)")


def _check_residual_inputs(features, principal, center, logits=None) -> None:
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(principal, "principal", ndim=2)
    _checks.tensor(center, "center", ndim=1)
    named = {"features": features, "principal": principal, "center": center}
    if logits is not None:
        _check_logits(logits)
        named["logits"] = logits
    _checks.same_device(**named)
    _checks.same_dtype("features", features, **named)
    d = features.shape[1]
    if d == 0:
        raise ValueError("features have feature dimension 0")
    if principal.shape[0] != d or principal.shape[1] > d:
        raise ValueError(f"principal must be [D, R] with D = {d} (features.shape[1]) and R <= D, "
                         f"got {tuple(principal.shape)}")
    if center.shape[0] != d:
        raise ValueError(f"center must be [D] = [{d}], got {tuple(center.shape)}")
    if logits is not None and logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits must have one row per feature row: features {tuple(features.shape)}, "
                         f"logits {tuple(logits.shape)}")


def _check_residual(features, principal, center):
    _check_residual_inputs(features, principal, center)
    return features, principal, center


def _check_vim(features, logits, principal, center, alpha):
    _check_residual_inputs(features, principal, center, logits)
    return features, logits, principal, center, _checks.real(alpha, "alpha")


def _scores_like(x: torch.Tensor, *rest) -> torch.Tensor:
    """Fake output: [N] in the compute dtype of x."""
    return x.new_empty((x.shape[0],), dtype=reference.compute_dtype(x.dtype))


def _no_rows(x: torch.Tensor, *rest) -> bool:
    return x.shape[0] == 0


# ====================================================================== native glue

def _cpu_scores(score: str, logits, temperature=1.0, gamma=0.1, top_m=1, templates=None) -> torch.Tensor:
    dtype = reference.compute_dtype(logits.dtype)
    n = logits.shape[0]
    log_t = None if templates is None else templates.detach().to(dtype).log().contiguous().numpy()
    out, out_array = _native_call.cpu_output((n,), dtype, (n, 1))
    _native.core.logit_scores(_native_call.cpu_array(logits, dtype), _SCORE_CODES[score], temperature, gamma, top_m,
                              log_t, out_array, _native_call.threads())
    return out


def _cuda_scores(score: str, logits, temperature=1.0, gamma=0.1, top_m=1, templates=None) -> torch.Tensor:
    x = _native_call.cuda_input(logits)
    log_t = None if templates is None else _native_call.cuda_input(templates).log()
    out = _native_call.output(x.shape[0], torch.float32, x.device)
    _native.cuda.logit_scores(x.data_ptr(), x.shape[0], x.shape[1], _SCORE_CODES[score], temperature, gamma, top_m,
                              0 if log_t is None else log_t.data_ptr(), out.data_ptr(),
                              _native_call.cuda_stream(x.device), _native_call.device_index(x.device))
    return out


def _cpu_residual(features, principal, center, logits=None, alpha=0.0) -> torch.Tensor:
    dtype = reference.compute_dtype(features.dtype)
    n = features.shape[0]
    lg = None if logits is None else _native_call.cpu_array(logits, dtype)
    out, out_array = _native_call.cpu_output((n,), dtype, (n, 1))
    _native.core.residual_scores(_native_call.cpu_array(features, dtype), _native_call.cpu_array(principal, dtype),
                                 _native_call.cpu_array(center, dtype).reshape(1, -1), lg, alpha,
                                 out_array, _native_call.threads())
    return out


def _cuda_residual(features, principal, center, logits=None, alpha=0.0) -> torch.Tensor:
    # The projection is two GEMMs by torch (xc P, then xc - (xc P) P^T in one
    # addmm): on the GPU they are cheap, and guarding the one-GEMM form of the
    # CPU kernel row by row would need a host sync. The kernel fuses ||e||,
    # logsumexp(logits) and the combination.
    p = _native_call.cuda_input(principal)
    xc = _native_call.cuda_input(features) - _native_call.cuda_input(center)
    e = torch.addmm(xc, xc @ p, p.T, alpha=-1).contiguous()
    lg = None if logits is None else _native_call.cuda_input(logits)
    out = _native_call.output(e.shape[0], torch.float32, e.device)
    _native.cuda.residual_scores(e.data_ptr(), e.shape[0], e.shape[1], 0 if lg is None else lg.data_ptr(),
                                 0 if lg is None else lg.shape[1], alpha, out.data_ptr(),
                                 _native_call.cuda_stream(e.device), _native_call.device_index(e.device))
    return out


# ====================================================================== autograd

def _save_logits(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)
    ctx.temperature = inputs[1] if len(inputs) > 1 else 1.0


def _softmax_of(ctx):
    logits, out = ctx.saved_tensors
    return torch.softmax(logits.to(out.dtype) / ctx.temperature, dim=1), logits, out


def _msp_backward(ctx, grad):
    # d p_k / d l = p_k (onehot_k - p) / T, k = argmax (piecewise constant)
    p, logits, out = _softmax_of(ctx)
    onehot = torch.zeros_like(p).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
    return ((grad * out / ctx.temperature)[:, None] * (onehot - p)).to(logits.dtype), None


def _energy_backward(ctx, grad):
    # d T logsumexp(l / T) / d l = softmax(l / T)
    p, logits, _ = _softmax_of(ctx)
    return (grad[:, None] * p).to(logits.dtype), None


def _max_logit_backward(ctx, grad):
    # the gradient goes to the first argmax, as torch.max(dim) does
    logits, out = ctx.saved_tensors
    g = torch.zeros(logits.shape, dtype=out.dtype, device=logits.device)
    return g.scatter_(1, logits.argmax(dim=1, keepdim=True), grad[:, None]).to(logits.dtype)


def _residual_grads(ctx, scale):
    """d(-scale ||e||)/dx and /du per row, e = (I - P P^T)(x - u); P is held constant."""
    if ctx.needs_input_grad[ctx.principal_index]:
        raise NotImplementedError("gencore.ood residual/vim: no gradient with respect to principal "
                                  "(the score assumes orthonormal columns); pass principal.detach()")
    features, principal, center = ctx.saved_tensors[:3]
    e = reference.residual_vectors(features, principal, center)
    r = torch.linalg.vector_norm(e, dim=1, keepdim=True)
    unit = torch.where(r > 0, e / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(e))
    grad_x = -scale[:, None] * unit  # the norm's subgradient 0 at r = 0, as torch.linalg.norm
    grad_features = grad_x.to(features.dtype) if ctx.needs_input_grad[0] else None
    grad_center = (-grad_x.sum(dim=0)).to(center.dtype) if ctx.needs_input_grad[ctx.principal_index + 1] else None
    return grad_features, grad_center


def _residual_setup(ctx, inputs, output):
    features, principal, center = inputs
    ctx.save_for_backward(features, principal, center)
    ctx.principal_index = 1


def _residual_backward(ctx, grad):
    grad_features, grad_center = _residual_grads(ctx, grad)
    return grad_features, None, grad_center


def _vim_setup(ctx, inputs, output):
    features, logits, principal, center, alpha = inputs
    ctx.save_for_backward(features, principal, center, logits)
    ctx.alpha = alpha
    ctx.principal_index = 2


def _vim_backward(ctx, grad):
    logits = ctx.saved_tensors[3]
    grad_logits = None
    if ctx.needs_input_grad[1]:  # d logsumexp(l) / d l = softmax(l)
        grad_logits = (grad[:, None] * torch.softmax(logits.to(grad.dtype), dim=1)).to(logits.dtype)
    grad_features, grad_center = _residual_grads(ctx, grad * ctx.alpha)
    return grad_features, grad_logits, None, grad_center, None


# ====================================================================== samples for the contract tests

def _randn(gen, *shape, dtype=torch.float32, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


def _logit_samples(gen, *extra):
    """Logit matrices of a few shapes (empty, one element, odd sizes, float64), each with ``extra``."""
    shapes = [((9, 7), torch.float32), ((1, 1), torch.float32), ((0, 3), torch.float32),
              ((33, 17), torch.float64), ((5, 1000), torch.float32)]
    return [(_randn(gen, *shape, dtype=dtype, scale=3.0), *extra) for shape, dtype in shapes]


def _kl_samples(gen):
    out = []
    for i, (logits,) in enumerate(_logit_samples(gen)):
        c = logits.shape[1]
        rows = c if i % 2 == 0 else max(1, c // 2)
        out.append((logits, torch.softmax(_randn(gen, rows, c, dtype=logits.dtype, scale=2.0), dim=1),
                    "predicted" if rows == c and i % 4 == 0 else "min"))
    return out


def _residual_samples(gen, with_logits: bool):
    out = []
    for n, d, r, dtype in [(9, 6, 2, torch.float32), (1, 1, 0, torch.float32), (0, 5, 2, torch.float32),
                           (40, 17, 5, torch.float64), (130, 8, 8, torch.float32)]:
        x = _randn(gen, n, d, dtype=dtype)
        principal = torch.linalg.qr(_randn(gen, d, d, dtype=torch.float64))[0][:, :r].to(dtype).contiguous()
        center = _randn(gen, d, dtype=dtype)
        if with_logits:
            out.append((x, _randn(gen, n, 4, dtype=dtype), principal, center, 0.7))
        else:
            out.append((x, principal, center))
    return out


# ====================================================================== the op definitions

def _score_op(score: str, schema: str, check, reference_fn, kernel_params, *, backward=None, samples, **kit):
    """One logit-score op; ``kernel_params(*args after logits)`` gives the kernels'
    (temperature, gamma, top_m, templates)."""
    def cpu(logits, *rest):
        return _cpu_scores(score, logits, *kernel_params(*rest))

    def cuda(logits, *rest):
        return _cuda_scores(score, logits, *kernel_params(*rest))

    return Op(f"ood.{score}", schema, check=check, fake=_scores_like, reference=reference_fn, cpu=cpu, cuda=cuda,
              finite=("logits", *kit.pop("finite", ())), cpu_kernel_checks=("logits",), empty=_no_rows,
              backward=backward, setup_context=_save_logits if backward else None, samples=samples, **kit)


def _tempered(temperature):
    return temperature, 0.1, 1, None


MSP = _score_op("msp", "(Tensor logits, float temperature) -> Tensor", _check_tempered, reference.msp, _tempered,
                backward=_msp_backward, samples=lambda gen: _logit_samples(gen, 1.5))
ENERGY = _score_op("energy", "(Tensor logits, float temperature) -> Tensor", _check_tempered, reference.energy,
                   _tempered, backward=_energy_backward, samples=lambda gen: _logit_samples(gen, 0.5))
MAX_LOGIT = _score_op("max_logit", "(Tensor logits) -> Tensor", _check_max_logit, reference.max_logit,
                      lambda: (1.0, 0.1, 1, None), backward=_max_logit_backward, samples=_logit_samples)
# GEN and KL matching have no gradient: they rank inputs, and GEN's p^gamma
# has an unbounded derivative at p -> 0.
GEN = _score_op("gen", "(Tensor logits, float gamma, int top_m) -> Tensor", _check_gen, reference.gen,
                lambda gamma, top_m: (1.0, gamma, top_m, None), samples=lambda gen: _logit_samples(gen, 0.1, 5))
def _kl_reference(logits, templates, rule):
    return (reference.kl_matching if rule == "predicted" else reference.kl_matching_min)(logits, templates)


def _kl_by_blocks(logits, templates):
    """The min rule as torch GEMMs over blocks of rows (BLAS on the CPU, cuBLAS on CUDA):
    its work is the [N, C] x [C, K] product, which no fused row kernel beats."""
    return reference.kl_matching_min(logits, templates)


def _kl_cpu(logits, templates, rule):
    if rule == "min":  # the row kernel that refuses NaN does not run: check here, like the kit would
        _checks.finite(logits, "logits")
        return _kl_by_blocks(logits, templates)
    return _cpu_scores("kl_matching", logits, 1.0, 0.1, 1, templates)


def _kl_cuda(logits, templates, rule):
    if rule == "min":
        return _kl_by_blocks(logits, templates).float()
    return _cuda_scores("kl_matching", logits, 1.0, 0.1, 1, templates)


KL_MATCHING = Op(
    "ood.kl_matching", "(Tensor logits, Tensor templates, str rule) -> Tensor",
    check=_check_kl, fake=_scores_like, reference=_kl_reference, cpu=_kl_cpu, cuda=_kl_cuda,
    finite=("logits", "templates"), cpu_kernel_checks=("logits",), check_values=_check_templates_nonnegative,
    empty=_no_rows, samples=_kl_samples,
)

RESIDUAL = Op(
    "ood.residual", "(Tensor features, Tensor principal, Tensor center) -> Tensor",
    check=_check_residual, fake=_scores_like, reference=reference.residual, cpu=_cpu_residual, cuda=_cuda_residual,
    finite=("features", "principal", "center"), cpu_kernel_checks=("features",), empty=_no_rows,
    backward=_residual_backward, setup_context=_residual_setup,
    samples=lambda gen: _residual_samples(gen, False),
)
VIM = Op(
    "ood.vim", "(Tensor features, Tensor logits, Tensor principal, Tensor center, float alpha) -> Tensor",
    check=_check_vim, fake=_scores_like, reference=reference.vim,
    cpu=lambda x, lg, p, u, alpha: _cpu_residual(x, p, u, lg, alpha),
    cuda=lambda x, lg, p, u, alpha: _cuda_residual(x, p, u, lg, alpha),
    finite=("features", "logits", "principal", "center"), cpu_kernel_checks=("features", "logits"), empty=_no_rows,
    backward=_vim_backward, setup_context=_vim_setup, samples=lambda gen: _residual_samples(gen, True),
)


# --- public functions (arguments are checked here too, before the op schema's
# conversion, so a wrong type is a TypeError naming the argument, not a RuntimeError)

@_arrays.accepts_arrays
def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017, "A baseline for detecting
    misclassified and out-of-distribution examples").

        score = max_c softmax(logits / T)_c  in (0, 1]      higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1 (float32 fast path; float64 computed
            in float64; float16/bfloat16 computed in float32).
        temperature: T > 0 (default 1; T > 1 is the temperature scaling of ODIN).

    Returns:
        [N], float64 for float64 logits, else float32.

    Computed as 1 / (1 + sum_{j != k} exp((l_j - l_k) / T)) with k the argmax,
    exp in float32 and sums in float64 for float32 input. Peak extra memory:
    none beyond the output (the torch expression materializes softmax [N, C]).
    Differentiable with respect to logits. NaN/inf in logits raise ValueError
    (not checked on CUDA; see gencore.set_check_finite).
    """
    return MSP(logits, temperature)


@_arrays.accepts_arrays
def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Energy score (Liu et al. 2020, "Energy-based out-of-distribution detection"):
    the negative free energy

        score = -E(x; T) = T logsumexp_c(logits_c / T)      higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1 (dtypes as in ``msp``).
        temperature: T > 0 (default 1, the paper's choice).

    Returns:
        [N], float64 for float64 logits, else float32.

    Computed as l_k + T log1p(sum_{j != k} exp((l_j - l_k) / T)) (k the argmax),
    stable for any logit range. Peak extra memory: none beyond the output.
    Differentiable (gradient softmax(logits / T)).
    NaN/inf in logits raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return ENERGY(logits, temperature)


@_arrays.accepts_arrays
def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"):

        score = max_c logits_c                               higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1.

    Returns:
        [N], float64 for float64 logits, else float32 (exact: the max of the inputs).

    Differentiable: the gradient goes to the first maximal logit of each row.
    NaN/inf in logits raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return MAX_LOGIT(logits)


@_arrays.accepts_arrays
def gen(logits: torch.Tensor, gamma: float = 0.1, top_m: int = 100) -> torch.Tensor:
    """GEN (Liu et al. 2023, "GEN: Pushing the limits of softmax-based
    out-of-distribution detection"): the negative generalized entropy of the M
    largest softmax probabilities,

        score = -sum_{i in top-M(p)} p_i^gamma (1 - p_i)^gamma,  p = softmax(logits)
                                                             higher = more in-distribution

    as in the paper's and OpenOOD's code (sort p, keep the M largest, sum,
    negate; M >= C uses every class).

    Args:
        logits: [N, C] float tensor, C >= 1.
        gamma: gamma > 0 (default 0.1, the paper's choice).
        top_m: M >= 1 (default 100, the paper's ImageNet setting).

    Returns:
        [N], float64 for float64 logits, else float32.

    Each term is exp(gamma (log p + log(1 - p))) with log p = l - logsumexp(l)
    and 1 - p of the top class as the sum of the others, so probabilities that
    underflow (p < 1e-38 in float32) and p -> 1 keep their exact contribution
    (gamma = 0.1 turns p = 1e-40 into 1e-4). The top M come from a quickselect
    per row (CPU) or a radix select (CUDA); peak extra memory one [C] row buffer
    per CPU thread, no [N, C] intermediate. Not differentiable (no autograd
    formula). NaN/inf in logits raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return GEN(logits, gamma, top_m)


@_arrays.accepts_arrays
def kl_matching(logits: torch.Tensor, templates: torch.Tensor, rule: str = "min") -> torch.Tensor:
    """KL matching (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"), in the direction KL(posterior || template):

        rule="min" (default):   score = -min_k KL(p || d_k)          over every template d_k
        rule="predicted":       score = -KL(p || d_y),  y = argmax_c logits_c
        p = softmax(logits)                                   higher = more in-distribution

    "min" is the paper's formula, OpenOOD's KLM and pytorch-ood 0.4.0's
    ``KLMatching`` (which fits templates only for classes predicted at least
    once and replaces log 0 by the lowest finite float, as this rule does);
    "predicted" is what pytorch-ood did before 0.4.0.

    Args:
        logits: [N, C] float tensor, C >= 1.
        templates: rows d_k, >= 0, finite, on the same device: [K, C] (K >= 1)
            for "min", [C, C] (row c = class c) for "predicted";
            ``kl_matching_templates(val_logits)`` gives the first,
            ``kl_matching_templates(val_logits, unseen="uniform")`` the second.
        rule: "min" or "predicted".

    Returns:
        [N], float64 for float64 logits, else float32. Classes with p_c = 0
        contribute 0. A template entry d_kc = 0 where p_c > 0: "predicted" gives
        -inf, "min" a huge finite KL (pytorch-ood's convention).

    Computation: "predicted": one fused pass per row (native CPU and CUDA
    kernels), peak extra memory log(templates) and one [C] row buffer per CPU
    thread. "min": KL(p || d_k) = sum p log p - max_k p . log d_k as one GEMM
    [N, C] x [C, K] in float64 over blocks of 4096 rows (BLAS / cuBLAS through
    torch), peak extra memory 4096 x (C + K) doubles. Not differentiable (no
    autograd formula). NaN/inf in logits or templates and negative templates
    raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return KL_MATCHING(logits, templates, rule)


@_arrays.accepts_arrays
def residual(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Residual score (Wang et al. 2022, "ViM", section 3): minus the norm of the
    part of the centred feature outside the principal subspace,

        score = -||(I - P P^T)(x - u)||                      higher = more in-distribution

    Args:
        features: [N, D] float tensor x, D >= 1.
        principal: [D, R] tensor P with orthonormal columns (P^T P = I; not
            checked, it would cost D R^2 per call), 0 <= R <= D: the principal
            subspace, e.g. from ``vim_fit``.
        center: [D] tensor u (ViM: u = -pinv(W) b).
        All three share dtype and device.

    Returns:
        [N], float64 for float64 features, else float32.

    CPU: one GEMM y = (x - u) P per block of rows, then r^2 = ||x - u||^2 - ||y||^2
    in double; rows where the residual is below 1/8 of ||x - u|| (where that
    difference cancels) are recomputed as ||(x - u) - y P^T||, so the error
    stays a few float eps of ||x - u||. CUDA: (x - u) - ((x - u) P) P^T by torch
    matmuls, norms by the gencore kernel. Peak extra memory on the CPU: P^T plus
    per-thread blocks of 128 x (2D + 2R); on CUDA: two [N, D] and one [N, R] tensors.

    Differentiable with respect to features and center (gradient
    -(I - P P^T)(x - u) / r, 0 where r = 0); principal must not require grad.
    NaN/inf in any input raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return RESIDUAL(features, principal, center)


@_arrays.accepts_arrays
def vim(features: torch.Tensor, logits: torch.Tensor, principal: torch.Tensor, center: torch.Tensor,
        alpha: float) -> torch.Tensor:
    """ViM (Wang et al. 2022, "ViM: Out-of-distribution with virtual-logit matching"):

        score = logsumexp_c(logits_c) - alpha ||(I - P P^T)(x - u)||
                                                             higher = more in-distribution

    i.e. the energy of the real logits against the virtual logit alpha ||x^{P-perp}||,
    exactly as OpenOOD's ViM postprocessor (energy - alpha * norm of the
    residual). Fit u, P and alpha with ``vim_fit``.

    Args:
        features: [N, D] float tensor x (penultimate-layer features).
        logits: [N, C] logits of the same rows (same dtype and device), C >= 1.
        principal: [D, R] orthonormal columns P; center: [D] u (see ``residual``).
        alpha: finite real (ViM: mean max-logit / mean residual norm on training data).

    Returns:
        [N], float64 for float64 features, else float32.

    Same kernels and memory as ``residual`` plus the ``energy`` kernel on logits.
    Differentiable with respect to features, logits and center. NaN/inf in
    any input raise ValueError (not checked on CUDA; see gencore.set_check_finite).
    """
    return VIM(features, logits, principal, center, alpha)
