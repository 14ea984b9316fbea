"""Score-matching losses: EDM / VP / VE denoising score matching with the EDM
preconditioning, targets for epsilon / x0 / v / flow parameterisations, sliced
score matching, and the DMD distribution-matching loss.

Preconditioning and weighting follow Karras et al. 2022 ("Elucidating the
Design Space of Diffusion-Based Generative Models", Table 1), with x = y + sigma n:

    EDM: c_skip = s_d^2 / (s^2 + s_d^2), c_out = s s_d / sqrt(s^2 + s_d^2),
         c_in = 1 / sqrt(s^2 + s_d^2), c_noise = ln(s) / 4,
         lambda = 1 / c_out^2, ln s ~ N(P_mean, P_std^2)
    VP:  c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) t(s),
         lambda = 1 / s^2, s = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t ~ U(eps_t, 1)
    VE:  c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2),
         lambda = 1 / s^2, ln s ~ U(ln s_min, ln s_max)

D(x; s) = c_skip x + c_out F(c_in x, c_noise), and the per-sample loss is
lambda(s) mean_j (D - y)_j^2 (a mean over elements, so the scale does not
depend on the image size; multiply by the element count for EDM's sum).
The loss and its backward are one fused pass each (gencore::score_dsm_loss).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _checks
from .ops._losses import DMD_GRADIENT, REDUCTIONS, reduce_samples, reduced_dsm_loss

__all__ = ["edm_precond", "vp_precond", "ve_precond", "EDMPrecond", "VPPrecond", "VEPrecond", "dsm_loss",
           "dsm_target", "edm_loss", "vp_loss", "ve_loss", "sliced_score_matching_loss", "dmd_gradient", "dmd_loss"]

_PARAMETERISATIONS = ("x0", "epsilon", "v", "flow")


# ====================================================================== preconditioning (EDM Table 1)

def edm_precond(sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise, weight) of EDM for noise levels sigma [B] (float64 math)."""
    s = sigma.double()
    sd2 = sigma_data * sigma_data
    norm = torch.sqrt(s * s + sd2)
    c_out = s * sigma_data / norm
    return sd2 / (s * s + sd2), c_out, 1 / norm, torch.log(s) / 4, 1 / (c_out * c_out)


def _vp_t(sigma: torch.Tensor, beta_d: float, beta_min: float) -> torch.Tensor:
    """The VP time t(sigma) that inverts sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return (torch.sqrt(beta_min ** 2 + 2 * beta_d * torch.log1p(sigma * sigma)) - beta_min) / beta_d


def vp_precond(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1, steps: int = 1000):
    """(c_skip, c_out, c_in, c_noise, weight) of the VP preconditioning (DDPM++ in EDM's form)."""
    s = sigma.double()
    return (torch.ones_like(s), -s, 1 / torch.sqrt(s * s + 1), (steps - 1) * _vp_t(s, beta_d, beta_min), 1 / (s * s))


def ve_precond(sigma: torch.Tensor):
    """(c_skip, c_out, c_in, c_noise, weight) of the VE preconditioning (NCSN++ in EDM's form)."""
    s = sigma.double()
    return torch.ones_like(s), s, torch.ones_like(s), torch.log(s / 2), 1 / (s * s)


class _Precond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) around a raw network F(x, c_noise)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def coefficients(self, sigma: torch.Tensor):
        raise NotImplementedError

    def raw(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F(c_in x, c_noise): the network's own output, which the fused loss takes."""
        _, _, c_in, c_noise, _ = self.coefficients(sigma)
        return self.net(_per_sample(c_in, x) * x, c_noise.to(x.dtype))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _sigma_per_sample(sigma, x)
        c_skip, c_out, _, _, _ = self.coefficients(sigma)
        return _per_sample(c_skip, x) * x + _per_sample(c_out, x) * self.raw(x, sigma)


class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, eq. 7 and Table 1) of a raw network.

    Args:
        net: module called as ``net(c_in * x, c_noise)`` with x [B, ...] and c_noise [B].
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).

    ``forward(x, sigma)`` is the denoiser D(x; sigma); ``edm_loss`` recognises
    it and fuses the preconditioning into the loss kernel.
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__(net)
        self.sigma_data = _checks.real(sigma_data, "sigma_data", positive=True)

    def coefficients(self, sigma):
        return edm_precond(sigma, self.sigma_data)


