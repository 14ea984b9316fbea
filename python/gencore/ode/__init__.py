"""ODE / SDE samplers of diffusion and flow models: Euler (DDIM), Heun, DPM-Solver++
2M / 3M / 2M-SDE, UniPC, adaptive RK45 with per-sample steps; noise schedules, time
grids, inversion and likelihood; odeint for generic flows; a diffusers scheduler.

Public names:
    sample(denoiser, x, sigmas, solver="dpmpp_2m", **options) -> x0   (k-diffusion's convention)
    SOLVERS, Guidance, SampleInfo
    karras_sigmas(n, sigma_min, sigma_max, rho=7.0), loglinear_sigmas, exponential_sigmas,
        logsnr_uniform(n, schedule), time_uniform(n, schedule), flow_times(n, shift)
    odeint(func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)          (torchdiffeq's convention)
    invert(denoiser, x0, sigmas, solver), log_likelihood(denoiser, x, sigma_min, sigma_max)
    learn_coefficients(denoiser, sigmas, calibration) -> table for solver="learned"
    schedules: VPLinear, VPCosine, VE, EDM, RectifiedFlow, as_denoiser, to_denoised, pfgmpp_prior
    diffusers (import gencore.ode.diffusers): Scheduler
"""
from . import schedules
from .grids import exponential_sigmas, flow_times, karras_sigmas, loglinear_sigmas, logsnr_uniform, time_uniform
from .solvers import SOLVERS, Guidance, SampleInfo, sample
from .learned import learn_coefficients
from .odeint import odeint
from .likelihood import invert, log_likelihood

__all__ = ["sample", "SOLVERS", "Guidance", "SampleInfo", "karras_sigmas", "loglinear_sigmas", "exponential_sigmas",
           "logsnr_uniform", "time_uniform", "flow_times", "schedules", "odeint", "invert", "log_likelihood",
           "learn_coefficients"]
