"""A scheduler with diffusers' interface, backed by gencore's solvers.

    from gencore.ode.diffusers import Scheduler
    pipe.scheduler = Scheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")

It implements what diffusers' pipelines call: ``set_timesteps``, ``timesteps``,
``init_noise_sigma``, ``scale_model_input``, ``step`` (returning an object with
``prev_sample``), ``add_noise``, ``order`` and ``config``, for discrete-time VP
models (DDPM betas: "linear", "scaled_linear", "squaredcos_cap_v2") with
epsilon, v or sample prediction. Each step converts the model output to the
x0 prediction, runs one step of the chosen gencore solver in the EDM form
(x / alpha at noise level sigma / alpha) with the coefficients precomputed at
``set_timesteps``, and returns alpha_next times the result: no host sync, no
per-step coefficient math. The timesteps follow diffusers' "linspace",
"leading" and "trailing" spacings, so for the same configuration the grid is
diffusers' own; "dpmpp_2m" then reproduces DPMSolverMultistepScheduler
(dpmsolver++, order 2, lower-order final steps) and "unipc"
UniPCMultistepScheduler (bh2, predictor-corrector).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from .. import _checks
from . import coefficients as coef
from .ops._step import STEP

__all__ = ["Scheduler", "SchedulerOutput"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_SOLVERS = ("euler", "dpmpp_2m", "dpmpp_3m", "unipc")


@dataclass
class SchedulerOutput:
    """What ``step`` returns: ``prev_sample`` (the next x) and ``pred_original_sample`` (x0)."""

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class _Config(dict):
    """diffusers reads scheduler.config.<name>; a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> torch.Tensor:
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), 0.999)
                              for i in range(num_train_timesteps)], dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}")
    return torch.cumprod(1 - betas, 0)


class Scheduler:
    """diffusers-compatible scheduler over gencore.ode's solvers (module docstring)."""

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", solver: str = "dpmpp_2m",
                 solver_order: int = 2, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 lower_order_final: bool = True, **ignored):
        self.config = _Config(num_train_timesteps=_checks.integer(num_train_timesteps, "num_train_timesteps", low=2),
                              beta_start=float(beta_start), beta_end=float(beta_end), beta_schedule=beta_schedule,
                              prediction_type=_checks.choice(prediction_type, "prediction_type", _PREDICTIONS),
                              solver=_checks.choice(solver, "solver", _SOLVERS),
                              solver_order=_checks.integer(solver_order, "solver_order", low=1, high=3),
                              timestep_spacing=_checks.choice(timestep_spacing, "timestep_spacing",
                                                              ("linspace", "leading", "trailing")),
                              steps_offset=int(steps_offset), lower_order_final=bool(lower_order_final))
        self.alphas_cumprod = _alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
        self.timesteps: Optional[torch.Tensor] = None
        self.sigmas: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self._rows = self._used = None
        self._step_index = 0
        self._history: list = []

    @classmethod
    def from_config(cls, config, **overrides) -> "Scheduler":
        """From a diffusers scheduler config (or any mapping), e.g. ``pipe.scheduler.config``."""
        return cls(**{**dict(config), **overrides})

    # --- diffusers' interface -----------------------------------------------------

    @property
    def init_noise_sigma(self) -> float:
        """Pipelines multiply their standard-normal latents by this: 1 for a VP model."""
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None, **ignored):
        """The grid of ``num_inference_steps`` steps (diffusers' spacing) and every step's coefficients."""
        n = _checks.integer(num_inference_steps, "num_inference_steps", low=1)
        cfg = self.config
        total = cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            steps = np.linspace(0, total - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = total // (n + 1)
            steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + cfg.steps_offset
        else:
            steps = np.arange(total, 0, -total / n).round().astype(np.int64) - 1
        self.timesteps = torch.from_numpy(steps.copy()).to(device)
        ab = self.alphas_cumprod[torch.from_numpy(steps.copy())]
        self.sigmas = torch.cat([torch.sqrt((1 - ab) / ab), torch.zeros(1, dtype=torch.float64)])   # EDM levels
        self._alphas = torch.cat([torch.sqrt(ab), torch.ones(1, dtype=torch.float64)])                # [n + 1]
        if cfg.solver == "euler":
            table = coef.euler(self.sigmas)
        elif cfg.solver == "dpmpp_2m":
            table = coef.dpmpp_2m(self.sigmas)
        elif cfg.solver == "dpmpp_3m":
            table = coef.dpmpp_3m(self.sigmas)
        else:
            table = coef.unipc(self.sigmas, order=cfg.solver_order, lower_order_final=cfg.lower_order_final)
        self._used = [tuple(bool(v) for v in (table[i] != 0)) for i in range(n)]
        self._rows = table
        self._device = device
        self.num_inference_steps = n
        self._step_index = 0
        self._history = []

    def _x0(self, model_output, sample, i):
        alpha, s = float(self._alphas[i]), float(self.sigmas[i])
        sigma = s * alpha
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - sigma * model_output) / alpha
        if kind == "v_prediction":
            return alpha * sample - sigma * model_output
        return model_output

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **ignored):
        """One solver step from ``sample`` at ``timestep`` (the next in ``timesteps``)."""
        if self._rows is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        i = self._step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"step() called {i + 1} times for {self.num_inference_steps} timesteps")
        alpha, alpha_next = float(self._alphas[i]), float(self._alphas[i + 1])
        x0 = self._x0(model_output, sample, i)
        x_edm = sample / alpha
        used = self._used[i]
        hist = [h if used[coef.H1 + j] else None for j, h in enumerate(self._history[:3])]
        hist += [None] * (3 - len(hist))
        coeffs = self._rows[i].to(sample.device).expand(sample.shape[0], -1)
        x_next, d = STEP(x_edm, x0, None, hist[0], hist[1], hist[2], None, coeffs, None, 0.0, 0.0, 1.0)
        self._history = [d] + self._history[:2]
        self._step_index += 1
        prev = (alpha_next * x_next).to(sample.dtype)
        return SchedulerOutput(prev, x0.to(sample.dtype)) if return_dict else (prev,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) y + sqrt(1 - abar_t) n at integer ``timesteps`` [B]."""
        ab = self.alphas_cumprod.to(original_samples.device)[timesteps.long()].to(original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return ab.sqrt().reshape(shape) * original_samples + (1 - ab).sqrt().reshape(shape) * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
