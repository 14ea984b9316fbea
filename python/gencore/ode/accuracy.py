"""Accuracy harness: final-sample error against NFE for every solver, on three models
whose exact denoisers gencore.score provides (so every error is the solver's):

* gaussian: N(mu, diag(v)) in 8 dimensions; the probability-flow ODE has a closed
  form (each coordinate scales by sqrt((v + s1^2) / (v + s0^2))), the reference;
* gmm: 32 components in 16 dimensions, variance 0.05 (the ode issue's benchmark
  problem); reference: UniPC-3 on 1024 Karras steps in float64 (checked against
  2048 steps when built: ~1e-7);
* dataset: the exact denoiser of 256 points in 8 dimensions (a memorising model).

Every run starts from the same sigma_max noise, Karras grid from 80 to 0.002
(ending in 0), float64. The error is the RMSE over samples and coordinates of
the final sample against the reference. k-diffusion's samplers of the same
algorithms run on the same grids when it is installed (loaded from its
sampling.py, as the tests do), for comparison.

    python -m gencore.ode.accuracy [--problem gmm] [--samples 512] [--nfe 5 10 20 40]

"gencore learned" is the learned-coefficient solver with a table fitted by
``learn_coefficients`` on 256 calibration draws of other noise (a separate
seed from the samples measured), one fit per problem and NFE.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch

from .. import score
from . import grids, solvers

__all__ = ["problems", "run", "main", "load_k_diffusion_sampling"]

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


class Problem:
    def __init__(self, name: str, denoiser: Callable, d: int, exact: Callable = None):
        self.name, self.denoiser, self.d, self.exact = name, denoiser, d, exact


def problems() -> dict[str, Problem]:
    g = torch.Generator().manual_seed(20261201)
    mu = torch.randn(8, generator=g, dtype=F64)
    var = 0.05 + 2 * torch.rand(8, generator=g, dtype=F64)
    one = torch.ones(1, dtype=F64)

    def gaussian_exact(x):
        return mu + (x - mu) * torch.sqrt(var / (var + SIGMA_MAX ** 2))  # to s = 0

    means = torch.randn(32, 16, generator=g, dtype=F64)
    data = torch.randn(256, 8, generator=g, dtype=F64)
    return {
        "gaussian": Problem("gaussian", lambda x, s: score.gmm_denoiser(x, mu[None], one, var[None], s), 8,
                            gaussian_exact),
        "gmm": Problem("gmm", lambda x, s: score.gmm_denoiser(x, means, torch.ones(32, dtype=F64),
                                                             torch.full((32,), 0.05, dtype=F64), s), 16),
        "dataset": Problem("dataset", lambda x, s: score.dataset_denoiser(x, data, s), 8),
    }


def reference(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    if problem.exact is not None:
        return problem.exact(x)
    fine = grids.karras_sigmas(1024, SIGMA_MIN, SIGMA_MAX)
    return solvers.sample(problem.denoiser, x, fine, "unipc", lower_order_final=False)


def load_k_diffusion_sampling():
    """k-diffusion's sampling module, or None when k-diffusion (or torchsde) is not installed.

    Its package import pulls torchvision, scikit-image, wandb and more; its
    sampling.py needs only torch, scipy, torchsde and ``k_diffusion.utils.append_dims``,
    so that file is loaded by path with a stand-in ``k_diffusion.utils`` (removed
    from sys.modules again afterwards). The tests and benchmarks use it too."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchsde") is None:
        return None
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package = types.ModuleType("k_diffusion")
    package.__path__, package.utils = [], utils
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils")}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    try:
        sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling",
                                                               spec.submodule_search_locations[0] + "/sampling.py")
        module = importlib.util.module_from_spec(sampling_spec)
        sampling_spec.loader.exec_module(module)
        return module
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


