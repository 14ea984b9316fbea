"""The fused solver step and the error norm: gencore against the same math in torch.

Groups ``ode-<step>-<shape>``, float32, at two sample shapes: 1 x 4 x 8 x 8 (a
tiny latent: per-call overhead is the cost) and 16 x 4 x 64 x 64 (a batch of
SD-sized latents: memory bandwidth is the cost), whatever --bench-size says
(both are quick). Steps:

    2m         x_next = c_x x + c_d d + c_1 h1             (DPM-Solver++ 2M's step)
    cfg        the same with d = d_u + w (d_c - d_u)       (classifier-free guidance)
    cfg-rt     cfg, rescale 0.7 and dynamic thresholding at q = 0.995
    error-norm sqrt(mean((err / (atol + rtol max(|y|, |y_new|)))^2)) per sample

Contenders, on the same tensors and threads:

    gencore    gencore.ode.ops.STEP / ERROR_NORM: the whole Python call (checks, the
               op kit's eager fast path, numpy views, output allocation, kernel)
    kernel     the bare _core binding on preallocated numpy views (argument
               conversion + kernel): what the Python layer costs is gencore - kernel
    torch      the reference's expression in torch eager ops (the specification)
    torch.add  one torch.add(x, d): a single memory pass over two inputs, for scale

``extra_info["bytes"]`` is what the op must move (inputs read + outputs written,
float32), so bytes / time is its bandwidth; ``GBps`` is filled in from the
median when timing runs. Every contender is checked against the reference
before it is timed.

    python -m pytest bench/ode/bench_step.py --bench-threads 1
    GENCORE_SIMD=avx2 python -m pytest bench/ode/bench_step.py --bench-threads 1
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore import _native
from gencore.ode.ops import ERROR_NORM, STEP
from gencore.ode.ops._error_norm import _reference as error_norm_reference
from gencore.ode.ops._step import _reference as step_reference

SHAPES = {"1x4x8x8": (1, 4, 8, 8), "16x4x64x64": (16, 4, 64, 64)}
STEPS = ("2m", "cfg", "cfg-rt", "error-norm")
CONTENDERS = ("gencore", "kernel", "torch", "torch.add")
DATA_SEED = 20240611
RESCALE, THRESHOLD, GUIDANCE, ATOL, RTOL = 0.7, 0.995, 3.0, 1e-4, 1e-3


class Problem:
    """Fixed-seed float32 tensors of one shape, the op's arguments for each step, and
    preallocated numpy views for the bare kernel."""

    def __init__(self, shape):
        g = torch.Generator().manual_seed(DATA_SEED)
        self.shape, b = shape, shape[0]
        self.x, self.d_cond, self.d_uncond, self.h1 = (torch.randn(shape, generator=g) for _ in range(4))
        self.coeffs = torch.randn(b, 6, generator=g, dtype=torch.float64)
        self.coeffs[:, 3:] = 0.0  # h2, h3, noise absent
        self.guidance = torch.full((b,), GUIDANCE, dtype=torch.float64)
        self.err = torch.randn(shape, generator=g) * 1e-3
        self.x_next, self.d, self.norm = torch.empty(shape), torch.empty(shape), torch.empty(b)
        self.n = self.x.numel()

    def step_args(self, step):
        inf = float("inf")
        if step == "2m":
            return (self.x, self.d_cond, None, self.h1, None, None, None, self.coeffs, None, 0.0, 0.0, inf)
        guided = (self.x, self.d_cond, self.d_uncond, self.h1, None, None, None, self.coeffs, self.guidance)
        return guided + ((0.0, 0.0, inf) if step == "cfg" else (RESCALE, THRESHOLD, inf))

    def bytes_moved(self, step):
        """float32 elements read and written by the op (the outputs: x_next and d, or the norms)."""
        if step == "error-norm":
            return 4 * 3 * self.n
        inputs = 3 if step == "2m" else 4  # x, d_cond, h1 (+ d_uncond)
        return 4 * (inputs + 2) * self.n


_problems: dict = {}


def problem(name):
    if name not in _problems:
        _problems[name] = Problem(SHAPES[name])
    return _problems[name]


def contender_fn(p, step, contender):
    """fn() -> the contender's outputs (a tuple for the steps, a tensor for the error norm)."""
    if contender == "torch.add":
        return lambda: torch.add(p.x, p.d_cond)
    if step == "error-norm":
        args = (p.err, p.x, p.d_cond, ATOL, RTOL)
        if contender == "gencore":
            return lambda: ERROR_NORM(*args)
        if contender == "torch":
            return lambda: error_norm_reference(*args)
        views = [t.numpy() for t in (p.err, p.x, p.d_cond)]
        out = p.norm.numpy()

        def kernel_norm():
            _native.core.ode_error_norm(*views, ATOL, RTOL, out, gencore.get_num_threads())
            return p.norm
        return kernel_norm
    args = p.step_args(step)
    if contender == "gencore":
        return lambda: STEP(*args)
    if contender == "torch":
        return lambda: step_reference(*args)
    views = [None if a is None else a.numpy() for a in args[:9]]
    outputs = (p.x_next.numpy(), p.d.numpy())

    def kernel_step():
        _native.core.ode_step(*views, *args[9:], *outputs, gencore.get_num_threads())
        return p.x_next, p.d
    return kernel_step


def check(p, step, contender, result):
    if contender == "torch.add":
        torch.testing.assert_close(result, (p.x.double() + p.d_cond.double()).float(), rtol=0, atol=1e-6)
        return
    if step == "error-norm":
        want = error_norm_reference(p.err.double(), p.x.double(), p.d_cond.double(), ATOL, RTOL)
        torch.testing.assert_close(result.double(), want, rtol=1e-5, atol=0, msg=contender)
        return
    want = step_reference(*(a.double() if isinstance(a, torch.Tensor) else a for a in p.step_args(step)))
    for got, ref in zip(result, want):
        scale = 1.0 + float(ref.abs().max())
        assert float((got.double() - ref).abs().max()) <= 1e-4 * scale, (contender, step)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_step(benchmark, bench_threads, shape, step, contender):
    if contender == "kernel" and _native.core is None:
        pytest.skip("no gencore._core: there is no native kernel to time")
    p = problem(shape)
    fn = contender_fn(p, step, contender)
    check(p, step, contender, fn())
    benchmark.group = f"ode-{step}-{shape}"
    benchmark.extra_info.update({
        "contender": contender, "shape": shape, "threads": bench_threads, "dtype": "float32",
        "simd": gencore.info()["simd"]["in_use"],
        "bytes": 4 * 3 * p.n if contender == "torch.add" else p.bytes_moved(step),
    })
    slow = contender == "torch" and step == "cfg-rt" and p.n > 10_000  # torch.quantile sorts every row
    if p.n < 10_000:
        benchmark.pedantic(fn, rounds=100, iterations=50, warmup_rounds=5)
    else:
        benchmark.pedantic(fn, rounds=5 if slow else 40, iterations=1 if slow else 5, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["GBps"] = round(benchmark.extra_info["bytes"] / stats.stats.median / 1e9, 2)
