"""Solver overhead per step: a 20-step DPM-Solver++(2M) / UniPC run with a model that
returns its input scaled (so the model costs one cheap pass), divided by 20.

Groups ``ode-step-<latent>`` for latents 1 x 4 x 8 x 8 (overhead-bound) and
16 x 4 x 64 x 64 (memory-bound), contenders in the same run:

* gencore dpmpp_2m and unipc (``gencore.ode.sample``);
* k-diffusion's ``sample_dpmpp_2m`` (loaded from its sampling.py);
* diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler loops
  (``set_timesteps`` outside the timing, ``step`` per step);
* ``model-only``: the 20 model calls alone, and ``memory-pass``: one torch
  pass per step over the tensors a 2M step touches (x, D, D_prev read; x_next
  and D written), the floor of any step.

Goals (issue "ODE solvers"): <= 25 us per step at the small size; within 1.5x
of the memory pass (after the model's own time) at the large size.
``extra_info`` has the per-step time and the contender.
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore import ode
from gencore.ode.accuracy import load_k_diffusion_sampling

STEPS = 20
LATENTS = {"1x4x8x8": (1, 4, 8, 8), "16x4x64x64": (16, 4, 64, 64)}


def model(x, sigma):
    return x * 0.5


def k_diffusion():
    module = load_k_diffusion_sampling()
    if module is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde)")
    return module


def make(contender, shape):
    x = torch.randn(shape) * 80
    sigmas = ode.karras_sigmas(STEPS, 0.002, 80.0)
    if contender in ("gencore-dpmpp_2m", "gencore-unipc"):
        solver = contender.split("-", 1)[1]
        return lambda: ode.sample(model, x, sigmas, solver)
    if contender == "k-diffusion-dpmpp_2m":
        kd = k_diffusion()
        s32 = sigmas.float()
        return lambda: kd.sample_dpmpp_2m(model, x, s32, disable=True)
    if contender.startswith("diffusers"):
        diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
        cls = (diffusers.DPMSolverMultistepScheduler if contender.endswith("dpmpp_2m")
               else diffusers.UniPCMultistepScheduler)
        scheduler = cls(num_train_timesteps=1000)
        xt = torch.randn(shape)

        def run():
            scheduler.set_timesteps(STEPS)
            sample = xt
            for t in scheduler.timesteps:
                sample = scheduler.step(model(sample, t), t, sample).prev_sample
            return sample
        return run
    if contender == "model-only":
        return lambda: [model(x, None) for _ in range(STEPS)]
    if contender == "memory-pass":
        tensors = [torch.randn(shape) for _ in range(3)]
        outs = [torch.empty(shape) for _ in range(2)]

        def one_pass():
            for _ in range(STEPS):  # read three, write two: the 2M step's traffic
                torch.add(tensors[0], tensors[1], out=outs[0])
                torch.mul(tensors[2], 1.0, out=outs[1])
        return one_pass
    raise KeyError(contender)


CONTENDERS = ("gencore-dpmpp_2m", "gencore-unipc", "k-diffusion-dpmpp_2m", "diffusers-dpmpp_2m", "diffusers-unipc",
              "model-only", "memory-pass")


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("latent", sorted(LATENTS))
def test_solver_step(benchmark, bench_threads, latent, contender):
    fn = make(contender, LATENTS[latent])
    fn()  # warm-up (and a check that it runs)
    benchmark.group = f"ode-step-{latent}"
    benchmark.extra_info.update({"contender": contender, "steps": STEPS, "latent": latent, "threads": bench_threads,
                                 "simd": gencore.info()["simd"]["in_use"]})
    rounds = 50 if latent == "1x4x8x8" else 5
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["per_step_us"] = benchmark.stats.stats.min / STEPS * 1e6
