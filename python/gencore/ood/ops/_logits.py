"""ood logit-score and residual/ViM ops: registration and the public wrappers."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch, _native
from .. import reference

# ====================================================================== logit scores and ViM
# Every score: higher = more in-distribution. One custom op per score
# (gencore::ood_msp, _energy, _max_logit, _gen, _kl_matching, _residual, _vim);
# they share validation, dispatch and the native kernels: csrc/ood/logits.cpp and
# csrc/ood/vim.cpp on the CPU, cuda/ood/logits.cu on CUDA. The CPU kernels refuse
# NaN/inf in their first pass; elsewhere _checks.finite does, which on CUDA is one
# device-to-host sync per checked tensor (the CUDA kernels themselves never sync).

_LOGIT_CODES = {"max_logit": 0, "msp": 1, "energy": 2, "gen": 3, "kl_matching": 4}


def _validate_logits(logits: torch.Tensor, name: str = "logits") -> None:
    _checks.tensor(logits, name, ndim=2)
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no classes (shape {tuple(logits.shape)}); scores need C >= 1")


def _validate_templates(logits: torch.Tensor, templates: torch.Tensor) -> None:
    _checks.tensor(templates, "templates", ndim=2)
    _checks.same_device(logits=logits, templates=templates)
    c = logits.shape[1]
    if templates.shape[0] != c or templates.shape[1] != c:
        raise ValueError(f"templates must be [C, C] = [{c}, {c}] for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(templates.shape)}")


def _validate_residual(features, principal, center, logits=None) -> None:
    _checks.tensor(features, "features", ndim=2)
    _checks.tensor(principal, "principal", ndim=2)
    _checks.tensor(center, "center", ndim=1)
    named = {"features": features, "principal": principal, "center": center}
    if logits is not None:
        _validate_logits(logits)
        named["logits"] = logits
    _checks.same_device(**named)
    for name, t in named.items():
        if t.dtype != features.dtype:
            raise TypeError(f"{name} must have the dtype of features ({features.dtype}), got {t.dtype}")
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


def _backend(op: str, x: torch.Tensor) -> str:
    """_dispatch.select, plus: float64 CUDA tensors run the reference (no float64 CUDA kernel)."""
    backend = _dispatch.select(f"ood.{op}", x)
    if backend == "native-cuda" and x.dtype == torch.float64:
        _dispatch.warn_once(f"ood.{op}:cuda-float64",
                            f"gencore.ood.{op}: no float64 CUDA kernel; float64 CUDA tensors run the torch reference")
        return "reference"
    return backend


def _cuda_stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def _logit_scores(op: str, logits: torch.Tensor, temperature: float = 1.0, gamma: float = 0.1, top_m: int = 1,
                  templates=None) -> torch.Tensor:
    """[N] scores of ``op`` from the native kernel, or from the reference."""
    backend = _backend(op, logits)
    code, n = _LOGIT_CODES[op], logits.shape[0]
    if backend == "native-cpu":  # the kernel's max pass refuses NaN/inf itself
        dtype = reference.compute_dtype(logits.dtype)
        if n == 0:  # numpy reports strides (0, 0) for empty arrays; nothing to compute
            return torch.empty(0, dtype=dtype)
        x = _checks.native_rows(logits, dtype)
        log_t = None if templates is None else templates.detach().to(dtype).log().contiguous().numpy()
        out = torch.empty(n, dtype=dtype)
        _native.core.logit_scores(x.numpy(), code, temperature, gamma, top_m, log_t, out.view(n, 1).numpy(),
                                  _native.get_num_threads())
        return out
    _checks.finite(logits, "logits")
    if backend == "native-cuda":
        x = logits.detach().float().contiguous()
        log_t = None if templates is None else templates.detach().float().log().contiguous()
        out = torch.empty(n, dtype=torch.float32, device=x.device)
        if n > 0:
            _native.cuda.logit_scores(x.data_ptr(), n, x.shape[1], code, temperature, gamma, top_m,
                                      0 if log_t is None else log_t.data_ptr(), out.data_ptr(),
                                      _cuda_stream(x), x.device.index)
        return out
    x = logits.detach()
    if op == "msp":
        return reference.msp(x, temperature)
    if op == "energy":
        return reference.energy(x, temperature)
    if op == "max_logit":
        return reference.max_logit(x)
    if op == "gen":
        return reference.gen(x, gamma, top_m)
    return reference.kl_matching(x, templates.detach())


def _residual_scores(op: str, features, principal, center, logits=None, alpha: float = 0.0) -> torch.Tensor:
    """[N] residual (logits None) or ViM scores from the native kernel, or from the reference."""
    backend = _backend(op, features)
    n = features.shape[0]
    _checks.finite(principal, "principal")
    _checks.finite(center, "center")
    if backend == "native-cpu":  # the kernels' norm and max passes refuse NaN/inf themselves
        dtype = reference.compute_dtype(features.dtype)
        if n == 0:
            return torch.empty(0, dtype=dtype)
        x, p = _checks.native_rows(features, dtype), _checks.native_rows(principal, dtype)
        u = center.detach().to(dtype).reshape(1, -1).contiguous()
        lg = None if logits is None else _checks.native_rows(logits, dtype).numpy()
        out = torch.empty(n, dtype=dtype)
        _native.core.residual_scores(x.numpy(), p.numpy(), u.numpy(), lg, alpha, out.view(n, 1).numpy(),
                                     _native.get_num_threads())
        return out
    _checks.finite(features, "features")
    if logits is not None:
        _checks.finite(logits, "logits")
    if backend == "native-cuda":
        # The projection is two GEMMs by torch (xc P, then xc - (xc P) P^T in one
        # addmm): on the GPU they are cheap, and guarding the one-GEMM form of the
        # CPU kernel row by row would need a host sync. The kernel fuses ||e||,
        # logsumexp(logits) and the combination.
        p = principal.detach().float()
        xc = features.detach().float() - center.detach().float()
        e = torch.addmm(xc, xc @ p, p.T, alpha=-1).contiguous()
        lg = None if logits is None else logits.detach().float().contiguous()
        out = torch.empty(n, dtype=torch.float32, device=xc.device)
        if n > 0:
            _native.cuda.residual_scores(e.data_ptr(), n, e.shape[1], 0 if lg is None else lg.data_ptr(),
                                         0 if lg is None else lg.shape[1], alpha, out.data_ptr(),
                                         _cuda_stream(xc), xc.device.index)
        return out
    if logits is None:
        return reference.residual(features.detach(), principal.detach(), center.detach())
    return reference.vim(features.detach(), logits.detach(), principal.detach(), center.detach(), alpha)


def _scores_like(x: torch.Tensor) -> torch.Tensor:
    """Fake output: [N] in the compute dtype of x."""
    return x.new_empty((x.shape[0],), dtype=reference.compute_dtype(x.dtype))


def _grad_to(grad: torch.Tensor, like: torch.Tensor):
    return grad.to(like.dtype)


# --- msp / energy / max_logit

@torch.library.custom_op("gencore::ood_msp", mutates_args=())
def _msp_op(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return _logit_scores("msp", logits, temperature=temperature)


@torch.library.custom_op("gencore::ood_energy", mutates_args=())
def _energy_op(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return _logit_scores("energy", logits, temperature=temperature)


@torch.library.custom_op("gencore::ood_max_logit", mutates_args=())
def _max_logit_op(logits: torch.Tensor) -> torch.Tensor:
    _validate_logits(logits)
    return _logit_scores("max_logit", logits)


@_msp_op.register_fake
def _(logits, temperature):
    _validate_logits(logits)
    _checks.real(temperature, "temperature", positive=True)
    return _scores_like(logits)


@_energy_op.register_fake
def _(logits, temperature):
    _validate_logits(logits)
    _checks.real(temperature, "temperature", positive=True)
    return _scores_like(logits)


@_max_logit_op.register_fake
def _(logits):
    _validate_logits(logits)
    return _scores_like(logits)


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
    return _grad_to((grad * out / ctx.temperature)[:, None] * (onehot - p), logits), None


def _energy_backward(ctx, grad):
    # d T logsumexp(l / T) / d l = softmax(l / T)
    p, logits, _ = _softmax_of(ctx)
    return _grad_to(grad[:, None] * p, logits), None


def _max_logit_backward(ctx, grad):
    # the gradient goes to the first argmax, as torch.max(dim) does
    logits, out = ctx.saved_tensors
    g = torch.zeros(logits.shape, dtype=out.dtype, device=logits.device)
    return _grad_to(g.scatter_(1, logits.argmax(dim=1, keepdim=True), grad[:, None]), logits)


_msp_op.register_autograd(_msp_backward, setup_context=_save_logits)
_energy_op.register_autograd(_energy_backward, setup_context=_save_logits)
_max_logit_op.register_autograd(_max_logit_backward, setup_context=_save_logits)


# --- GEN / KL matching (no gradients: these scores rank inputs, and GEN's
# p^gamma has an unbounded derivative at p -> 0)

def _validate_gen(logits, gamma, top_m):
    _validate_logits(logits)
    return _checks.real(gamma, "gamma", positive=True), _checks.integer(top_m, "top_m", low=1)


@torch.library.custom_op("gencore::ood_gen", mutates_args=())
def _gen_op(logits: torch.Tensor, gamma: float, top_m: int) -> torch.Tensor:
    gamma, top_m = _validate_gen(logits, gamma, top_m)
    return _logit_scores("gen", logits, gamma=gamma, top_m=top_m)


@_gen_op.register_fake
def _(logits, gamma, top_m):
    _validate_gen(logits, gamma, top_m)
    return _scores_like(logits)


@torch.library.custom_op("gencore::ood_kl_matching", mutates_args=())
def _kl_matching_op(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    _validate_logits(logits)
    _validate_templates(logits, templates)
    _checks.finite(templates, "templates")
    if templates.numel() and bool((templates < 0).any()):
        raise ValueError("templates must be >= 0 (rows are class-mean softmax distributions)")
    return _logit_scores("kl_matching", logits, templates=templates)


@_kl_matching_op.register_fake
def _(logits, templates):
    _validate_logits(logits)
    _validate_templates(logits, templates)
    return _scores_like(logits)


# --- residual / ViM

@torch.library.custom_op("gencore::ood_residual", mutates_args=())
def _residual_op(features: torch.Tensor, principal: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    _validate_residual(features, principal, center)
    return _residual_scores("residual", features, principal, center)


@_residual_op.register_fake
def _(features, principal, center):
    _validate_residual(features, principal, center)
    return _scores_like(features)


@torch.library.custom_op("gencore::ood_vim", mutates_args=())
def _vim_op(features: torch.Tensor, logits: torch.Tensor, principal: torch.Tensor, center: torch.Tensor,
            alpha: float) -> torch.Tensor:
    _validate_residual(features, principal, center, logits)
    alpha = _checks.real(alpha, "alpha")
    return _residual_scores("vim", features, principal, center, logits, alpha)


@_vim_op.register_fake
def _(features, logits, principal, center, alpha):
    _validate_residual(features, principal, center, logits)
    _checks.real(alpha, "alpha")
    return _scores_like(features)


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
    grad_features = _grad_to(grad_x, features) if ctx.needs_input_grad[0] else None
    grad_center = _grad_to(-grad_x.sum(dim=0), center) if ctx.needs_input_grad[ctx.principal_index + 1] else None
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
        grad_logits = _grad_to(grad[:, None] * torch.softmax(logits.to(grad.dtype), dim=1), logits)
    grad_features, grad_center = _residual_grads(ctx, grad * ctx.alpha)
    return grad_features, grad_logits, None, grad_center, None


_residual_op.register_autograd(_residual_backward, setup_context=_residual_setup)
_vim_op.register_autograd(_vim_backward, setup_context=_vim_setup)


# --- public functions (arguments are checked here too, before the op schema's
# conversion, so a wrong type is a TypeError naming the argument, not a RuntimeError)

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
    (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return torch.ops.gencore.ood_msp(logits, temperature)


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
    NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    temperature = _checks.real(temperature, "temperature", positive=True)
    return torch.ops.gencore.ood_energy(logits, temperature)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"):

        score = max_c logits_c                               higher = more in-distribution

    Args:
        logits: [N, C] float tensor, C >= 1.

    Returns:
        [N], float64 for float64 logits, else float32 (exact: the max of the inputs).

    Differentiable: the gradient goes to the first maximal logit of each row.
    NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    _validate_logits(logits)
    return torch.ops.gencore.ood_max_logit(logits)


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
    formula). NaN/inf in logits raise ValueError (on CUDA, after one host sync).
    """
    gamma, top_m = _validate_gen(logits, gamma, top_m)
    return torch.ops.gencore.ood_gen(logits, gamma, top_m)


