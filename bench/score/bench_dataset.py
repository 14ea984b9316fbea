"""Exact data-set denoiser: gencore against torch and the bare GEMMs.

Group ``dataset-denoise-<size>`` holds every contender on the same data: N
data points of dimension d (standard normal), B queries x = y_j + sigma n at
sigma = 20 (the goal size: N = 50k, d = 3072 = 3 x 32 x 32, B = 256), float32.
Every contender computes D(x) = softmax_i(-||x - y_i||^2 / (2 sigma^2)) . y:

* ``gencore``: ``gencore.score.dataset_denoiser`` (tiles of the data, two
  GEMMs a tile, a fused exp epilogue, online log-sum-exp).
* ``torch``: the best torch form found: centred at the data mean, per chunk
  of 1024 rows one ``addmm`` for the logits (the -||y'||^2 / 2 term as its
  bias), an in-place running max / exp / sum, one ``addmm_`` into a
  rescaled accumulator; memory B x chunk.
* ``torch-cdist``: the textbook form per chunk, ``torch.cdist`` squared,
  ``logsumexp`` and ``softmax``, ``matmul``, merged across chunks.
* ``bare-gemm``: only the two float32 GEMMs per chunk, x.Y^T and P.Y, with
  numpy (SciPy's / numpy's OpenBLAS: the BLAS gencore calls), no epilogue:
  the floor of any exact method.

``extra_info["gflops"]`` is 4 B N d / median time (both GEMMs' flops). Before a
contender is timed, its answer on the quick data is checked against gencore's
float64 kernel (itself tested against a dense float64 oracle in
tests/score/test_dataset.py): max |D - D64| within 1e-3 of the data's spread.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gencore

SIGMA = 20.0
CHUNK = 8192        # data rows per chunk of torch-cdist and bare-gemm (bare-gemm's fastest)
TORCH_CHUNK = 1024  # data rows per chunk of torch: its fastest (full size, CPU time: 1024 2.4 s, 8192 3.0 s)
SIZES = {
    "quick": {"n": 4096, "d": 768, "b": 128},
    "mid": {"n": 20_000, "d": 3072, "b": 256},
    "full": {"n": 50_000, "d": 3072, "b": 256},
}
CONTENDERS = ("gencore", "torch", "torch-cdist", "bare-gemm")
CHECK_TOL = 1e-3  # max |D - D64| / spread of the data


class Data:
    def __init__(self, name, n, d, b, seed=20240611):
        rng = np.random.default_rng(seed)
        self.name, self.n, self.d, self.b = name, n, d, b
        self.data_np = rng.standard_normal((n, d), dtype=np.float32)
        picks = rng.integers(0, n, b)
        self.x_np = self.data_np[picks] + np.float32(SIGMA) * rng.standard_normal((b, d), dtype=np.float32)
        self.data, self.x = torch.from_numpy(self.data_np), torch.from_numpy(self.x_np)

    def sizes(self):
        return {"size": self.name, "N": self.n, "d": self.d, "B": self.b, "sigma": SIGMA}


_data: dict = {}


def data_for(name: str) -> Data:
    if name not in _data:
        _data[name] = Data(name, **SIZES[name])
    return _data[name]


# --- contenders: make_<name>(data) -> fn() -> D [B, d] (numpy or torch), or None (bare-gemm)

def make_gencore(p):
    return lambda: gencore.score.dataset_denoiser(p.x, p.data, SIGMA)


def make_torch(p):
    x, y = p.x, p.data
    inv_var = 1.0 / (SIGMA * SIGMA)

    def run():
        center = y.mean(0)
        xc = x - center
        running_max = torch.full((x.shape[0],), -math.inf)
        total = torch.zeros(x.shape[0])
        acc = torch.zeros_like(x)
        for start in range(0, y.shape[0], TORCH_CHUNK):
            yc = y[start:start + TORCH_CHUNK] - center
            # (x'.y' - ||y'||^2 / 2) / sigma^2 in one addmm
            logits = torch.addmm((yc * yc).sum(1)[None, :], xc, yc.T, beta=-0.5 * inv_var, alpha=inv_var)
            new_max = torch.maximum(running_max, logits.amax(1))
            rescale = torch.exp(running_max - new_max)
            p_ = logits.sub_(new_max[:, None]).exp_()
            total = total * rescale + p_.sum(1)
            acc.mul_(rescale[:, None]).addmm_(p_, yc)
            running_max = new_max
        return acc / total[:, None] + center

    return run


def make_torch_cdist(p):
    x, y = p.x, p.data

    def run():
        log_zs, outs = [], []
        for start in range(0, y.shape[0], CHUNK):
            chunk = y[start:start + CHUNK]
            logits = -torch.cdist(x, chunk).square_() / (2 * SIGMA * SIGMA)
            log_zs.append(torch.logsumexp(logits, 1))
            outs.append(torch.softmax(logits, 1) @ chunk)
        w = torch.softmax(torch.stack(log_zs, 1), 1)                  # chunk weights
        return (w[:, :, None] * torch.stack(outs, 1)).sum(1)

    return run


def make_bare_gemm(p):
    x, y = p.x_np, p.data_np

    def run():
        for start in range(0, y.shape[0], CHUNK):
            chunk = y[start:start + CHUNK]
            (x @ chunk.T) @ chunk
        return None

    return run


MAKERS = {"gencore": make_gencore, "torch": make_torch, "torch-cdist": make_torch_cdist, "bare-gemm": make_bare_gemm}

_verified: dict = {}


def verify(contender: str, quick: Data) -> float:
    """max |D - D64| / spread on the quick data (0 for bare-gemm, which has no answer)."""
    if contender not in _verified:
        got = MAKERS[contender](quick)()
        if got is None:
            _verified[contender] = 0.0
        else:
            want = gencore.score.dataset_denoiser(quick.x.double(), quick.data.double(), SIGMA)
            spread = float((quick.data.double() - quick.data.double().mean(0)).abs().max())
            err = float((torch.as_tensor(got).double() - want).abs().max()) / spread
            assert err <= CHECK_TOL, f"{contender}: max |D - D64| = {err:.2e} x spread > {CHECK_TOL}"
            _verified[contender] = err
    return _verified[contender]


@pytest.mark.parametrize("contender", CONTENDERS)
def test_dataset_denoise(benchmark, run_timed, bench_size, bench_threads, contender):
    p = data_for(bench_size)
    error = verify(contender, data_for("quick"))
    fn = MAKERS[contender](p)
    benchmark.group = f"dataset-denoise-{bench_size}"
    benchmark.extra_info.update(p.sizes())
    benchmark.extra_info.update({
        "contender": contender,
        "threads": bench_threads,
        "simd": gencore.info()["simd"]["in_use"],
        "quick_max_error_over_spread": error,
    })
    if contender == "gencore":
        plan = gencore._native.core.dataset_denoise_plan(p.b, p.n, p.d, bench_threads) if gencore._native.core else None
        benchmark.extra_info["plan"] = plan
    run_timed(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["gflops"] = 4.0 * p.b * p.n * p.d / stats.stats.median / 1e9