class VPPrecond(_Precond):
    """VP preconditioning (EDM Table 1) of a raw network: c_out = -sigma (epsilon prediction)."""

    def __init__(self, net: torch.nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, steps: int = 1000):
        super().__init__(net)
        self.beta_d, self.beta_min, self.steps = beta_d, beta_min, steps

    def coefficients(self, sigma):
        return vp_precond(sigma, self.beta_d, self.beta_min, self.steps)


class VEPrecond(_Precond):
    """VE preconditioning (EDM Table 1) of a raw network."""

    def coefficients(self, sigma):
        return ve_precond(sigma)


# ====================================================================== the fused loss

def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] in like's dtype, to broadcast over a sample."""
    return values.to(like.dtype).view((like.shape[0],) + (1,) * (like.dim() - 1))


def _sigma_per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    if isinstance(sigma, torch.Tensor):
        _checks.tensor(sigma, "sigma")
        return sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
    return torch.full((x.shape[0],), _checks.real(sigma, "sigma", positive=True), dtype=torch.float64,
                      device=x.device)


def dsm_loss(raw: torch.Tensor, x: torch.Tensor, target: torch.Tensor, c_skip: Optional[torch.Tensor] = None,
             c_out: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
             reduction: str = "mean") -> torch.Tensor:
    """Fused denoising-score-matching loss:

        loss_b = weight_b * mean_j (c_skip_b x_bj + c_out_b raw_bj - target_bj)^2

    Args:
        raw: [B, ...] network output (with c_skip = 0, c_out = 1: any prediction).
        x: [B, ...] the noisy input (read only where c_skip != 0).
        target: [B, ...] what the prediction should be (``dsm_target``).
        c_skip, c_out, weight: [B] per-sample coefficients (defaults 0, 1, 1).
        reduction: "mean" over the batch (default), "sum" or "none" ([B]).

    One pass over the batch forward, one backward (native CPU / CUDA kernels);
    gradients flow to raw, x and target. An eager "mean" / "sum" call that needs
    only raw's gradient writes that gradient in the forward pass
    (gencore::score_dsm_loss_and_grad), so ``backward()`` costs no second pass
    (it keeps one raw-sized tensor until then). float32 is the fast path; float64 runs
    natively on the CPU; fp16 / bf16 are computed in float32. NaN/inf raise
    ValueError on the CPU.
    """
    _checks.tensor(raw, "raw")
    b = raw.shape[0] if raw.dim() else 0
    dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32

    def per_sample(c, default):
        if c is None:
            return torch.full((b,), default, dtype=dtype, device=raw.device)
        return c if c.dtype == dtype else c.to(dtype)
    _checks.choice(reduction, "reduction", REDUCTIONS)  # before any work
    return reduced_dsm_loss(raw, x, target, per_sample(c_skip, 0.0), per_sample(c_out, 1.0), per_sample(weight, 1.0),
                            reduction)