def kl_matching(logits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """KL matching (Hendrycks et al. 2022, "Scaling out-of-distribution detection
    for real-world settings"):

        score = -KL(p || d_k) = -sum_c p_c log(p_c / d_kc),  p = softmax(logits),
        k = argmax_c logits_c                                higher = more in-distribution

    with d_k the template of the predicted class (``kl_matching_templates``),
    the direction KL(posterior || template) of the paper, pytorch-ood and
    OpenOOD. (OpenOOD's KLM takes the minimum over all C templates instead of
    the predicted class's; pytorch-ood and this function use the predicted class.)

    Args:
        logits: [N, C] float tensor, C >= 1.
        templates: [C, C] float tensor on the same device, >= 0, finite; row c
            is the mean softmax of the samples predicted as class c.

    Returns:
        [N], float64 for float64 logits, else float32. Classes with p_c = 0
        contribute 0; d_kc = 0 where p_c > 0 gives -inf.

    Peak extra memory: log(templates) [C, C] and one [C] row buffer per CPU
    thread. Not differentiable (no autograd formula). NaN/inf in logits or templates
    and negative templates raise ValueError (on CUDA, after host syncs).
    """
    _validate_logits(logits)
    _validate_templates(logits, templates)
    return torch.ops.gencore.ood_kl_matching(logits, templates)


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
    NaN/inf in any input raise ValueError (on CUDA, after host syncs).
    """
    _validate_residual(features, principal, center)
    return torch.ops.gencore.ood_residual(features, principal, center)


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
    any input raise ValueError (on CUDA, after host syncs).
    """
    _validate_residual(features, principal, center, logits)
    alpha = _checks.real(alpha, "alpha")
    return torch.ops.gencore.ood_vim(features, logits, principal, center, alpha)