# (label, steps for a given NFE, runner(denoiser, x, sigmas) -> x)
def gencore_contenders():
    def run(solver, **options):
        return lambda den, x, s: solvers.sample(den, x, s, solver, **options)
    return [
        ("gencore euler", lambda nfe: nfe, run("euler")),
        ("gencore heun", lambda nfe: (nfe + 1) // 2, run("heun")),
        ("gencore dpmpp_2m", lambda nfe: nfe, run("dpmpp_2m")),
        ("gencore dpmpp_3m", lambda nfe: nfe, run("dpmpp_3m")),
        ("gencore unipc", lambda nfe: nfe, run("unipc")),
        ("gencore unipc-2", lambda nfe: nfe, run("unipc", order=2)),
        ("gencore learned", lambda nfe: nfe, _learned),
    ]


def _learned(den, x, s):
    """The learned-coefficient solver, its table fitted on 256 calibration draws of other noise."""
    from .learned import learn_coefficients

    calibration = torch.randn((256,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(99),
                              dtype=x.dtype) * float(s[0])
    table = learn_coefficients(den, s, calibration)
    return solvers.sample(den, x, s, "learned", coefficients=table)


def k_diffusion_contenders(kd):
    if kd is None:
        return []
    return [
        ("k-diffusion euler", lambda nfe: nfe, lambda den, x, s: kd.sample_euler(den, x, s, disable=True)),
        ("k-diffusion heun", lambda nfe: (nfe + 1) // 2, lambda den, x, s: kd.sample_heun(den, x, s, disable=True)),
        ("k-diffusion dpmpp_2m", lambda nfe: nfe, lambda den, x, s: kd.sample_dpmpp_2m(den, x, s, disable=True)),
        ("k-diffusion dpmpp_3m", lambda nfe: nfe,
         lambda den, x, s: kd.sample_dpmpp_3m_sde(den, x, s, eta=0.0, disable=True)),
        ("k-diffusion lms", lambda nfe: nfe, lambda den, x, s: kd.sample_lms(den, x, s, disable=True)),
    ]


def run(problem_names=("gaussian", "gmm", "dataset"), nfes=(5, 10, 20, 40), samples: int = 512,
        grid: Callable = None, out=print) -> dict:
    """The error table of every contender: {problem: {label: {nfe: rmse}}}."""
    grid = grid or (lambda n: grids.karras_sigmas(n, SIGMA_MIN, SIGMA_MAX))
    kd = load_k_diffusion_sampling()
    contenders = gencore_contenders() + k_diffusion_contenders(kd)
    table = {}
    for name in problem_names:
        problem = problems()[name]
        x = torch.randn(samples, problem.d, generator=torch.Generator().manual_seed(7), dtype=F64) * SIGMA_MAX
        start = time.perf_counter()
        ref = reference(problem, x)
        out(f"\n{name}: {samples} samples, d = {problem.d}, reference in {time.perf_counter() - start:.1f} s")
        out(f"  {'solver':<24}" + "".join(f"{'NFE ' + str(n):>12}" for n in nfes))
        rows = {}
        for label, steps_for, runner in contenders:
            errors = {}
            for nfe in nfes:
                steps = max(1, steps_for(nfe))
                got = runner(problem.denoiser, x, grid(steps))
                errors[nfe] = float(((got - ref) ** 2).mean().sqrt())
            rows[label] = errors
            out(f"  {label:<24}" + "".join(f"{errors[n]:12.3e}" for n in nfes))
        table[name] = rows
    if kd is None:
        out("\n(k-diffusion is not installed: pip install --no-deps k-diffusion torchsde, for its samplers)")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gencore.ode.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=("gaussian", "gmm", "dataset"), nargs="*",
                        default=["gaussian", "gmm", "dataset"])
    parser.add_argument("--nfe", type=int, nargs="*", default=[5, 10, 20, 40])
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args(argv)
    if args.samples < 1 or any(n < 1 for n in args.nfe):
        parser.error("--samples and --nfe must be >= 1")
    run(args.problem, args.nfe, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