def dsm_target(parameterization: str, y: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
               alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What a network of each parameterisation predicts for x = alpha y + sigma noise:

        "x0": y;  "epsilon": noise;  "v": alpha noise - sigma y (Salimans & Ho 2022,
        with alpha^2 + sigma^2 = 1);  "flow": noise - y, the velocity of
        x_t = (1 - t) y + t noise (flow matching / rectified flow, alpha = 1 - t, sigma = t).
    """
    _checks.choice(parameterization, "parameterization", _PARAMETERISATIONS)
    if parameterization == "x0":
        return y
    if parameterization == "epsilon":
        return noise
    if parameterization == "flow":
        return noise - y
    a = torch.ones_like(sigma) if alpha is None else alpha
    return _per_sample(a, y) * noise - _per_sample(sigma, y) * y


def _noised_loss(denoiser, y: torch.Tensor, sigma: torch.Tensor, noise: Optional[torch.Tensor],
                 coefficients: Callable, generator, reduction: str) -> torch.Tensor:
    """x = y + sigma n; the fused loss through the preconditioned network when the
    denoiser is a _Precond, else against D(x; sigma) itself."""
    _checks.tensor(y, "y")
    if noise is None:
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    x = y + _per_sample(sigma, y) * noise
    c_skip, c_out, _, _, weight = coefficients(sigma)
    if isinstance(denoiser, _Precond):
        c_skip, c_out, _, _, _ = denoiser.coefficients(sigma)
        return dsm_loss(denoiser.raw(x, sigma), x, y, c_skip, c_out, weight, reduction)
    return dsm_loss(denoiser(x, sigma.to(y.dtype)), x, y, None, None, weight, reduction)


def edm_loss(denoiser, y: torch.Tensor, *, sigma=None, noise: Optional[torch.Tensor] = None, P_mean: float = -1.2,
             P_std: float = 1.2, sigma_data: float = 0.5, generator: Optional[torch.Generator] = None,
             reduction: str = "mean") -> torch.Tensor:
    """EDM training loss (Karras et al. 2022, section 5): ln sigma ~ N(P_mean, P_std^2),
    x = y + sigma n, lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,

        loss_b = lambda(sigma_b) mean_j (D(x_b; sigma_b) - y_b)_j^2

    Args:
        denoiser: an ``EDMPrecond`` (its raw network output goes to the fused
            kernel with c_skip, c_out) or any callable D(x [B, ...], sigma [B]).
        y: [B, ...] clean data.
        sigma: fixed noise levels (float or [B]) instead of sampling them.
        noise: the standard normal n [B, ...] instead of drawing it.
        P_mean, P_std, sigma_data: EDM's defaults (-1.2, 1.2, 0.5).
        generator: for sigma and n.
        reduction: "mean" (default), "sum" or "none" ([B]).
    """
    s = None if sigma is None else _sigma_per_sample(sigma, y).double()
    if s is None:
        z = torch.randn(y.shape[0], generator=generator, dtype=torch.float64, device=y.device)
        s = torch.exp(P_mean + P_std * z)
    return _noised_loss(denoiser, y, s, noise, lambda t: edm_precond(t, sigma_data), generator, reduction)


def vp_loss(denoiser, y: torch.Tensor, *, sigma=None, noise: Optional[torch.Tensor] = None, beta_d: float = 19.9,
            beta_min: float = 0.1, epsilon_t: float = 1e-5, generator: Optional[torch.Generator] = None,
            reduction: str = "mean") -> torch.Tensor:
    """VP training loss in EDM's form (Table 1): t ~ U(epsilon_t, 1),
    sigma = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), lambda = 1 / sigma^2.
    Arguments as ``edm_loss``; the denoiser may be a ``VPPrecond``."""
    s = None if sigma is None else _sigma_per_sample(sigma, y).double()
    if s is None:
        t = epsilon_t + (1 - epsilon_t) * torch.rand(y.shape[0], generator=generator, dtype=torch.float64,
                                                     device=y.device)
        s = torch.sqrt(torch.expm1(0.5 * beta_d * t * t + beta_min * t))
    return _noised_loss(denoiser, y, s, noise, lambda t: vp_precond(t, beta_d, beta_min), generator, reduction)


def ve_loss(denoiser, y: torch.Tensor, *, sigma=None, noise: Optional[torch.Tensor] = None, sigma_min: float = 0.02,
            sigma_max: float = 100.0, generator: Optional[torch.Generator] = None,
            reduction: str = "mean") -> torch.Tensor:
    """VE training loss in EDM's form (Table 1): ln sigma ~ U(ln sigma_min, ln sigma_max),
    lambda = 1 / sigma^2. Arguments as ``edm_loss``; the denoiser may be a ``VEPrecond``."""
    s = None if sigma is None else _sigma_per_sample(sigma, y).double()
    if s is None:
        u = torch.rand(y.shape[0], generator=generator, dtype=torch.float64, device=y.device)
        s = torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
    return _noised_loss(denoiser, y, s, noise, ve_precond, generator, reduction)


# ====================================================================== sliced score matching

def sliced_score_matching_loss(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                               probes: int = 1, probe: str = "rademacher", variance_reduced: bool = False,
                               generator: Optional[torch.Generator] = None, reduction: str = "mean") -> torch.Tensor:
    """Sliced score matching (Song et al. 2019, "Sliced Score Matching"), Hutchinson form:

        loss(x) = E_v [ v^T grad_x (v^T s(x)) + (v^T s(x))^2 / 2 ]
                  (variance_reduced: the second term is ||s(x)||^2 / 2, SSM-VR)

    Args:
        score_fn: the score network s(x) [B, ...] -> [B, ...].
        x: [B, ...] data; does not need to require grad.
        probes: probe vectors per sample (the expectation's sample size).
        probe: "rademacher" (+-1, lower variance) or "gaussian".
        reduction: "mean" over the batch, "sum" or "none" ([B]).

    One backward pass through the network per probe (create_graph=True, so the
    loss itself can be backpropagated into the network's parameters).
    """
    _checks.tensor(x, "x")
    _checks.choice(probe, "probe", ("rademacher", "gaussian"))
    probes = _checks.integer(probes, "probes", low=1)
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    if s.shape != x.shape:
        raise ValueError(f"score_fn must return the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
    b = x.shape[0]
    total = torch.zeros(b, dtype=s.dtype, device=s.device)
    for _ in range(probes):
        if probe == "gaussian":
            v = torch.randn(x.shape, generator=generator, dtype=s.dtype, device=s.device)
        else:
            v = torch.randint(0, 2, x.shape, generator=generator, device=s.device).to(s.dtype) * 2 - 1
        sv = (s * v).reshape(b, -1).sum(1)
        (grad_sv,) = torch.autograd.grad(sv.sum(), x, create_graph=True)
        trace = (grad_sv * v).reshape(b, -1).sum(1)
        second = 0.5 * (s * s).reshape(b, -1).sum(1) if variance_reduced else 0.5 * sv * sv
        total = total + trace + second
    return reduce_samples(total / probes, reduction)


# ====================================================================== DMD

def dmd_gradient(x0: torch.Tensor, denoised_real: torch.Tensor, denoised_fake: torch.Tensor) -> torch.Tensor:
    """Distribution-matching gradient of DMD / DMD2 (Yin et al. 2024), [B, ...]:

        grad_b = (denoised_fake_b - denoised_real_b) / mean_j |x0_b - denoised_real_b|_j

    where x0 = G(z) is the generator's output and denoised_real / denoised_fake
    are the real and fake score networks' denoised predictions at the same
    noised x_t. With the denoisers D = x + sigma^2 s this is proportional to
    s_real - s_fake (DMD's direction of steepest KL descent), normalised per
    sample as in DMD's code; a sample with a zero normaliser gets 0 (DMD
    applies nan_to_num). One native pass per sample; not differentiable (use
    ``dmd_loss`` to backpropagate it into the generator).
    """
    return DMD_GRADIENT(x0, denoised_real, denoised_fake)


def dmd_loss(x0: torch.Tensor, denoised_real: torch.Tensor, denoised_fake: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """0.5 ||x0 - stopgrad(x0 - grad)||^2 per sample (mean over elements), whose
    gradient with respect to x0 is grad / M: DMD2's loss form."""
    grad = dmd_gradient(x0.detach(), denoised_real.detach(), denoised_fake.detach()).to(x0.dtype)
    b = x0.shape[0]
    per_sample = 0.5 * ((x0 - (x0.detach() - grad)) ** 2).reshape(b, -1).mean(1)
    return reduce_samples(per_sample, reduction)
